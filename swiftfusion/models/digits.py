"""The built-in model ``builtin:digits``: a class-conditional DiT that draws 32×32 digits.

It is a stock diffusers ``DiTTransformer2DModel`` (so the same parallel plan machinery serves it
as any diffusers DiT), trained with rectified flow (predicting the clean image) on scikit-learn's
bundled ``load_digits`` images (8×8, upscaled to 32×32 so that patch size 2 gives a 256-token
sequence). The "prompt" is the
digit 0–9; class ``NULL_CLASS`` is the unconditional label used for classifier-free guidance.
Training: ``python tools/train_digits.py``; weights ship in ``models/weights/digits``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS_DIR = Path(__file__).parent / "weights" / "digits"
IMAGE_SIZE = 32
NUM_CLASSES = 10
NULL_CLASS = NUM_CLASSES  # the label-dropout class of diffusers' LabelEmbedding
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 3.0
MIN_SIGMA_FOR_VELOCITY = 0.05  # training clamps sigma here when turning predicted x0 into velocity

TRANSFORMER_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=16,
    in_channels=1,
    out_channels=1,
    num_layers=4,
    sample_size=IMAGE_SIZE,
    patch_size=2,
    num_embeds_ada_norm=NUM_CLASSES,
    norm_type="ada_norm_zero",
)


def build_transformer():
    """A freshly initialised transformer with the built-in architecture (used by training)."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(**TRANSFORMER_CONFIG)


def load_transformer(path: str | Path = WEIGHTS_DIR):
    """Loads the shipped weights through diffusers' own ``from_pretrained`` (safetensors only)."""
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel.from_pretrained(str(path), use_safetensors=True, low_cpu_mem_usage=False)
    return model.eval()


def digit_images() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits as (N, 1, 32, 32) floats in [-1, 1], and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    small = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]
    big = F.interpolate(small, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return big * 2.0 - 1.0, torch.from_numpy(data.target.astype(np.int64))


def to_classifier_features(images: torch.Tensor) -> np.ndarray:
    """(N, 1, 32, 32) images in [0, 1] (pipeline output) -> (N, 64) on load_digits' 0..16 scale."""
    small = F.avg_pool2d(images.float().clamp(0, 1), kernel_size=IMAGE_SIZE // 8)
    return (small * 16.0).reshape(images.shape[0], -1).numpy()


def train_digit_classifier(train_indices: np.ndarray | None = None):
    """A logistic-regression classifier on load_digits' 8×8 images (the quality judge)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    index = slice(None) if train_indices is None else train_indices
    classifier = LogisticRegression(max_iter=5000)
    classifier.fit(data.data[index], data.target[index])
    return classifier


def digit_accuracy(classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` (pipeline output, [0, 1]) that ``classifier`` labels as ``labels``."""
    return float((classifier.predict(to_classifier_features(images)) == labels.numpy()).mean())


def velocity_from_prediction(latents: torch.Tensor, predicted_x0: torch.Tensor, sigma: float) -> torch.Tensor:
    """The model predicts the clean image; the flow's velocity is (x_t - x0) / sigma."""
    return (latents - predicted_x0) / max(float(sigma), MIN_SIGMA_FOR_VELOCITY)


def sampling_sigmas(steps: int) -> torch.Tensor:
    """Rectified-flow time grid from pure noise (1) to data (0): ``steps + 1`` points."""
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).float()


def timestep_input(sigma: torch.Tensor | float, batch: int) -> torch.Tensor:
    """The model's timestep input: sigma scaled to the 0..1000 range the embedding expects."""
    return torch.full((batch,), float(sigma) * 1000.0)
