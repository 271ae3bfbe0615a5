"""One rank's share of ``swiftfusion generate``: load the pipeline, parallelize it, run the job's
pipeline calls (optionally warm-up runs, timed iterations and a profiler trace), and on rank 0
write the outputs with their metadata and print the timing. ``GenerateJob`` is what the command
line hands every rank: checked, complete, and small enough to send to spawned processes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import comm, runtime
from .config import ParallelConfig
from .images import grid, video_frames, write_json, write_png, write_video
from .prompts import Batch, OutputImage, Row
from .timing import CallTiming, RunTiming, StepClock, gib, memory_kind, peak_memory_bytes, profiled, spread

# What a run wrote in an ``--output-dir``, so that a later run touches only swiftfusion's files.
MANIFEST = ".swiftfusion-outputs.json"


@dataclass(frozen=True)
class GenerateJob:
    model: str
    pipeline_class: str | None  # None: the built-in model
    rows: list[Row]
    images: list[OutputImage]
    batches: list[Batch]
    call_arguments: dict  # pipeline arguments of every call (steps, guidance, images per prompt, ...)
    settings: dict  # what the metadata records about the sampling (defaults filled in)
    output: str | None  # one file: the image itself, or a grid of all
    output_dir: str | None  # one file per image, named by ``OutputImage.name``
    suffix: str  # ".png", ".gif" or ".mp4"
    metadata: bool
    fps: float
    dtype: str = "float32"
    trust_remote_code: bool = False
    ranks_per_node: int | None = None
    warmup: int = 0
    iterations: int = 1
    profile: str | None = None
    started_at: float | None = None  # time.time() when the command started, for the start-up time


def earlier_outputs(folder: str | os.PathLike) -> list[Path]:
    """The files an earlier run wrote in ``folder`` (by its manifest) that are still there."""
    try:
        names = json.loads((Path(folder) / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return sorted(Path(folder) / name for name in names if (Path(folder) / name).is_file())


def planned_files(job_images: list[OutputImage], suffix: str, metadata: bool) -> list[str]:
    """The file names a run writes in its ``--output-dir``."""
    return [f"{image.name}{s}" for image in job_images for s in ((suffix, ".json") if metadata else (suffix,))]


def quiet_other_ranks() -> None:
    """Only rank 0 prints progress, warnings and library logs; other ranks print errors only."""
    if runtime.rank() == 0:
        return
    import diffusers
    import huggingface_hub
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_error()
        library.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    warnings.simplefilter("ignore")


def run_rank(job: GenerateJob, config: ParallelConfig) -> None:
    """Everything one rank does for ``swiftfusion generate`` (a module-level function: it is
    started in every spawned rank). Rank 0 writes each batch's files as soon as the batch is done
    (in the last timed iteration), so a long job keeps what it made and holds no more than one
    batch of outputs in memory (a grid, ``--output``, holds all of them: it needs them)."""
    quiet_other_ranks()
    start_s = None if job.started_at is None else time.time() - job.started_at
    device = runtime.default_device()
    clock = StepClock(device)
    start = clock.now()
    pipe, transformers = _load(job, device)
    if config.product > 1:
        from .pipelines import parallelize

        pipe = parallelize(pipe, config, ranks_per_node=job.ranks_per_node)
    load_s = clock.now() - start
    me = runtime.rank()
    for _ in range(job.warmup):
        _run_batches(pipe, job, clock, transformers, show_progress=False)
    writer = OutputWriter(job, config, load_s) if me == 0 else None
    runs: list[RunTiming] = []
    with profiled(job.profile, me, device):
        for iteration in range(job.iterations):
            last = iteration == job.iterations - 1
            runs.append(_run_batches(pipe, job, clock, transformers, show_progress=me == 0 and iteration == 0,
                                     write=writer.write if writer is not None and last else None))
    peaks = [int(peak) for peak in comm.all_gather_object(peak_memory_bytes(device))]  # one rank: [its own]
    if writer is None:
        return
    report = {**runs[-1].summary(), "start_s": start_s, "load_s": load_s, "peak_memory_bytes": peaks,
              "memory": memory_kind(device)}
    writer.finish()
    _print_report(job, config, report, runs)


def _load(job: GenerateJob, device: torch.device):
    """The pipeline and the transformer(s) whose first call marks the start of denoising."""
    if job.pipeline_class is None:
        from .pipelines import load_pipeline

        pipe = load_pipeline(job.model)
        return pipe, [pipe.transformer]
    from .pipelines import diffusers_pipelines

    pipe = diffusers_pipelines.load(job.model, job.dtype, job.trust_remote_code).to(device)
    pipe.set_progress_bar_config(disable=runtime.rank() != 0)
    models = [getattr(pipe, name, None) for name in ("transformer", "transformer_2")]
    return pipe, [m for m in models if m is not None]


def _run_batches(pipe, job: GenerateJob, clock: StepClock, transformers, show_progress: bool,
                 write: Callable[[Batch, list[torch.Tensor], CallTiming], None] | None = None) -> RunTiming:
    """All of the job's pipeline calls once; ``write`` gets each batch's outputs (``[C, H, W]``
    images or ``[F, C, H, W]`` videos, floats in [0, 1], in the batch's image order)."""
    timing = RunTiming()
    for batch in job.batches:
        with clock.call(timing, transformers) as step_end:
            if job.pipeline_class is None:
                outputs = _digits_call(pipe, job, batch, step_end, show_progress)
            else:
                outputs = _diffusers_call(pipe, job, batch, step_end, show_progress)
        if write is not None:
            write(batch, outputs, timing.calls[-1])
    return timing


def _digits_call(pipe, job: GenerateJob, batch: Batch, step_end, show_progress: bool) -> list[torch.Tensor]:
    digits = [int(job.rows[r].prompt) for r in batch.rows]
    result = pipe(digits, seed=[image.seed for image in batch.images], show_progress=show_progress,
                  callback_on_step_end=lambda step: step_end(), **job.call_arguments)
    return list(result.images)


def _diffusers_call(pipe, job: GenerateJob, batch: Batch, step_end, show_progress: bool) -> list[torch.Tensor]:
    from .pipelines import diffusers_pipelines

    rows = [job.rows[r] for r in batch.rows]
    arguments = dict(job.call_arguments)
    if rows[0].height is not None:
        arguments.update(height=rows[0].height, width=rows[0].width)
    if rows[0].negative_prompt is not None:
        arguments["negative_prompt"] = [row.negative_prompt for row in rows]
    if diffusers_pipelines.takes(job.pipeline_class, "callback_on_step_end"):
        def on_step_end(pipeline, step, timestep, tensors):
            step_end()
            return {}

        arguments["callback_on_step_end"] = on_step_end
    else:  # PixArt's older callback
        arguments.update(callback=lambda *_: step_end(), callback_steps=1)
    pipe.set_progress_bar_config(disable=not show_progress)
    generators = [torch.Generator().manual_seed(image.seed) for image in batch.images]
    result = pipe(prompt=[row.prompt for row in rows], generator=generators, output_type="np", **arguments)
    if diffusers_pipelines.output_kind(job.pipeline_class) == "video":
        return [_channels_first(video) for video in result.frames]  # [F, C, H, W] each
    return list(_channels_first(result.images))


def _channels_first(pixels: np.ndarray) -> torch.Tensor:
    """diffusers' ``output_type="np"`` ``[..., H, W, C]`` -> ``[..., C, H, W]``."""
    return torch.from_numpy(np.ascontiguousarray(pixels)).movedim(-1, -3)


def layout(config: ParallelConfig) -> dict:
    skip = ("intra_node_link", "inter_node_link", "world_size", "collective_timeout_s")
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in skip}


class OutputWriter:
    """Rank 0's files: each batch's images (or videos) with their metadata as the batch finishes;
    a grid (``--output``) and the removal of an earlier run's files at the end."""

    def __init__(self, job: GenerateJob, config: ParallelConfig, load_s: float) -> None:
        from . import __version__

        self.job, self.load_s = job, load_s
        self.run = {"model": job.model, "pipeline": job.pipeline_class or "swiftfusion DigitsPipeline",
                    **job.settings, "fps": job.fps if job.suffix != ".png" else None, "layout": layout(config),
                    "world_size": runtime.world_size(), "swiftfusion": __version__}
        self.video = job.suffix != ".png"
        self.grid: list[tuple[torch.Tensor, dict]] = []  # --output: every output, for one file
        self.written: set[Path] = set()
        self.earlier: list[Path] = []
        if job.output_dir is not None:
            Path(job.output_dir).mkdir(exist_ok=True)
            self.earlier = earlier_outputs(job.output_dir)  # only with --overwrite (checked before the run)

    def _metadata(self, image: OutputImage, timing: CallTiming) -> dict:
        row = self.job.rows[image.row]
        entry = {"prompt": row.prompt, "negative_prompt": row.negative_prompt, "seed": image.seed,
                 "row": image.row, "image": image.index, **self.run}
        if row.height is not None:
            entry.update(height=row.height, width=row.width)
        steps = timing.step_s
        entry["timings"] = {"load_s": round(self.load_s, 4), "batch_encode_s": round(timing.encode_s, 4),
                            "batch_denoise_s": round(sum(steps), 4), "batch_decode_s": round(timing.decode_s, 4),
                            "batch_total_s": round(timing.total_s, 4),
                            "step_median_s": round(statistics.median(steps), 4) if steps else 0.0}
        return {k: v for k, v in entry.items() if v is not None}

    def write(self, batch: Batch, outputs: list[torch.Tensor], timing: CallTiming) -> None:
        for image, output in zip(batch.images, outputs, strict=True):
            entry = self._metadata(image, timing)
            if self.job.output is not None:
                self.grid.append((output, entry))
                continue
            path = Path(self.job.output_dir) / f"{image.name}{self.job.suffix}"
            if self.video:
                write_video(video_frames(output[None]), path, self.job.fps)
            else:
                write_png(grid(output[None]), path,
                          {"prompt": entry["prompt"], "swiftfusion": entry} if self.job.metadata else None)
            self.written.add(path)
            if self.job.metadata:
                write_json(entry, path.with_suffix(".json"))
                self.written.add(path.with_suffix(".json"))
        if self.job.output_dir is not None:  # an interrupted run's files are known as swiftfusion's too
            self._write_manifest(set(self.earlier) | self.written)

    def _write_manifest(self, files: set[Path]) -> None:
        write_json({"files": sorted(path.name for path in files)}, Path(self.job.output_dir) / MANIFEST)

    def finish(self) -> None:
        job = self.job
        if job.output is not None:
            outputs = torch.stack([output for output, _ in self.grid])
            entries = {"images": [entry for _, entry in self.grid]}
            if self.video:
                write_video(video_frames(outputs), job.output, job.fps)
            else:
                write_png(grid(outputs), job.output, {"swiftfusion": entries} if job.metadata else None)
            sidecar = Path(job.output).with_suffix(".json")
            if job.metadata:
                write_json(entries, sidecar)
            print(f"wrote {job.output}" + (f" and {sidecar}" if job.metadata else ""))
            return
        for path in self.earlier:  # what an earlier, larger run wrote and this one did not (--overwrite)
            if path not in self.written and path.is_file():
                path.unlink()
        self._write_manifest(self.written)
        count = f"{len(job.images)} {'video' if self.video else 'image'}{'s' if len(job.images) != 1 else ''}"
        print(f"wrote {count} to {job.output_dir}" + (" (with .json metadata)" if job.metadata else ""))


def _print_report(job: GenerateJob, config: ParallelConfig, report: dict, runs: list[RunTiming]) -> None:
    peaks = ", ".join(f"rank {r} {gib(b)}" for r, b in enumerate(report["peak_memory_bytes"]))
    calls = len(job.batches)
    started = f"start {report['start_s']:.2f} s (processes, imports), " if report.get("start_s") is not None else ""
    print(f"time: {started}load {report['load_s']:.2f} s, then for {calls} pipeline call{'s' if calls > 1 else ''}: "
          f"encode {report['encode_s']:.2f} s, denoise {report['denoise_s']:.2f} s ({report['steps']} steps, median "
          f"{report['step_median_s']:.3f} s/step), decode {report['decode_s']:.2f} s, total {report['total_s']:.2f} s")
    print(f"peak memory per rank ({report['memory']}): {peaks}")
    if job.iterations == 1 and job.warmup == 0:
        return
    totals = [run.total_s for run in runs]
    steps = [run.summary()["step_median_s"] for run in runs]
    print(f"benchmark: {len(runs)} iterations after {job.warmup} warm-up: "
          f"total median {spread(totals)['median']:.3f} s "
          f"(min {min(totals):.3f}, max {max(totals):.3f}), step median {spread(steps)['median']:.4f} s "
          f"(min {min(steps):.4f}, max {max(steps):.4f})")
    print(json.dumps({
        "benchmark": "generate", "model": job.model, "layout": layout(config), "world_size": runtime.world_size(),
        "images": len(job.images), "pipeline_calls": len(job.batches), "settings": job.settings,
        "warmup": job.warmup, "iterations": len(runs), "total_s": spread(totals),
        "step_median_s": spread(steps), "load_s": report["load_s"], "peak_memory_bytes": report["peak_memory_bytes"],
    }))
