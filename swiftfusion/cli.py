"""``swiftfusion``: the command line.

    swiftfusion generate --prompt 7 --num-images 8 --steps 25 --seed 0 --output out.png \\
        --nproc 4 --ulysses-degree 2 --ring-degree 2

``--nproc N`` starts N local ranks; without it, the command runs as one rank of the world that
torchrun (or another launcher) set up in the environment, or as a single process. Every input is
checked before any process starts or any weight loads, and errors name the flag as it was typed.
xDiT's spellings (``--ulysses_degree``, ``--num_inference_steps``, ``--use_cfg_parallel``, ...) are
accepted where they mean the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import psutil

from . import __version__
from .config import ParallelConfig
from .generate import GenerateJob, earlier_outputs, planned_files, run_rank
from .launch import LaunchError, LaunchInterrupted, launch
from .prompts import Row, batches, image_plan, read_prompts_file
from .runtime import launched_rank, launched_world_size
from .topology import Link

INTERRUPTED_EXIT = 130  # as a shell reports a command stopped by Ctrl-C


def _flag(group, name: str, *aliases: str, **kwargs) -> None:
    """Adds ``--some-name`` with xDiT's ``--some_name`` (and any ``aliases``) as other spellings."""
    names = [f"--{name}"]
    for spelling in (name.replace("-", "_"), *aliases):
        if f"--{spelling}" not in names:
            names.append(f"--{spelling}")
    group.add_argument(*names, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from .models import BUILTIN_MODELS
    from .models.digits import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS

    parser = argparse.ArgumentParser(prog="swiftfusion", description="Parallel inference for Diffusion Transformers.",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"swiftfusion {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate", help="generate images or videos", description="Generate images or videos, on one or many ranks.",
        allow_abbrev=False,
        epilog="Every option is checked before any process starts. xDiT's underscore spellings are accepted.")

    what = gen.add_argument_group("what to generate")
    _flag(what, "model", default=BUILTIN_MODELS[0],
          help=f"{', '.join(BUILTIN_MODELS)} (default), or a diffusers pipeline: a local folder or a hub id")
    _flag(what, "prompt", nargs="+", action="extend", metavar="PROMPT",
          help="one or more prompts (repeat the flag or give several values); for builtin:digits the digit, 0-9")
    _flag(what, "prompts-file", metavar="FILE",
          help="prompts, one a row: a text file (a prompt a line), CSV with a 'prompt' column, or JSONL; CSV and "
               "JSONL rows may set negative_prompt, seed, and size (WxH) or height and width")
    _flag(what, "negative-prompt", help="what to steer away from (pipelines that take one)")
    _flag(what, "num-images", type=int, help="images (or videos) per prompt (default 1)")
    _flag(what, "seed", type=int, default=0,
          help="seed of the first image; image i of the run uses seed + i (default 0); written to the metadata")
    _flag(what, "batch-size", type=int, metavar="N",
          help="prompts per pipeline call (default: the data-parallel degree, one prompt per data group)")

    sampling = gen.add_argument_group("sampling")
    _flag(sampling, "steps", "num-inference-steps", "num_inference_steps", type=int,
          help=f"denoising steps (default: the pipeline's; {DEFAULT_STEPS} for builtin:digits)")
    _flag(sampling, "guidance-scale", type=float,
          help=f"guidance scale (default: the pipeline's; {DEFAULT_GUIDANCE_SCALE} for builtin:digits)")
    _flag(sampling, "true-cfg-scale", type=float,
          help="true classifier-free guidance with --negative-prompt (Flux, QwenImage, HunyuanVideo)")
    _flag(sampling, "guidance-scale-2", type=float, help="guidance of the low-noise expert (Wan 2.2)")
    for name, text in (("height", "image height in pixels"), ("width", "image width in pixels"),
                       ("num-frames", "video frames"), ("max-sequence-length", "text tokens (T5)")):
        _flag(sampling, name, type=int, help=f"{text} (default: the pipeline's)")
    _flag(sampling, "pipeline-arg", action="append", default=[], metavar="KEY=VALUE",
          help="any other argument of the pipeline's call, typed by its signature (repeatable)")
    _flag(sampling, "dtype", help="float32 (default), bfloat16 or float16 (diffusers pipelines)")
    _flag(sampling, "trust-remote-code", action="store_true", help="let diffusers run code shipped with the model")

    output = gen.add_argument_group("output (one of --output and --output-dir)")
    where = output.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", metavar="FILE",
                       help="one file: a PNG (several images as a grid), or a GIF or MP4 for videos; overwritten")
    _flag(where, "output-dir", metavar="DIR",
          help="one file per image or video (000.png, 001.png, ...; NNN-KK with several prompts and images each)")
    _flag(output, "overwrite", action="store_true",
          help="in --output-dir, replace an earlier run's files (removing those this run does not rewrite) and "
               "files of the names this run writes (refused otherwise); other files are left alone")
    _flag(output, "no-metadata", action="store_true",
          help="skip the metadata (PNG text chunks and a .json file beside each output)")
    _flag(output, "fps", type=float, help="frames per second of videos (default: the model family's)")

    parallel = gen.add_argument_group("parallel layout (the degrees multiply to the number of ranks)")
    _flag(parallel, "nproc", type=int, help="start this many local ranks (omit under torchrun)")
    degrees = [("data", ("data_parallel_degree",), "prompts/images split across rank groups"),
               ("cfg", (), "1, or 2 to run the guidance branches on different ranks"),
               ("ulysses", (), "Ulysses sequence-parallel degree"), ("ring", (), "Ring sequence-parallel degree"),
               ("pipefusion", ("pipefusion_parallel_degree",), "PipeFusion degree (only 1: not built yet)")]
    for axis, aliases, text in degrees:
        _flag(parallel, f"{axis}-degree", *aliases, type=int, default=1, help=f"{text} (default 1)")
    _flag(parallel, "use-cfg-parallel", action="store_true", help="xDiT's spelling of --cfg-degree 2")
    _flag(parallel, "sp-layout", default="usp",
          help="placement of the Ulysses and Ring groups: usp (Ulysses inside a node), tas (Ulysses across "
               "nodes, Ring inside), auto (fewest inter-node bytes) (default usp)")
    _flag(parallel, "sp-algorithm", default="usp",
          help="usp (all-to-all, then ring), or torus (overlapped Pull-Q/Pull-KV/Push-O; ring degree 1)")
    _flag(parallel, "all-to-all", default="flat",
          help="Ulysses all-to-all: flat, or tapa (intra-node phase, then inter-node phase) (default flat)")
    _flag(parallel, "v-first", action="store_true", help="start V's all-to-all before Q/K projection (exact)")
    _flag(parallel, "transport", default="collective",
          help="collective, or one_sided (shared-memory puts between the ranks of a node) (default collective)")
    _flag(parallel, "timeout", type=float, default=300.0,
          help="seconds before a stuck collective fails (default 300)")
    for name, what_it_is in (("num-pipeline-patch", "PipeFusion patches"),
                             ("warmup-steps", "PipeFusion warm-up steps")):
        _flag(parallel, name, type=int, help=f"{what_it_is} (xDiT; PipeFusion is not built yet)")
    for name, what_it_is in (("use-torch-compile", "torch.compile"), ("use-parallel-vae", "parallel VAE decode")):
        _flag(parallel, name, action="store_true", help=f"{what_it_is} (xDiT; not built yet)")

    topology = gen.add_argument_group("topology (for --sp-layout auto and TAPA)")
    _flag(topology, "ranks-per-node", type=int, help="ranks per machine (default: from the launcher, else all)")
    for where_, links, default in (("intra", "inside nodes", "3600,3"), ("inter", "between nodes", "400,10")):
        _flag(topology, f"{where_}-node-link", metavar="GBIT[,LATENCY_US]",
              help=f"bandwidth per rank (Gbit/s) and message latency (µs) of the links {links} (default: the "
                   f"launcher's SWIFTFUSION_{where_.upper()}_NODE_LINK, else {default})")

    bench = gen.add_argument_group("benchmarking (timing and peak memory are printed after every run)")
    _flag(bench, "warmup", type=int, default=0, metavar="N", help="untimed runs of the whole job first (default 0)")
    _flag(bench, "iterations", type=int, default=1, metavar="K",
          help="timed runs of the whole job; with K > 1 or --warmup, prints median/min/max and a JSON line")
    _flag(bench, "profile", metavar="DIR", help="write a torch profiler trace per rank to DIR/rankN.json (Perfetto)")

    from .bench import add_parser as add_bench_parser

    add_bench_parser(commands)
    return parser


class Flags:
    """The flag a user typed for each option (``--ring_degree`` or ``--ring-degree``), so that
    errors name it as typed; the first spelling when the option was not typed."""

    def __init__(self, parser: argparse.ArgumentParser, argv: list[str]) -> None:
        self.spellings: dict[str, list[str]] = {}
        for action in _generate_parser(parser)._actions:
            self.spellings[action.dest] = list(action.option_strings)
        self.typed = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}

    def __call__(self, dest: str) -> str:
        spellings = self.spellings.get(dest, [f"--{dest.replace('_', '-')}"])
        return next((s for s in spellings if s in self.typed), spellings[0])

    def given(self, dest: str) -> bool:
        return any(s in self.typed for s in self.spellings.get(dest, []))


def _generate_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["generate"]


# Names inside the engine's messages -> the option that sets them.
ENGINE_NAMES = {
    "data_degree": "data_degree", "cfg_degree": "cfg_degree", "pipefusion_degree": "pipefusion_degree",
    "ulysses_degree": "ulysses_degree", "ring_degree": "ring_degree", "sp_layout": "sp_layout",
    "all_to_all": "all_to_all", "sp_algorithm": "sp_algorithm", "transport": "transport",
    "collective_timeout_s": "timeout", "num_inference_steps": "steps", "num_images_per_prompt": "num_images",
    "guidance_scale": "guidance_scale",
}


def name_flags(message: str, flag: Callable[[str], str]) -> str:
    """Rewrites the engine's argument names in ``message`` as the CLI flags that set them."""
    for name, dest in ENGINE_NAMES.items():
        message = re.sub(rf"\b{name}=('?)([^\s',;]+)\1", lambda m, d=dest: f"{flag(d)} {m.group(2)}", message)
        message = re.sub(rf"(?<![-\w]){name}\b", flag(dest), message)
    return message


def _check_output(args: argparse.Namespace, suffixes: tuple[str, ...], images: list, flag: Flags) -> str:
    """Fails now, not after generating, if the output cannot be written or would replace files
    without ``--overwrite``; returns the file suffix."""
    if args.output is not None:
        target = Path(args.output)
        if target.suffix.lower() not in suffixes:
            raise ValueError(f"--output must name a {' or '.join(suffixes)} file, got {args.output!r}")
        if target.is_dir():
            raise ValueError(f"--output {args.output!r} is a directory; give a file name or use --output-dir")
        _check_writable_dir(target.parent, f"--output {args.output!r}")
        return target.suffix.lower()
    folder = Path(args.output_dir)
    where = f"{flag('output_dir')} {args.output_dir!r}"
    if folder.exists():
        if not folder.is_dir():
            raise ValueError(f"{where} exists and is not a directory")
        _check_writable_dir(folder, where)
        earlier = earlier_outputs(folder)
        others = [name for name in planned_files(images, suffixes[0], not args.no_metadata)
                  if (folder / name).exists() and folder / name not in earlier]
        if (earlier or others) and not args.overwrite:
            what = (f"{len(earlier)} file{'s' if len(earlier) != 1 else ''} of an earlier run" if earlier
                    else "files this run would replace, not written by swiftfusion")
            names = [p.name for p in earlier] or others
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ValueError(f"{where} already holds {what} ({shown}); pass --overwrite to replace them, or "
                             "choose another folder")
    else:
        _check_writable_dir(folder.parent, where)
    return suffixes[0]


def _check_writable_dir(folder: Path, what: str) -> None:
    folder = folder if str(folder) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{what}: the directory {str(folder)!r} does not exist")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".swiftfusion-probe-"):
            pass
    except OSError as error:
        raise ValueError(f"{what}: cannot write in {str(folder)!r} ({error.strerror})") from None


def _rows(args: argparse.Namespace, flag: Flags) -> list[Row]:
    if args.prompt and args.prompts_file:
        raise ValueError(f"give {flag('prompt')} or {flag('prompts_file')}, not both")
    if args.prompts_file:
        return read_prompts_file(args.prompts_file)
    if not args.prompt:
        raise ValueError(f"{flag('prompt')} or {flag('prompts_file')} is required")
    return [Row(p) for p in args.prompt]


def _check_xdit_only(args: argparse.Namespace, flag: Flags) -> None:
    """xDiT options whose features swiftfusion has not built: refused, not silently ignored."""
    for dest in ("num_pipeline_patch", "warmup_steps"):
        if getattr(args, dest) is not None:
            raise ValueError(f"{flag(dest)} is a PipeFusion option, and PipeFusion is not built yet")
    for dest, feature in (("use_torch_compile", "torch.compile"), ("use_parallel_vae", "parallel VAE decode")):
        if getattr(args, dest):
            raise ValueError(f"{flag(dest)}: {feature} is not built yet")
    if args.use_cfg_parallel:
        if flag.given("cfg_degree") and args.cfg_degree != 2:
            raise ValueError(f"{flag('use_cfg_parallel')} means {flag('cfg_degree')} 2, got {args.cfg_degree}")
        args.cfg_degree = 2


def _check_numbers(args: argparse.Namespace, flag: Flags) -> None:
    for dest, minimum in (("num_images", 1), ("steps", 1), ("height", 1), ("width", 1), ("num_frames", 1),
                          ("max_sequence_length", 1), ("batch_size", 1), ("warmup", 0), ("iterations", 1),
                          ("seed", 0), ("nproc", 1)):
        value = getattr(args, dest)
        if value is not None and value < minimum:
            raise ValueError(f"{flag(dest)} must be >= {minimum}, got {value}")
    for dest in ("guidance_scale", "true_cfg_scale", "guidance_scale_2"):
        value = getattr(args, dest)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag(dest)} must be a finite number >= 0, got {value}")
    if args.fps is not None and not (math.isfinite(args.fps) and args.fps > 0):
        raise ValueError(f"{flag('fps')} must be a positive number, got {args.fps}")
    if not math.isfinite(args.timeout) or args.timeout <= 0:
        raise ValueError(f"{flag('timeout')} must be a positive number of seconds, got {args.timeout}")
    if args.profile is not None:
        folder = Path(args.profile)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag('profile')} {args.profile!r} exists and is not a directory")
        parent = folder if folder.exists() else folder.parent
        _check_writable_dir(parent, f"{flag('profile')} {args.profile!r}")


def check_generate_args(args: argparse.Namespace, flag: Flags) -> tuple[GenerateJob, ParallelConfig]:
    """Every check that can fail, before any work; returns the job and the parallel config."""
    from .models import BUILTIN_MODELS

    _check_xdit_only(args, flag)
    _check_numbers(args, flag)
    if args.nproc is not None and launched_world_size() > 1:
        raise ValueError(f"{flag('nproc')} starts local ranks itself; do not combine it with torchrun (WORLD_SIZE "
                         "is set)")
    world = args.nproc if args.nproc is not None else launched_world_size()
    try:
        config = _parallel_config(args, world, flag)
    except ValueError as error:  # the engine's names for its options -> the flags that set them
        raise ValueError(name_flags(str(error), flag)) from None
    if args.ranks_per_node is not None and (args.ranks_per_node < 1 or world % args.ranks_per_node):
        raise ValueError(f"{flag('ranks_per_node')} {args.ranks_per_node} must be a positive divisor of the world "
                         f"size {world}")
    rows = _rows(args, flag)
    num_images = args.num_images or 1
    if args.model in BUILTIN_MODELS or args.model.startswith("builtin:"):
        pipeline_class, call, settings, suffixes = None, *_check_digits_args(args, rows, config, flag)
    else:
        pipeline_class, call, settings, suffixes = _check_pipeline_args(args, rows, config, flag)
    if args.output is not None and len({(r.height or args.height, r.width or args.width) for r in rows}) > 1:
        raise ValueError(f"--output makes one grid of all images, which needs one size; rows of "
                         f"{flag('prompts_file')} set several: use {flag('output_dir')}")
    images = image_plan(rows, num_images, args.seed)
    # Under torchrun the output is rank 0's alone, on rank 0's disk.
    suffix = _check_output(args, suffixes, images, flag) if launched_rank() == 0 else suffixes[0]
    fps = args.fps
    if fps is None:
        from .pipelines.diffusers_pipelines import PIPELINES

        fps = PIPELINES[pipeline_class].fps if pipeline_class else 8
    job = GenerateJob(
        model=args.model, pipeline_class=pipeline_class, rows=rows, images=images,
        batches=batches(rows, images, args.batch_size or config.data_degree), call_arguments=call, settings=settings,
        output=args.output, output_dir=args.output_dir, suffix=suffix, metadata=not args.no_metadata, fps=fps,
        dtype=args.dtype or "float32", trust_remote_code=args.trust_remote_code, ranks_per_node=args.ranks_per_node,
        warmup=args.warmup, iterations=args.iterations, profile=args.profile,
    )
    return job, config


def _parallel_config(args: argparse.Namespace, world: int, flag: Flags) -> ParallelConfig:
    return ParallelConfig(
        data_degree=args.data_degree, cfg_degree=args.cfg_degree, pipefusion_degree=args.pipefusion_degree,
        ulysses_degree=args.ulysses_degree, ring_degree=args.ring_degree, sp_layout=args.sp_layout,
        all_to_all=args.all_to_all, v_first=args.v_first, sp_algorithm=args.sp_algorithm, transport=args.transport,
        intra_node_link=_link(args.intra_node_link, flag("intra_node_link")),
        inter_node_link=_link(args.inter_node_link, flag("inter_node_link")),
        world_size=world, collective_timeout_s=args.timeout,
    )


DIFFUSERS_ONLY = ("negative_prompt", "height", "width", "num_frames", "max_sequence_length", "true_cfg_scale",
                  "guidance_scale_2", "dtype", "fps")


def _check_digits_args(args: argparse.Namespace, rows: list[Row], config: ParallelConfig, flag: Flags):
    from .models.digits import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS
    from .pipelines import check_model_name
    from .pipelines.digits import check_generation_args

    check_model_name(args.model)
    for option in DIFFUSERS_ONLY:
        if getattr(args, option) is not None:
            raise ValueError(f"{flag(option)} is not an option of {args.model}")
    if args.pipeline_arg or args.trust_remote_code:
        raise ValueError(f"{flag('pipeline_arg' if args.pipeline_arg else 'trust_remote_code')} is not an option of "
                         f"{args.model}")
    for r, row in enumerate(rows):
        source = f"row {r + 1} of {flag('prompts_file')} {args.prompts_file!r}" if args.prompts_file else flag("prompt")
        if not re.fullmatch(r"\d", row.prompt):
            raise ValueError(f"{source}: {args.model} draws a digit from 0 to 9, got {row.prompt!r}")
        if row.negative_prompt is not None or row.height is not None:
            raise ValueError(f"{source}: {args.model} takes no negative prompt or size")
    call = dict(num_images_per_prompt=args.num_images or 1,
                num_inference_steps=DEFAULT_STEPS if args.steps is None else args.steps,
                guidance_scale=DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale)
    try:
        check_generation_args([0], cfg_degree=config.cfg_degree, **call)
    except ValueError as error:
        raise ValueError(name_flags(str(error), flag)) from None
    settings = {"steps": call["num_inference_steps"], "guidance_scale": call["guidance_scale"]}
    return call, settings, (".png",)


def _check_pipeline_args(args: argparse.Namespace, rows: list[Row], config: ParallelConfig, flag: Flags):
    """Checks a diffusers pipeline run; returns its class, call arguments, settings and suffixes."""
    from .images import video_encoder_available
    from .pipelines import diffusers_pipelines as dp
    from .pipelines.pipeline_args import pipeline_arguments

    if args.dtype is not None and args.dtype not in dp.DTYPES:
        raise ValueError(f"{flag('dtype')} must be one of {', '.join(dp.DTYPES)}, got {args.dtype!r}")
    index = dp.model_index(args.model)
    class_name = dp.pipeline_class(index)
    options = {name: getattr(args, name) for name in dp.CALL_ARGUMENTS}
    call = dp.call_arguments(class_name, options, flag)
    dedicated = {argument: flag(option) for option, names in dp.CALL_ARGUMENTS.items() for argument in names}
    call.update(pipeline_arguments(class_name, args.pipeline_arg, dedicated))
    if args.negative_prompt is not None:
        if any(row.negative_prompt is not None for row in rows):
            raise ValueError(f"{flag('negative_prompt')} and negative prompts in {flag('prompts_file')}: give one")
        rows[:] = [Row(r.prompt, args.negative_prompt, r.seed, r.height, r.width) for r in rows]
        call.pop("negative_prompt")
    sizes = [(row.height, row.width, f"row {r + 1} of {flag('prompts_file')} {args.prompts_file!r}")
             if row.height is not None else (args.height, args.width, None) for r, row in enumerate(rows)]
    run = dp.RunShape(sizes=sizes, num_frames=args.num_frames,
                      negative_prompt=any(row.negative_prompt is not None for row in rows),
                      cfg_degree=config.cfg_degree)
    def flag_of(argument: str) -> str:
        """The flag that sets a pipeline argument (or the CFG degree) named in a check's message."""
        has_flag = argument in dp.CALL_ARGUMENTS or argument == "cfg_degree"
        return flag(argument) if has_flag else f"--pipeline-arg {argument}"

    dp.check_run(args.model, class_name, index, call, run, flag_of)
    settings = {"steps": dp.default_of(class_name, "num_inference_steps"),
                **{name: dp.default_of(class_name, name) for name in ("guidance_scale", "true_cfg_scale")
                   if dp.takes(class_name, name)}, **call}
    settings["steps"] = settings.pop("num_inference_steps", settings["steps"])
    if dp.output_kind(class_name) == "image":
        if args.fps is not None:
            raise ValueError(f"{flag('fps')} is for video pipelines; {class_name} makes images")
        return class_name, call, settings, (".png",)
    if args.output is not None and Path(args.output).suffix.lower() == ".mp4" and not video_encoder_available():
        raise ValueError("--output .mp4 needs the ffmpeg of imageio-ffmpeg: pip install 'swiftfusion[video]' (or "
                         "write a .gif)")
    return class_name, call, settings, ((".mp4", ".gif") if video_encoder_available() else (".gif", ".mp4"))


def _link(text: str | None, flag: str) -> Link | None:
    try:
        return None if text is None else Link.parse(text)
    except ValueError as error:
        raise ValueError(f"{flag}: {error}") from None


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``parse_args``, but an unknown flag of ``generate`` is reported with ``generate``'s usage
    and the nearest flags it has."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = _generate_parser(parser) if args.command == "generate" else parser
        spelling = {s: action.option_strings[0] for action in command._actions for s in action.option_strings}

        def hint(word: str) -> str:
            close = dict.fromkeys(spelling[s] for s in difflib.get_close_matches(word.split("=", 1)[0], spelling, n=3))
            return f"{word} (did you mean {' or '.join(close)}?)" if close and word.startswith("-") else word

        hints = [hint(word) for word in unknown]
        command.error(f"unrecognized arguments: {' '.join(hints)}")
    return args


def main(argv: list[str] | None = None) -> int:
    started_at = psutil.Process().create_time()  # the start-up time counts the interpreter and imports
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(parser, argv)
    if args.command == "bench":
        from . import bench

        try:
            bench.check_args(args)
        except ValueError as error:
            parser.exit(2, f"swiftfusion: error: {error}\n")
        return bench.main(args)
    flag = Flags(parser, argv)
    try:
        job, config = check_generate_args(args, flag)
        job = dataclasses.replace(job, started_at=started_at)
    except ValueError as error:
        # Under torchrun every rank checks; rank 0 alone says why.
        parser.exit(2, f"swiftfusion: error: {error}\n" if launched_rank() == 0 else None)
    try:
        if args.nproc is not None and args.nproc > 1:
            launch(run_rank, (job, config), args.nproc)
        elif launched_world_size() > 1:
            from .runtime import run_rank_main

            run_rank_main(run_rank, job, config)
        else:
            run_rank(job, config)
    except KeyboardInterrupt:
        print("swiftfusion: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except LaunchInterrupted as stopped:  # before LaunchError, which it is
        # A newline first: rank 0's progress bar may have left the line unfinished.
        print(f"\nswiftfusion: {stopped}", file=sys.stderr)
        return stopped.exit_code
    except LaunchError as error:
        print(f"swiftfusion: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
