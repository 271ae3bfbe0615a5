"""Starting N local ranks from one command (``--nproc``): spawned processes that join one
torch.distributed world through the usual environment variables (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT, LOCAL_RANK, LOCAL_WORLD_SIZE), exactly as torchrun would start them.

Fail fast: as soon as one rank exits non-zero the others are terminated, and ``LaunchError`` names
the rank that failed first with its error. A rank that dies without reporting (killed, or an
exit from native code) is the cause when others fail together with it: they only saw it vanish.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
from collections.abc import Callable

from torch.distributed import TCPStore

from .runtime import FAILURE_FILE_ENV, REPORTED_FAILURE_EXIT, run_rank_main

TERMINATE_GRACE_S = 5.0


class LaunchError(RuntimeError):
    """One or more ranks failed; the message names the first."""


def host_store(world_size: int) -> TCPStore:
    """The rendezvous store, hosted by the launching process on a port the OS picks as it binds.
    (Choosing a free port first and letting rank 0 bind it later races with every other socket
    on the machine.) The ranks join it as clients, as under torchrun's agent."""
    return TCPStore("127.0.0.1", 0, world_size, is_master=True, wait_for_workers=False)


def store_env(store: TCPStore) -> dict[str, str]:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port), "TORCHELASTIC_USE_AGENT_STORE": "True"}


def _bootstrap(env: dict[str, str], main: Callable, args: tuple) -> None:
    os.environ.update(env)
    run_rank_main(main, *args)


def launch(main: Callable, args: tuple, nproc: int, extra_env: dict[str, str] | None = None) -> None:
    """Runs ``main(*args)`` on ``nproc`` local ranks; returns when all succeed, raises
    ``LaunchError`` when any fails. ``main`` must be importable (a module-level function)."""
    ctx = multiprocessing.get_context("spawn")
    store = host_store(nproc)
    with tempfile.TemporaryDirectory(prefix="swiftfusion-") as scratch:
        failure_file = os.path.join(scratch, "failure")
        processes = []
        for rank in range(nproc):
            env = {
                "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", **store_env(store),
                FAILURE_FILE_ENV: failure_file, **(extra_env or {}),
            }
            process = ctx.Process(target=_bootstrap, args=(env, main, args), name=f"swiftfusion-rank{rank}")
            process.start()
            processes.append(process)
        try:
            first_failed = _wait_all(processes)
        finally:
            _terminate(processes)
        if first_failed is not None:
            rank, code = first_failed
            message = f"rank {rank} exited with code {code}"
            if code == REPORTED_FAILURE_EXIT and os.path.exists(failure_file):
                with open(failure_file) as f:
                    message = f.read()  # the first rank that reported an error
            raise LaunchError(message)


def _wait_all(processes) -> tuple[int, int] | None:
    """Waits until all ranks exit; returns (rank, exit code) of the first that failed, if any."""
    running = {p.sentinel: rank for rank, p in enumerate(processes)}
    while running:
        failures = []
        for sentinel in multiprocessing.connection.wait(list(running)):
            rank = running.pop(sentinel)
            processes[rank].join()
            if processes[rank].exitcode != 0:
                failures.append((rank, processes[rank].exitcode))
        if failures:
            unreported = [f for f in failures if f[1] != REPORTED_FAILURE_EXIT]
            return (unreported or failures)[0]
    return None


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
