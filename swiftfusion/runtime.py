"""Process-level runtime: the one place that chooses the device and the distributed backend,
initialises torch.distributed from the launcher's environment, and makes failures fail fast.

Fail-fast: a rank that raises publishes ``rank N failed: <error>`` in the rendezvous store; every
rank runs a watchdog thread that polls that key and exits the process at once when it appears, so
ranks blocked in a collective (possibly on another machine) do not wait for the collective timeout.
The same watchdog stops the ranks quietly when our launcher, interrupted, sets ``STOP_KEY``.
"""

from __future__ import annotations

import atexit
import datetime
import os
import sys
import threading
import traceback

import torch
import torch.distributed as dist

FAILURE_KEY = "swiftfusion/failure"
FAILURE_FILE_ENV = "SWIFTFUSION_FAILURE_FILE"  # set by our launcher: the first failure is written there
WATCHDOG_INTERVAL_S = 0.5
REPORTED_FAILURE_EXIT = 70  # a rank that reported its error (or stopped for another's) exits so
# Set by our launcher when it gets SIGINT or SIGTERM, to the signal's number: every rank exits at once with
# 128 + that number, without a message (the launcher prints one). Through the store, not a signal, because a rank
# blocked in a collective runs no Python signal handler, while its watchdog thread still runs.
STOP_KEY = "swiftfusion/stop"


def default_device() -> torch.device:
    """CUDA (the local rank's GPU) where present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def launched_rank() -> int:
    """RANK from the launcher's environment (0 when not launched by torchrun or ours)."""
    return int(os.environ.get("RANK", "0"))


def launched_world_size() -> int:
    """WORLD_SIZE from the launcher's environment (1 when not launched by torchrun or ours)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(timeout_s: float = 300.0) -> None:
    """Joins the process group described by the launcher's environment, once; a no-op for one
    process. Also starts the failure watchdog."""
    if dist.is_initialized() or launched_world_size() == 1:
        return
    device = default_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s))
    start_failure_watchdog()


def rank() -> int:
    if dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _store():
    return dist.distributed_c10d._get_default_store()


def report_failure(error: BaseException) -> str:
    """Publishes this rank's failure so that every other rank stops; returns the message."""
    message = f"rank {rank()} failed: {type(error).__name__}: {error}"
    path = os.environ.get(FAILURE_FILE_ENV)
    if path:
        try:
            with open(path, "x") as f:  # "x": only the first failing rank's message is kept
                f.write(message)
        except OSError:
            pass
    if dist.is_initialized():
        try:
            _store().set(FAILURE_KEY, message)
        except Exception:  # the store may be gone already; the launcher still sees our exit code
            pass
    return message


_watchdog: tuple[threading.Thread, threading.Event] | None = None


def _root_store(store):
    """The store under init_process_group's PrefixStore("default_pg", ...): the launcher's own keys
    (STOP_KEY) are set there, without a prefix."""
    while isinstance(store, dist.PrefixStore):
        store = store.underlying_store
    return store


def start_failure_watchdog() -> None:
    global _watchdog
    try:  # its own connection: a store client serves one request at a time, and this rank's main
        store = _store().clone()  # thread may wait in a blocking get, which would hold up our polls
    except Exception:  # a store that cannot be cloned: poll through the shared one
        store = _store()
    launcher_store = _root_store(store)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(WATCHDOG_INTERVAL_S):
            try:
                failed = store.check([FAILURE_KEY])
                stopped = not failed and launcher_store.check([STOP_KEY])
                stop_signal = int(launcher_store.get(STOP_KEY)) if stopped else None
            except Exception:
                return  # the store's host is gone: collective timeouts take over
            if failed:
                message = store.get(FAILURE_KEY).decode()
                print(f"swiftfusion: rank {rank()} stopping because {message}", file=sys.stderr, flush=True)
                os._exit(REPORTED_FAILURE_EXIT)
            if stop_signal is not None:
                os._exit(128 + stop_signal)

    thread = threading.Thread(target=watch, name="swiftfusion-failure-watchdog", daemon=True)
    thread.start()
    _watchdog = (thread, stop)
    atexit.register(stop_failure_watchdog)  # before interpreter teardown frees the store


def stop_failure_watchdog() -> None:
    """Must run before the process group (and its store) is destroyed: a watchdog still inside
    ``store.check`` when the store goes away aborts the process."""
    global _watchdog
    if _watchdog is not None:
        thread, stop = _watchdog
        stop.set()
        thread.join()
        _watchdog = None


def shutdown() -> None:
    """Leaves the process group cleanly (watchdog first)."""
    stop_failure_watchdog()
    if dist.is_initialized():
        dist.destroy_process_group()


def use_thread_lock_for_progress_bars() -> None:
    """Gives tqdm a plain thread lock instead of the multiprocessing RLock it creates for the first bar
    (even a disabled one). In a process started by spawn, as our ranks are, that RLock is a named POSIX
    semaphore registered with the launcher's resource tracker and unlinked only by multiprocessing's exit
    handlers, which a rank never runs when it ends with ``os._exit`` (fail fast, stop) or is killed: the
    tracker then warns of "leaked semaphore objects". Each spawned rank would create its own semaphore
    anyway, shared with no other process, so a thread lock guards exactly as much."""
    from tqdm import tqdm

    if "_lock" not in vars(tqdm):  # a lock the program already chose is kept
        tqdm.set_lock(threading.RLock())


def run_rank_main(main, *args) -> None:
    """Runs ``main(*args)`` as a rank's whole job: on an exception, names the rank, tells the
    others to stop, and exits non-zero without waiting on collectives."""
    use_thread_lock_for_progress_bars()
    try:
        main(*args)
    except BaseException as error:  # noqa: BLE001 - any failure must stop the whole world
        message = report_failure(error)
        traceback.print_exc()
        print(f"swiftfusion: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(REPORTED_FAILURE_EXIT)
    shutdown()
