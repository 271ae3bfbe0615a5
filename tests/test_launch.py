"""Fail-fast: one rank failing mid-step stops the whole world quickly, and the error names it."""

import os
import time

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
    launch(succeeding_rank, (str(tmp_path / "shape"),), nproc=2)
    assert [(tmp_path / f"shape.{r}").read_text() for r in range(2)] == ["(2, 1, 32, 32)"] * 2
