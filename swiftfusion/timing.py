"""Where a run's time and memory go: per pipeline call the text encoding, each denoising step and
the decode; per rank the peak memory; optionally a torch profiler trace.

A call's phases are told apart by marks at the call's start, at the first transformer call
(denoising starts), at the end of each step (the pipeline's step callback) and at the call's end.
On CUDA each mark synchronizes the device first, so a phase's time is its kernels' time.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class CallTiming:
    encode_s: float  # call start -> first transformer call (text encoding, latents, scheduler set-up)
    step_s: list[float]  # each denoising step
    decode_s: float  # last step's end -> call end (VAE decode, post-processing)
    total_s: float


@dataclass
class RunTiming:
    """One pass over all of a run's pipeline calls."""

    calls: list[CallTiming] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(c.total_s for c in self.calls)

    @property
    def steps(self) -> list[float]:
        return [s for c in self.calls for s in c.step_s]

    def summary(self) -> dict[str, float]:
        steps = self.steps
        return {
            "encode_s": sum(c.encode_s for c in self.calls),
            "denoise_s": sum(steps),
            "steps": len(steps),
            "step_median_s": statistics.median(steps) if steps else 0.0,
            "decode_s": sum(c.decode_s for c in self.calls),
            "total_s": self.total_s,
        }


class StepClock:
    """Times pipeline calls: ``with clock.call(timing, transformers) as step_end:`` around one call,
    with ``step_end()`` called at the end of every denoising step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextlib.contextmanager
    def call(self, timing: RunTiming, transformers: list[torch.nn.Module]) -> Iterator[Callable[[], None]]:
        start = self.now()
        first: list[float] = []
        ends: list[float] = []

        def denoising_starts(*_) -> None:
            if not first:
                first.append(self.now())

        handles = [model.register_forward_pre_hook(denoising_starts) for model in transformers]
        try:
            yield lambda: ends.append(self.now())
        finally:
            for handle in handles:
                handle.remove()
        end = self.now()
        begin = first[0] if first else start
        steps = [b - a for a, b in itertools.pairwise([begin, *ends])]
        timing.calls.append(CallTiming(encode_s=begin - start, step_s=steps,
                                       decode_s=end - (ends[-1] if ends else begin), total_s=end - start))


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory: allocated device memory on CUDA, the resident set on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def memory_kind(device: torch.device) -> str:
    return "allocated on the GPU" if device.type == "cuda" else "resident set"


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


@contextlib.contextmanager
def profiled(folder: str | None, rank: int, device: torch.device) -> Iterator[None]:
    """A torch profiler trace of the block, written to ``folder/rank{rank}.json`` (Chrome trace
    format: opens in Perfetto or chrome://tracing; communication shows as ``c10d::*`` and
    ``gloo:*`` / ``nccl:*`` events beside the compute ops). Nothing when ``folder`` is None."""
    if folder is None:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    from .images import write_atomically

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        yield
    Path(folder).mkdir(parents=True, exist_ok=True)
    write_atomically(os.path.join(folder, f"rank{rank}.json"), profiler.export_chrome_trace)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}
