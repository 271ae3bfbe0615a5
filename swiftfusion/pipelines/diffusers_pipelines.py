"""Loading and running diffusers pipelines by folder or hub id, for ``swiftfusion generate --model``.

Which pipelines are supported follows from the transformer plans: a pipeline class is supported
when its transformer class has a plan (``models.plan.PLANS``). The pipeline class is read from
``model_index.json`` before any weights are loaded, so an unsupported one fails at once.
"""

from __future__ import annotations

import inspect
import json
import os
import re

import torch

from ..models import BUILTIN_MODELS
from ..models.plan import PLANS

# Pipeline class -> (its transformer class, what it makes).
PIPELINES = {
    "FluxPipeline": ("FluxTransformer2DModel", "image"),
    "StableDiffusion3Pipeline": ("SD3Transformer2DModel", "image"),
    "PixArtAlphaPipeline": ("PixArtTransformer2DModel", "image"),
    "PixArtSigmaPipeline": ("PixArtTransformer2DModel", "image"),
    "HunyuanDiTPipeline": ("HunyuanDiT2DModel", "image"),
    "QwenImagePipeline": ("QwenImageTransformer2DModel", "image"),
    "CogVideoXPipeline": ("CogVideoXTransformer3DModel", "video"),
    "LattePipeline": ("LatteTransformer3DModel", "video"),
    "WanPipeline": ("WanTransformer3DModel", "video"),
    "HunyuanVideoPipeline": ("HunyuanVideoTransformer3DModel", "video"),
}
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def supported_pipelines() -> list[str]:
    return sorted(name for name, (transformer, _) in PIPELINES.items() if transformer in PLANS)


def pipeline_class(model: str) -> str:
    """The pipeline class named by ``model_index.json`` of a local folder or a hub id; raises
    naming the supported classes when it is not one of them."""
    if os.path.isdir(model):
        index = os.path.join(model, "model_index.json")
        if not os.path.isfile(index):
            raise ValueError(f"--model {model!r} is a folder without model_index.json (not a diffusers pipeline)")
        with open(index) as f:
            name = json.load(f).get("_class_name")
    elif not HUB_ID.match(model):
        raise ValueError(f"--model {model!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}), a pipeline "
                         "folder, or a hub id (organisation/name)")
    else:
        from diffusers import DiffusionPipeline

        try:
            name = DiffusionPipeline.load_config(model).get("_class_name")
        except Exception as error:  # noqa: BLE001 - any failure to find it means the same to the user
            raise ValueError(f"--model {model!r}: no pipeline folder of that name, and the hub has none it can "
                             f"reach ({type(error).__name__})") from None
    if name not in supported_pipelines():
        raise ValueError(f"unsupported pipeline class {name!r}; supported: {', '.join(supported_pipelines())}")
    return name


def output_kind(class_name: str) -> str:
    return PIPELINES[class_name][1]


def load(model: str, dtype: str, trust_remote_code: bool = False):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(model, torch_dtype=DTYPES[dtype], use_safetensors=True,
                                             trust_remote_code=trust_remote_code)


# Command-line option -> the pipeline argument it sets (the first one the pipeline takes).
CALL_ARGUMENTS = {
    "prompt": ("prompt",), "negative_prompt": ("negative_prompt",), "height": ("height",), "width": ("width",),
    "num_frames": ("num_frames",), "steps": ("num_inference_steps",), "guidance_scale": ("guidance_scale",),
    "num_images": ("num_images_per_prompt", "num_videos_per_prompt"),
    "max_sequence_length": ("max_sequence_length",),
}


def call_arguments(class_name: str, options: dict) -> dict:
    """Command-line ``options`` (unset ones are None) as keyword arguments of the pipeline's
    ``__call__``; raises naming an option the pipeline does not take."""
    import diffusers

    accepted = inspect.signature(getattr(diffusers, class_name).__call__).parameters
    arguments = {}
    for option, value in options.items():
        if value is None:
            continue
        names = [name for name in CALL_ARGUMENTS[option] if name in accepted]
        if not names:
            raise ValueError(f"--{option.replace('_', '-')} is not an option of {class_name}")
        arguments[names[0]] = value
    return arguments
