"""Starting N local ranks from one command (``--nproc``): spawned processes that join one
torch.distributed world through the usual environment variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE), exactly as torchrun would start them.

Fail fast: as soon as one rank exits non-zero the others are terminated, and ``LaunchError`` names
the rank that failed first with its error. A rank that dies without reporting (killed, or an
exit from native code) is the cause when others fail together with it: they only saw it vanish.

Interrupts: SIGINT (Ctrl-C) and SIGTERM reach the launcher, which stops every rank (through the
store, then SIGTERM, then SIGKILL), removes its scratch folder and raises ``LaunchInterrupted``.
The ranks ignore SIGINT: a terminal sends Ctrl-C to the whole process group, and the launcher
alone decides how they end, so no rank prints a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

from torch.distributed import TCPStore

from .runtime import FAILURE_FILE_ENV, REPORTED_FAILURE_EXIT, STOP_KEY, run_rank_main

TERMINATE_GRACE_S = 5.0
STOP_GRACE_S = 2.0  # for the ranks' watchdogs (polling every 0.5 s) to see STOP_KEY, before SIGTERM
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class LaunchError(RuntimeError):
    """One or more ranks failed; the message names the first."""


class LaunchInterrupted(LaunchError):
    """The launcher got SIGINT or SIGTERM and stopped all ranks. ``exit_code`` is the shell's
    convention for a command ended by that signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__("interrupted" if signum == signal.SIGINT else "terminated")


def host_store(world_size: int) -> TCPStore:
    """The rendezvous store, hosted by the launching process on a port the OS picks as it binds.
    (Choosing a free port first and letting rank 0 bind it later races with every other socket
    on the machine.) The ranks join it as clients, as under torchrun's agent."""
    return TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)


def store_env(store: TCPStore) -> dict[str, str]:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}


def _bootstrap(env: dict[str, str], main: Callable, args: tuple) -> None:
    # Inherited already when the launcher runs in the main thread (see _sigint_ignored); this covers
    # a launch from another thread, where the launcher cannot change signal handlers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    run_rank_main(main, *args)


class _StopSignals:
    """While launching, SIGINT and SIGTERM only record the signal and wake the launcher's wait (through
    a pipe), so that it can stop the ranks and clean up instead of dying with a traceback or at once.
    Installed only in the main thread (the only one Python lets set handlers), and not over a signal
    that is ignored (nohup, a background job of a script): that choice is the caller's. The previous
    handlers come back on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Callable | int] = {}
        self.wakeup, self._wakeup_write = os.pipe()
        os.set_blocking(self._wakeup_write, False)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        with contextlib.suppress(BlockingIOError):  # a full pipe wakes the launcher just as well
            os.write(self._wakeup_write, b"\0")

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                current = signal.getsignal(signum)
                if current is not None and current != signal.SIG_IGN:  # None: a handler set outside Python
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        os.close(self.wakeup)
        os.close(self._wakeup_write)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignores SIGINT while starting ranks, so that they inherit it ignored from their first
    instruction: a Ctrl-C while a rank still imports would otherwise print its traceback. (A
    Python handler would not be inherited: exec resets it to the default.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def launch(main: Callable, args: tuple, nproc: int, extra_env: dict[str, str] | None = None) -> None:
    """Runs ``main(*args)`` on ``nproc`` local ranks; returns when all succeed, raises
    ``LaunchError`` when any fails and ``LaunchInterrupted`` when SIGINT or SIGTERM stopped
    them. ``main`` must be importable (a module-level function)."""
    ctx = multiprocessing.get_context("spawn")
    store = host_store(nproc)
    with _StopSignals() as stop, tempfile.TemporaryDirectory(prefix="swiftfusion-") as scratch:
        failure_file = os.path.join(scratch, "failure")
        processes = []
        try:
            for rank in range(nproc):
                env = {
                    "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                    "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", **store_env(store),
                    FAILURE_FILE_ENV: failure_file, **(extra_env or {}),
                }
                process = ctx.Process(target=_bootstrap, args=(env, main, args), name=f"swiftfusion-rank{rank}")
                with _sigint_ignored():
                    process.start()
                processes.append(process)
            first_failed = _wait_all(processes, stop.wakeup)
        finally:
            if stop.signum is not None:
                _ask_to_stop(store, processes, stop.signum)
            _terminate(processes)
        if first_failed is not None and stop.signum is None:  # ranks that fail as they are stopped don't count
            rank, code = first_failed
            message = f"rank {rank} exited with code {code}"
            if code == REPORTED_FAILURE_EXIT and os.path.exists(failure_file):
                with open(failure_file) as f:
                    message = f.read()  # the first rank that reported an error
            raise LaunchError(message)
    if stop.signum is not None:  # also when it came after the ranks ended: the caller asked to stop
        raise LaunchInterrupted(stop.signum)


def _wait_all(processes, wakeup: int) -> tuple[int, int] | None:
    """Waits until all ranks exit, or until ``wakeup`` is readable (a stop signal came); returns
    (rank, exit code) of the first that failed, if any."""
    running = {p.sentinel: rank for rank, p in enumerate(processes)}
    while running:
        failures = []
        for ready in multiprocessing.connection.wait([*running, wakeup]):
            if ready == wakeup:
                return None
            rank = running.pop(ready)
            processes[rank].join()
            if processes[rank].exitcode != 0:
                failures.append((rank, processes[rank].exitcode))
        if failures:
            unreported = [f for f in failures if f[1] != REPORTED_FAILURE_EXIT]
            return (unreported or failures)[0]
    return None


def _ask_to_stop(store: TCPStore, processes, signum: int) -> None:
    """Tells every rank's watchdog to exit (it runs even while the rank is blocked in a collective),
    and waits a little for them; ``_terminate`` then ends the rest (ranks still starting up)."""
    with contextlib.suppress(Exception):  # the stop must go on even if the store failed
        store.set(STOP_KEY, str(signum))
    deadline = time.monotonic() + STOP_GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))


def _terminate(processes) -> None:
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
