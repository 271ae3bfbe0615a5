"""Fail-fast: one rank failing mid-step stops the whole world quickly, and the error names it.
Ctrl-C (SIGINT to the process group) and SIGTERM stop every rank cleanly: one line, no traceback,
no leaked semaphore, no rank left, no scratch folder left, exit code 128 + the signal."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swiftfusion import DigitsPipeline, ParallelConfig, parallelize, runtime
from swiftfusion.launch import LaunchError, launch


def failing_rank(bad_rank, how):
    """Generates on 4 ranks (USP 2×2); ``bad_rank`` raises, or vanishes, at step 2 of 20."""
    pipe = parallelize(DigitsPipeline.from_pretrained(), ParallelConfig(ulysses_degree=2, ring_degree=2))

    def on_step(step):
        if step == 2 and runtime.rank() == bad_rank:
            if how == "raise":
                raise RuntimeError("injected failure")
            os._exit(7)  # no Python error handling at all: the process just vanishes

    pipe([1, 2], num_images_per_prompt=2, num_inference_steps=20, show_progress=False, callback_on_step_end=on_step)


def succeeding_rank(path):
    pipe = parallelize(DigitsPipeline.from_pretrained(), ParallelConfig(data_degree=2))
    images = pipe(5, num_images_per_prompt=2, num_inference_steps=2, show_progress=False).images
    with open(f"{path}.{runtime.rank()}", "w") as f:
        f.write(str(tuple(images.shape)))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "bad_rank,how,message",
    [(2, "raise", "^rank 2 failed: RuntimeError: injected failure$"), (1, "exit", "^rank 1 exited with code 7$")],
)
def test_failing_rank_stops_everyone_and_is_named(bad_rank, how, message):
    start = time.monotonic()
    with pytest.raises(LaunchError, match=message):
        launch(failing_rank, (bad_rank, how), nproc=4)
    assert time.monotonic() - start < 60


@pytest.mark.timeout(90)
def test_successful_launch_returns(tmp_path):
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    launch(succeeding_rank, (str(tmp_path / "shape"),), nproc=2)
    assert [(tmp_path / f"shape.{r}").read_text() for r in range(2)] == ["(2, 1, 32, 32)"] * 2
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers  # launch() restores them


LAUNCH_SCRIPT = Path(__file__).with_name("launch_script.py")


@pytest.fixture
def start_launch_script(tmp_path):
    """Starts ``launch_script.py`` in its own session (its own process group, as a terminal starts
    a command), with its temporary files in ``tmp_path/tmp``; returns the process and the ranks'
    pids once both ranks are in step 1. Whatever a failing test leaves running is killed after it."""
    processes = []

    def start(scenario):
        (tmp_path / "tmp").mkdir()
        process = subprocess.Popen(
            [sys.executable, str(LAUNCH_SCRIPT), scenario, str(tmp_path)],
            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        processes.append(process)
        markers = [tmp_path / f"ready.{rank}" for rank in range(2)]

        def ready():
            return all(m.exists() and m.read_text() for m in markers)

        deadline = time.monotonic() + 50
        while not ready():
            if (process.poll() is not None and not ready()) or time.monotonic() > deadline:
                _kill_group(process)
                pytest.fail(f"the ranks did not start: {process.communicate()[1]}")
            time.sleep(0.2)
        return process, [int(m.read_text()) for m in markers]

    yield start
    for process in processes:
        _kill_group(process)
        process.communicate()


def _finish(process, timeout=30):
    """(exit code, stderr) once the launcher and everything holding its stderr (ranks, and the
    resource tracker, which warns of leaked semaphores as it exits) are gone."""
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process)
        pytest.fail(f"still running {timeout} s later: {process.communicate()[1]}")
    return process.returncode, err


def _kill_group(process):
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _assert_clean_stop(code, err, pids, tmp_path, expected_code, line):
    assert code == expected_code, err
    assert "Traceback" not in err and "leaked semaphore" not in err, err
    assert line in err.splitlines(), err
    assert not [pid for pid in pids if _alive(pid)]
    assert list((tmp_path / "tmp").glob("swiftfusion-*")) == []  # the launcher's scratch folder


@pytest.mark.timeout(90)
def test_ctrl_c_stops_all_ranks_cleanly(start_launch_script, tmp_path):
    process, pids = start_launch_script("slow")
    start = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)  # as a terminal does: to the launcher and every rank
    code, err = _finish(process)
    _assert_clean_stop(code, err, pids, tmp_path, 130, "swiftfusion: interrupted")
    assert time.monotonic() - start < 15


@pytest.mark.timeout(90)
def test_sigterm_to_the_launcher_stops_all_ranks_cleanly(start_launch_script, tmp_path):
    process, pids = start_launch_script("slow")
    start = time.monotonic()
    process.send_signal(signal.SIGTERM)  # as a supervisor or kill does: to the launcher only
    code, err = _finish(process)
    _assert_clean_stop(code, err, pids, tmp_path, 143, "swiftfusion: terminated")
    assert time.monotonic() - start < 15


@pytest.mark.timeout(90)
def test_failing_rank_leaves_no_leaked_semaphore(start_launch_script, tmp_path):
    """The ranks end with os._exit; nothing they made may outlive them (tqdm's lock was a named semaphore)."""
    process, pids = start_launch_script("fail")
    code, err = _finish(process)
    assert code == 1, err
    assert "swiftfusion: error: rank 1 failed: RuntimeError: injected failure" in err.splitlines(), err
    assert "leaked semaphore" not in err, err
    assert not [pid for pid in pids if _alive(pid)]
    assert list((tmp_path / "tmp").glob("swiftfusion-*")) == []
