"""The pipeline of the built-in model: class-conditional rectified-flow sampling with Euler steps
and classifier-free guidance. Single-process by default; ``swiftfusion.parallelize`` splits it."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..models import digits
from ..runtime import default_device
from .split import GenerationSplit


@dataclass
class DigitsOutput:
    images: torch.Tensor  # [N, 1, 32, 32] float in [0, 1], prompts in order, images per prompt inner
    labels: torch.Tensor  # [N] the requested digit of each image


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_generation_args(prompts: Sequence[int], num_images_per_prompt: int, num_inference_steps: int,
                          guidance_scale: float, cfg_degree: int = 1) -> None:
    """Raises ``ValueError`` naming the bad value and the allowed ones."""
    for p in prompts:
        if not _is_int(p) or not 0 <= p < digits.NUM_CLASSES:
            raise ValueError(f"digit must be an integer from 0 to 9, got {p!r}")
    if not _is_int(num_images_per_prompt) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
    if not _is_int(num_inference_steps) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    if not isinstance(guidance_scale, (int, float)) or not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if cfg_degree == 2 and guidance_scale <= 1:
        raise ValueError(
            f"cfg_degree 2 runs the guidance branches on two ranks, but guidance_scale={guidance_scale} turns "
            "guidance off (it must be > 1); use cfg_degree 1 or a larger guidance_scale"
        )


def initial_noise(seed: int | Sequence[int], n: int) -> torch.Tensor:
    """The starting noise of ``n`` images, each from its own generator: image ``i`` seeded with
    ``seed + i``, or with ``seed[i]`` given a list of ``n`` seeds (as ``swiftfusion generate``
    seeds them), so an image depends on its seed only, not on its batch. Every rank draws the
    noise of the whole batch, so any split reproduces one process."""
    shape = (1, digits.IMAGE_SIZE, digits.IMAGE_SIZE)
    seeds = [seed + i for i in range(n)] if _is_int(seed) else list(seed)
    if len(seeds) != n or not all(_is_int(s) for s in seeds):
        raise ValueError(f"seed must be an integer or a list of {n} integers (one per image), got {seed!r}")
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


class DigitsPipeline:
    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.split = GenerationSplit()

    @classmethod
    def from_pretrained(cls, path: str | Path = digits.WEIGHTS_DIR) -> DigitsPipeline:
        return cls(digits.load_transformer(path).to(default_device()))

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @torch.no_grad()
    def __call__(
        self,
        digit: int | Sequence[int],
        num_images_per_prompt: int = 1,
        num_inference_steps: int = digits.DEFAULT_STEPS,
        guidance_scale: float = digits.DEFAULT_GUIDANCE_SCALE,
        seed: int | Sequence[int] = 0,
        show_progress: bool = True,
        callback_on_step_end: Callable[[int], None] | None = None,
    ) -> DigitsOutput:
        """Images of the digits ``digit`` (one or a list), ``num_images_per_prompt`` each, in order;
        image ``i`` starts from the noise of ``seed + i`` (or ``seed[i]``: a list of one seed per
        image). ``callback_on_step_end(step)`` is called after each denoising step."""
        if self.split.mesh is not None:  # first, before any check or collective that could differ per rank
            from .agreement import check_same_call

            check_same_call(locals())  # at the top, locals() holds exactly the call's arguments
        prompts = [digit] if isinstance(digit, int) else list(digit)
        check_generation_args(prompts, num_images_per_prompt, num_inference_steps, guidance_scale,
                              self.split.cfg_size)
        labels = torch.tensor(prompts).repeat_interleave(num_images_per_prompt)
        n = labels.shape[0]
        noise = initial_noise(seed, n)
        mine = self.split.local_indices(n)
        x = noise[mine].to(self.device)
        cond = labels[mine].to(self.device)
        uncond = torch.full_like(cond, digits.NULL_CLASS)
        sigmas = digits.sampling_sigmas(num_inference_steps)

        for i in tqdm(range(num_inference_steps), disable=not show_progress, desc="denoising"):
            predict = functools.partial(self._velocity, sigma=float(sigmas[i]))
            velocity = self.split.guided(predict, x, cond, uncond, guidance_scale)
            x = x + (sigmas[i + 1] - sigmas[i]) * velocity
            if callback_on_step_end is not None:
                callback_on_step_end(i)
        images = self.split.gather_batch(x, n).cpu()
        return DigitsOutput(images=((images.clamp(-1, 1) + 1) / 2), labels=labels)

    def _velocity(self, latents: torch.Tensor, classes: torch.Tensor, sigma: float) -> torch.Tensor:
        timestep = digits.timestep_input(sigma, latents.shape[0]).to(self.device)
        predicted_x0 = self.transformer(latents, timestep, classes).sample
        return digits.velocity_from_prediction(latents, predicted_x0, sigma)
