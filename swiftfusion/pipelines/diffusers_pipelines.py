"""What swiftfusion knows about each diffusers pipeline class, for ``swiftfusion generate --model``:
finding and loading a pipeline by folder or hub id, and checking a run's options against the
pipeline before any process starts or any weight loads.

Which pipelines are supported follows from the transformer plans: a pipeline class is supported
when its transformer class has a plan (``models.plan.PLANS``). The pipeline class and the small
component configs (VAE, transformer) are read from JSON files, never from weights, so every check
here costs milliseconds.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..models import BUILTIN_MODELS
from ..models.plan import PLANS
from .hub import HUB_ID, Config, hub_config, looks_like_path


def _vae_factor(vae: Config) -> int:
    """Spatial compression of an AutoencoderKL-style VAE (as the pipelines compute it)."""
    return 2 ** (len(vae["block_out_channels"]) - 1)


def _patch(transformer: Config) -> int:
    patch = transformer.get("patch_size") or 1
    return patch[-1] if isinstance(patch, (list, tuple)) else patch


@dataclass(frozen=True)
class PipelineInfo:
    """One pipeline class as the CLI needs it.

    - ``size_multiple(vae, transformer)``: height and width must be multiples of it. Some
      pipelines raise on other sizes, some round them down with a warning (a silently smaller
      image); both are rejected up front.
    - ``frame_factor(vae)``: video pipelines compress time by this factor and take
      ``num_frames = factor * k + 1`` (others are rounded silently); ``frame_counts(transformer)``:
      the only frame counts a transformer with fixed temporal embeddings takes (Latte).
    - ``guidance``: the argument that turns classifier-free guidance on. ``"guidance_scale"``: on
      when it is > 1. ``"true_cfg_scale"``: on when it is > 1 *and* a negative prompt is given
      (Flux's ``guidance_scale`` is a distilled embedding, not a second branch).
    - ``binning_sample_sizes``: PixArt's resolution binning works only for these transformer
      sample sizes (it then takes any size: it generates at the nearest bin and resizes back);
      ``binning_shapes``: HunyuanDiT's binning maps other sizes to one of these and returns an
      image of that other size.
    """

    transformer: str
    output: str  # "image" or "video"
    size_multiple: Callable[[Config, Config], int]
    guidance: str = "guidance_scale"
    frame_factor: Callable[[Config], int] | None = None
    frame_counts: Callable[[Config], tuple[int, ...]] | None = None
    binning_sample_sizes: tuple[int, ...] | None = None
    binning_shapes: Callable[[], list[tuple[int, int]]] | None = None
    fps: int = 8  # the model family's usual frame rate, for video files
    max_text_tokens: int | None = None  # the longest max_sequence_length the pipeline takes


def _hunyuandit_shapes() -> list[tuple[int, int]]:
    from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import SUPPORTED_SHAPE

    return list(SUPPORTED_SHAPE)


PIPELINES = {
    "FluxPipeline": PipelineInfo("FluxTransformer2DModel", "image", lambda v, t: _vae_factor(v) * 2,
                                 guidance="true_cfg_scale", max_text_tokens=512),
    "StableDiffusion3Pipeline": PipelineInfo("SD3Transformer2DModel", "image", lambda v, t: _vae_factor(v) * _patch(t),
                                             max_text_tokens=512),
    "PixArtAlphaPipeline": PipelineInfo("PixArtTransformer2DModel", "image",
                                        lambda v, t: math.lcm(8, _vae_factor(v) * _patch(t)),
                                        binning_sample_sizes=(32, 64, 128)),
    "PixArtSigmaPipeline": PipelineInfo("PixArtTransformer2DModel", "image",
                                        lambda v, t: math.lcm(8, _vae_factor(v) * _patch(t)),
                                        binning_sample_sizes=(32, 64, 128, 256)),
    "HunyuanDiTPipeline": PipelineInfo("HunyuanDiT2DModel", "image",
                                       lambda v, t: math.lcm(16, _vae_factor(v) * _patch(t)),
                                       binning_shapes=_hunyuandit_shapes),
    "QwenImagePipeline": PipelineInfo("QwenImageTransformer2DModel", "image",
                                      lambda v, t: 2 ** len(v["temperal_downsample"]) * 2, guidance="true_cfg_scale",
                                      max_text_tokens=1024),
    "CogVideoXPipeline": PipelineInfo("CogVideoXTransformer3DModel", "video",
                                      lambda v, t: math.lcm(8, _vae_factor(v) * _patch(t)),
                                      frame_factor=lambda v: int(v.get("temporal_compression_ratio", 4)), fps=8),
    "LattePipeline": PipelineInfo("LatteTransformer3DModel", "video",
                                  lambda v, t: math.lcm(8, _vae_factor(v) * _patch(t)),
                                  frame_counts=lambda t: (1, t.get("video_length", 16)), fps=8),
    "WanPipeline": PipelineInfo("WanTransformer3DModel", "video",
                                lambda v, t: math.lcm(16, v.get("scale_factor_spatial", 8) * _patch(t)),
                                frame_factor=lambda v: v.get("scale_factor_temporal", 4), fps=16),
    "HunyuanVideoPipeline": PipelineInfo("HunyuanVideoTransformer3DModel", "video",
                                         lambda v, t: math.lcm(16, v.get("spatial_compression_ratio", 8) * _patch(t)),
                                         guidance="true_cfg_scale",
                                         frame_factor=lambda v: v.get("temporal_compression_ratio", 4), fps=15),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def supported_pipelines() -> list[str]:
    return sorted(name for name, info in PIPELINES.items() if info.transformer in PLANS)


def _component_config(model: str, component: str) -> Config:
    if os.path.isdir(os.path.expanduser(model)):
        path = os.path.join(os.path.expanduser(model), component, "config.json")
        if not os.path.isfile(path):
            raise ValueError(f"--model {model!r} has no {component}/config.json")
        with open(path) as f:
            return json.load(f)
    return hub_config(model, component)


def model_index(model: str) -> Config:
    """``model_index.json`` of a local pipeline folder or a hub id; raises with a message naming
    ``--model`` when it is neither."""
    if os.path.isdir(os.path.expanduser(model)):
        index = os.path.join(os.path.expanduser(model), "model_index.json")
        if not os.path.isfile(index):
            raise ValueError(f"--model {model!r} is a folder without model_index.json (not a diffusers pipeline)")
        with open(index) as f:
            return json.load(f)
    if looks_like_path(model):
        raise ValueError(f"--model {model!r}: no such folder")
    if not HUB_ID.match(model):
        raise ValueError(f"--model {model!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}), a pipeline "
                         "folder, or a hub id (organisation/name)")
    return hub_config(model)


def pipeline_class(index: Config) -> str:
    """The pipeline class a ``model_index.json`` names; raises naming the supported classes."""
    name = index.get("_class_name")
    if name not in supported_pipelines():
        raise ValueError(f"unsupported pipeline class {name!r}; supported: {', '.join(supported_pipelines())}")
    return name


def output_kind(class_name: str) -> str:
    return PIPELINES[class_name].output


def load(model: str, dtype: str, trust_remote_code: bool = False):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(os.path.expanduser(model), dtype=DTYPES[dtype], use_safetensors=True,
                                             trust_remote_code=trust_remote_code)


# Command-line option -> the pipeline argument it sets (the first one the pipeline takes).
CALL_ARGUMENTS = {
    "negative_prompt": ("negative_prompt",), "height": ("height",), "width": ("width",),
    "num_frames": ("num_frames", "video_length"), "steps": ("num_inference_steps",),
    "guidance_scale": ("guidance_scale",), "true_cfg_scale": ("true_cfg_scale",),
    "guidance_scale_2": ("guidance_scale_2",), "num_images": ("num_images_per_prompt", "num_videos_per_prompt"),
    "max_sequence_length": ("max_sequence_length",),
}
# Set by swiftfusion itself for every call: not settable with --pipeline-arg.
OWN_ARGUMENTS = ("prompt", "generator", "output_type", "return_dict", "callback_on_step_end", "callback",
                 "callback_steps", "callback_on_step_end_tensor_inputs")


def call_signature(class_name: str) -> inspect.Signature:
    import diffusers
    from transformers.utils import logging

    # Importing a pipeline class imports its processors; transformers warns then about optional
    # backends. Rank 0 says it again when it loads the pipeline: once is enough.
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        pipeline = getattr(diffusers, class_name)
    finally:
        logging.set_verbosity(verbosity)
    return inspect.signature(pipeline.__call__)


def call_arguments(class_name: str, options: dict, flag: Callable[[str], str]) -> dict:
    """Command-line ``options`` (unset ones are None) as keyword arguments of the pipeline's
    ``__call__``; raises naming an option the pipeline does not take (``flag(option)``: as typed)."""
    accepted = call_signature(class_name).parameters
    arguments = {}
    for option, value in options.items():
        if value is None:
            continue
        names = [name for name in CALL_ARGUMENTS[option] if name in accepted]
        if not names:
            raise ValueError(f"{flag(option)} is not an option of {class_name}")
        arguments[names[0]] = value
    return arguments


def default_of(class_name: str, argument: str):
    """The default of one of the pipeline's call arguments (None where it has none)."""
    parameter = call_signature(class_name).parameters.get(argument)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def takes(class_name: str, argument: str) -> bool:
    return argument in call_signature(class_name).parameters


@dataclass(frozen=True)
class RunShape:
    """What one run asks of the pipeline, as far as the checks below need it."""

    # (height, width, where) of each request: None for the default size; ``where`` names the row of
    # a prompts file that set the size, or is None for --height/--width.
    sizes: list[tuple[int | None, int | None, str | None]]
    num_frames: int | None
    negative_prompt: bool  # any request has one
    cfg_degree: int


def check_run(model: str, class_name: str, index: Config, call: dict, run: RunShape,
              flag: Callable[[str], str]) -> None:
    """Rejects what the pipeline would reject, change silently, or ignore, before any work.
    ``call``: the pipeline arguments set; ``flag(argument)``: the CLI flag that sets it."""
    info = PIPELINES[class_name]
    vae, transformer = _component_config(model, "vae"), _component_config(model, "transformer")
    multiple = info.size_multiple(vae, transformer)
    binning = call.get("use_resolution_binning", default_of(class_name, "use_resolution_binning"))
    any_size = binning and info.binning_sample_sizes is not None  # PixArt bins, then resizes back
    for height, width, where in run.sizes:
        for name, value in (("height", height), ("width", width)):
            if value is not None and value % multiple and not any_size:
                lower, upper = value // multiple * multiple, (value // multiple + 1) * multiple
                near = f"{lower} or {upper}" if lower else str(upper)
                what = f"{where}: {name}" if where else flag(name)
                raise ValueError(f"{what} {value} is not a multiple of {multiple}, which {class_name} needs "
                                 f"for this model (VAE and patch size); nearest: {near}")
        if binning and info.binning_shapes is not None:
            default = transformer["sample_size"] * _vae_factor(vae)
            shape = (height or default, width or default)
            if shape not in info.binning_shapes():
                raise ValueError(
                    f"{class_name}'s resolution binning would make {shape[0]}x{shape[1]} (height x width) another "
                    f"size; choose one of {', '.join(f'{h}x{w}' for h, w in info.binning_shapes())}, or pass "
                    "--pipeline-arg use_resolution_binning=false")
    sample_size = transformer.get("sample_size")
    if binning and info.binning_sample_sizes is not None and sample_size not in info.binning_sample_sizes:
        raise ValueError(
            f"{class_name}'s resolution binning (on by default) needs a transformer sample_size of "
            f"{', '.join(map(str, info.binning_sample_sizes))}; this model's is {transformer['sample_size']}: pass "
            "--pipeline-arg use_resolution_binning=false")
    tokens = call.get("max_sequence_length")
    if info.max_text_tokens is not None and tokens is not None and tokens > info.max_text_tokens:
        raise ValueError(f"{flag('max_sequence_length')} {tokens}: {class_name} takes at most {info.max_text_tokens}")
    counts = info.frame_counts(transformer) if info.frame_counts is not None else None
    if counts is not None and run.num_frames is not None and run.num_frames not in counts:
        raise ValueError(f"{flag('num_frames')} {run.num_frames}: this {class_name}'s transformer takes "
                         f"{' or '.join(map(str, counts))} frames")
    if info.frame_factor is not None and run.num_frames is not None and (run.num_frames - 1) % info.frame_factor(vae):
        factor = info.frame_factor(vae)
        lower = (run.num_frames - 1) // factor * factor + 1
        raise ValueError(f"{flag('num_frames')} {run.num_frames}: {class_name} takes {factor} × k + 1 frames for this "
                         f"VAE; nearest: {lower} or {lower + factor}")
    _check_guidance(class_name, info, index, transformer, call, run, flag)


def _check_guidance(class_name: str, info: PipelineInfo, index: Config, transformer: Config, call: dict,
                    run: RunShape, flag: Callable[[str], str]) -> None:
    scale = call.get(info.guidance, default_of(class_name, info.guidance))
    if info.guidance == "true_cfg_scale":
        active = scale is not None and scale > 1 and run.negative_prompt
        if "true_cfg_scale" in call and scale > 1 and not run.negative_prompt:
            raise ValueError(f"{flag('true_cfg_scale')} {scale} has no effect on {class_name} without "
                             f"{flag('negative_prompt')}")
        scale_needed = f"{flag('true_cfg_scale')} > 1 (it is {scale})"
        needs = f"{scale_needed} and {flag('negative_prompt')}"
    else:
        active = scale is not None and scale > 1
        needs = scale_needed = f"{flag('guidance_scale')} > 1 (it is {scale})"
    if run.negative_prompt and not active:
        raise ValueError(f"{flag('negative_prompt')} has no effect on {class_name} unless {scale_needed}")
    if run.cfg_degree == 2 and not active:
        raise ValueError(f"{flag('cfg_degree')} 2 runs the two guidance branches on two ranks, but {class_name} runs "
                         f"one branch here: classifier-free guidance needs {needs}")
    if "guidance_scale_2" in call:
        if index.get("boundary_ratio") is None:
            raise ValueError(f"{flag('guidance_scale_2')} is for two-expert (Wan 2.2) pipelines; this {class_name} "
                             "has no boundary_ratio")
        if not active:
            raise ValueError(f"{flag('guidance_scale_2')} has no effect unless {needs}")
    # Flux and QwenImage take guidance_scale as an embedding, only where the model has one.
    if info.guidance == "true_cfg_scale" and "guidance_embeds" in transformer:
        if "guidance_scale" in call and not transformer["guidance_embeds"]:
            raise ValueError(f"{flag('guidance_scale')} has no effect on this {class_name}: its transformer is not "
                             "guidance-distilled (guidance_embeds is false)")
        if class_name == "QwenImagePipeline" and transformer["guidance_embeds"] and "guidance_scale" not in call:
            raise ValueError(f"this guidance-distilled {class_name} needs {flag('guidance_scale')}")
