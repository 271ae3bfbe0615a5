"""``swiftfusion``: the command line.

    swiftfusion generate --prompt 7 --num-images 8 --steps 25 --seed 0 --output out.png \\
        --nproc 4 --ulysses-degree 2 --ring-degree 2

``--nproc N`` starts N local ranks; without it, the command runs as one rank of the world that
torchrun (or another launcher) set up in the environment, or as a single process. Every input is
checked before any process starts or any weight loads. xDiT's underscore spellings
(``--ulysses_degree``) are accepted as aliases.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

from .config import ParallelConfig
from .launch import LaunchError, launch
from .runtime import launched_world_size
from .topology import Link


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Adds ``--some-name`` with xDiT's ``--some_name`` as an alias."""
    names = [f"--{name}"]
    if "-" in name:
        names.append(f"--{name.replace('-', '_')}")
    parser.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .models import BUILTIN_MODELS
    from .models.digits import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS

    parser = argparse.ArgumentParser(prog="swiftfusion", description="Parallel inference for Diffusion Transformers.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate images", description="Generate images.")
    _flag(gen, "model", default=BUILTIN_MODELS[0],
          help=f"{', '.join(BUILTIN_MODELS)} (default), or a diffusers pipeline: a local folder or a hub id")
    _flag(gen, "prompt", required=True, help="the text prompt; for builtin:digits the digit to draw, 0-9")
    _flag(gen, "negative-prompt", help="what to steer away from (pipelines that take one)")
    _flag(gen, "num-images", type=int, help="images (or videos) to generate (default 1)")
    _flag(gen, "steps", type=int, help=f"denoising steps (default: the pipeline's; {DEFAULT_STEPS} for builtin:digits)")
    _flag(gen, "guidance-scale", type=float,
          help=f"guidance scale (default: the pipeline's; {DEFAULT_GUIDANCE_SCALE} for builtin:digits)")
    for name, text in (("height", "image height in pixels"), ("width", "image width in pixels"),
                       ("num-frames", "video frames"), ("max-sequence-length", "text tokens (T5)")):
        _flag(gen, name, type=int, help=f"{text} (default: the pipeline's)")
    _flag(gen, "seed", type=int, default=0)
    _flag(gen, "dtype", default="float32", help="float32 (default), bfloat16 or float16 (diffusers pipelines)")
    _flag(gen, "trust-remote-code", action="store_true", help="let diffusers run code shipped with the model")
    out = gen.add_mutually_exclusive_group(required=True)
    out.add_argument("--output", help="PNG file (images) or GIF file (videos): all of them as one grid")
    _flag(out, "output-dir", help="folder: one file per image or video, named 000.png (000.gif), 001.png, ...")
    _flag(gen, "nproc", type=int, help="start this many local ranks (omit under torchrun)")
    for axis, text in [("data", "prompts/images split across rank groups"),
                       ("cfg", "1, or 2 to run the guidance branches on different ranks"),
                       ("ulysses", "Ulysses sequence-parallel degree"),
                       ("ring", "Ring sequence-parallel degree")]:
        _flag(gen, f"{axis}-degree", type=int, default=1, help=f"{text} (default 1)")
    _flag(gen, "sp-layout", default="usp",
          help="placement of the Ulysses and Ring groups: usp (Ulysses inside a node), tas (Ulysses across "
               "nodes, Ring inside), auto (fewest inter-node bytes) (default usp)")
    _flag(gen, "all-to-all", default="flat",
          help="Ulysses all-to-all: flat, or tapa (intra-node phase, then inter-node phase) (default flat)")
    _flag(gen, "v-first", action="store_true", help="start V's all-to-all before Q/K projection (exact)")
    _flag(gen, "transport", default="collective",
          help="collective, or one_sided (shared-memory puts between the ranks of a node) (default collective)")
    _flag(gen, "sp-algorithm", default="usp",
          help="usp (all-to-all, then ring), or torus (overlapped Pull-Q/Pull-KV/Push-O; ring degree 1)")
    _flag(gen, "ranks-per-node", type=int, help="ranks per machine (default: from the launcher, else all)")
    for where, links, default in (("intra", "inside nodes", "3600,3"), ("inter", "between nodes", "400,10")):
        _flag(gen, f"{where}-node-link", metavar="GBIT[,LATENCY_US]",
              help=f"bandwidth per rank (Gbit/s) and message latency (µs) of the links {links}, for --sp-layout "
                   f"auto (default: the launcher's SWIFTFUSION_{where.upper()}_NODE_LINK, else {default})")
    _flag(gen, "timeout", type=float, default=300.0, help="seconds before a stuck collective fails (default 300)")
    from .bench import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


def _check_output(args: argparse.Namespace, suffix: str) -> None:
    """Fails now, not after generating, if the output cannot be written."""
    if args.output is not None:
        target = Path(args.output)
        if target.suffix.lower() != suffix:
            raise ValueError(f"--output must name a {suffix} file, got {args.output!r}")
        if target.is_dir():
            raise ValueError(f"--output {args.output!r} is a directory; give a {suffix} file name or use --output-dir")
        _check_writable_dir(target.parent, f"--output {args.output!r}")
    else:
        folder = Path(args.output_dir)
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"--output-dir {args.output_dir!r} exists and is not a directory")
            _check_writable_dir(folder, f"--output-dir {args.output_dir!r}")
        else:
            _check_writable_dir(folder.parent, f"--output-dir {args.output_dir!r}")


def _check_writable_dir(folder: Path, what: str) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{what}: the directory {str(folder)!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".swiftfusion-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"{what}: cannot write in {str(folder)!r} ({error.strerror})") from None


def check_generate_args(args: argparse.Namespace) -> ParallelConfig:
    """Every check that can fail, before any work; returns the parallel config."""
    from .models import BUILTIN_MODELS
    from .pipelines import check_model_name

    if args.model in BUILTIN_MODELS or args.model.startswith("builtin:"):
        check_model_name(args.model)
        suffix = _check_digits_args(args)
    else:
        suffix = _check_pipeline_args(args)
    if args.nproc is not None and (args.nproc < 1):
        raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc is not None and launched_world_size() > 1:
        raise ValueError("--nproc starts local ranks itself; do not combine it with torchrun (WORLD_SIZE is set)")
    world = args.nproc if args.nproc is not None else launched_world_size()
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    config = ParallelConfig(
        data_degree=args.data_degree, cfg_degree=args.cfg_degree, ulysses_degree=args.ulysses_degree,
        ring_degree=args.ring_degree, sp_layout=args.sp_layout, all_to_all=args.all_to_all, v_first=args.v_first,
        sp_algorithm=args.sp_algorithm, transport=args.transport,
        intra_node_link=_link(args.intra_node_link, "--intra-node-link"),
        inter_node_link=_link(args.inter_node_link, "--inter-node-link"),
        world_size=world, collective_timeout_s=args.timeout,
    )
    if args.ranks_per_node is not None and (args.ranks_per_node < 1 or world % args.ranks_per_node):
        raise ValueError(f"--ranks-per-node {args.ranks_per_node} must be a positive divisor of the world size {world}")
    _check_output(args, suffix)
    return config


DIFFUSERS_ONLY = ("negative_prompt", "height", "width", "num_frames", "max_sequence_length")


def _check_digits_args(args: argparse.Namespace) -> str:
    from .models.digits import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
    from .pipelines.digits import check_generation_args

    for option in DIFFUSERS_ONLY:
        if getattr(args, option) is not None:
            raise ValueError(f"--{option.replace('_', '-')} is not an option of {args.model}")
    try:
        args.prompt = int(args.prompt)
    except ValueError:
        raise ValueError(f"digit must be an integer from 0 to 9, got {args.prompt!r}") from None
    args.num_images = 1 if args.num_images is None else args.num_images
    args.steps = DEFAULT_STEPS if args.steps is None else args.steps
    args.guidance_scale = DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
    check_generation_args([args.prompt], args.num_images, args.steps, args.guidance_scale, args.cfg_degree)
    return ".png"


def _check_pipeline_args(args: argparse.Namespace) -> str:
    """Checks a diffusers pipeline run; sets ``args.pipeline_class`` and ``args.call`` (its arguments)."""
    from .pipelines import diffusers_pipelines

    if args.dtype not in diffusers_pipelines.DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(diffusers_pipelines.DTYPES)}, got {args.dtype!r}")
    for option in ("num_images", "steps", "height", "width", "num_frames", "max_sequence_length"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    if args.guidance_scale is not None and not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise ValueError(f"--guidance-scale must be a finite number >= 0, got {args.guidance_scale}")
    args.pipeline_class = diffusers_pipelines.pipeline_class(args.model)
    options = {name: getattr(args, name) for name in diffusers_pipelines.CALL_ARGUMENTS}
    args.call = diffusers_pipelines.call_arguments(args.pipeline_class, options)
    return ".gif" if diffusers_pipelines.output_kind(args.pipeline_class) == "video" else ".png"


def _link(text: str | None, flag: str) -> Link | None:
    try:
        return None if text is None else Link.parse(text)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def generate_rank(args: argparse.Namespace, config: ParallelConfig) -> None:
    """One rank's share of ``swiftfusion generate``; rank 0 writes the output."""
    from . import runtime
    from .pipelines import load_pipeline, parallelize

    if getattr(args, "pipeline_class", None) is not None:
        return _generate_with_diffusers(args, config)

    pipe = load_pipeline(args.model)
    if config.product > 1:
        pipe = parallelize(pipe, config, ranks_per_node=args.ranks_per_node)
    result = pipe(args.prompt, num_images_per_prompt=args.num_images, num_inference_steps=args.steps,
                  guidance_scale=args.guidance_scale, seed=args.seed, show_progress=runtime.rank() == 0)
    if runtime.rank() == 0:
        from .images import save_each, save_grid

        if args.output is not None:
            save_grid(result.images, args.output)
            print(f"wrote {args.output}")
        else:
            save_each(result.images, args.output_dir)
            print(f"wrote {result.images.shape[0]} images to {args.output_dir}")


def _generate_with_diffusers(args: argparse.Namespace, config: ParallelConfig) -> None:
    import torch

    from . import runtime
    from .images import channels_first, save_each, save_each_video, save_grid, save_video_grid
    from .pipelines import diffusers_pipelines, parallelize

    pipe = diffusers_pipelines.load(args.model, args.dtype, args.trust_remote_code).to(runtime.default_device())
    if config.product > 1:
        pipe = parallelize(pipe, config, ranks_per_node=args.ranks_per_node)
    pipe.set_progress_bar_config(disable=runtime.rank() != 0)
    result = pipe(**args.call, generator=torch.Generator().manual_seed(args.seed), output_type="np")
    if runtime.rank() != 0:
        return
    if diffusers_pipelines.output_kind(args.pipeline_class) == "video":
        videos = torch.stack([channels_first(video) for video in result.frames])  # [N, F, C, H, W]
        save_video_grid(videos, args.output) if args.output else save_each_video(videos, args.output_dir)
    else:
        images = channels_first(result.images)
        save_grid(images, args.output) if args.output else save_each(images, args.output_dir)
    print(f"wrote {args.output or args.output_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "bench":
        from . import bench

        try:
            bench.check_args(args)
        except ValueError as error:
            parser.exit(2, f"swiftfusion: error: {error}\n")
        return bench.main(args)
    try:
        config = check_generate_args(args)
    except ValueError as error:
        parser.exit(2, f"swiftfusion: error: {error}\n")
    try:
        if args.nproc is not None and args.nproc > 1:
            launch(generate_rank, (args, config), args.nproc)
        elif launched_world_size() > 1:
            from .runtime import run_rank_main

            run_rank_main(generate_rank, args, config)
        else:
            generate_rank(args, config)
    except LaunchError as error:
        print(f"swiftfusion: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
