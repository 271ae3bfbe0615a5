"""A reusable multi-process test harness: a world of N gloo ranks is started once and then runs
many test cases, so the suite does not pay process start-up and torch import per case.

``world.run(fn, *args)`` runs ``fn(*args)`` on every rank (``fn`` must be a module-level function
of an importable module) and returns the per-rank results. A rank that raises fails the call with
its traceback; a world that does not answer within the deadline is killed and the call fails, so
nothing hangs. A failed world is replaced by a fresh one for the next test.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import queue
import time
import traceback

from swiftfusion.launch import host_store, store_env

COLLECTIVE_TIMEOUT_S = 30
DEFAULT_CASE_TIMEOUT_S = 120


def _serve(rank: int, size: int, env: dict[str, str], inbox, outbox) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
        OMP_NUM_THREADS="1", **env,
    )
    import torch
    import torch.distributed as dist

    from swiftfusion import comm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    comm.set_timeout(COLLECTIVE_TIMEOUT_S)
    while True:
        task = inbox.get()
        if task is None:
            break
        fn, args = task
        try:
            outbox.put((rank, True, fn(*args)))
        except BaseException:  # noqa: BLE001 - reported to the test, which fails
            outbox.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class World:
    def __init__(self, size: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.size = size
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(size)]
        self.store = host_store(size)  # lives as long as the world
        self.processes = [
            ctx.Process(target=_serve, args=(r, size, store_env(self.store), self.inboxes[r], self.outbox),
                        daemon=True)
            for r in range(size)
        ]
        for p in self.processes:
            p.start()
        self.broken = False

    def run(self, fn, *args, timeout: float = DEFAULT_CASE_TIMEOUT_S) -> list:
        for inbox in self.inboxes:
            inbox.put((fn, args))
        results: dict[int, object] = {}
        errors: list[str] = []
        answered: set[int] = set()
        deadline = time.monotonic() + timeout
        for _ in range(self.size):
            while True:  # poll, so that a rank that died is noticed now, not at the deadline
                try:
                    rank, ok, value = self.outbox.get(timeout=0.5)
                    break
                except queue.Empty:
                    dead = {r: p.exitcode for r, p in enumerate(self.processes) if not p.is_alive()}
                    if dead or time.monotonic() > deadline:
                        self.broken = True
                        self.close()
                        missing = sorted(set(range(self.size)) - answered)
                        why = f"ranks died (exit codes {dead})" if dead else f"no answer in {timeout} s"
                        raise AssertionError(f"{fn.__name__}: ranks {missing} gave no answer: {why}") from None
            answered.add(rank)
            if ok:
                results[rank] = value
            else:
                errors.append(f"--- rank {rank} ---\n{value}")
        if errors:
            self.broken = True
            raise AssertionError(f"{fn.__name__} failed:\n" + "\n".join(errors))
        return [results[r] for r in range(self.size)]

    def close(self) -> None:
        """Healthy worlds leave their loop; broken ones (a rank may sit in a collective) are killed."""
        for inbox, p in zip(self.inboxes, self.processes, strict=True):
            if p.is_alive() and not self.broken:
                inbox.put(None)
        for p in self.processes:
            if not self.broken:
                p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()


class WorldPool:
    """Hands out one live world per size; replaces a world after a failed case."""

    def __init__(self) -> None:
        self.worlds: dict[int, World] = {}

    def get(self, size: int) -> World:
        world = self.worlds.get(size)
        if world is None or world.broken:
            if world is not None:
                world.close()
            world = self.worlds[size] = World(size)
        return world

    def close(self) -> None:
        for world in self.worlds.values():
            world.close()
