"""Writing images: PNG grids and one-file-per-image folders, always atomically (a temporary file
in the same folder, then a rename), so a failed run never leaves a half-written file behind."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

GRID_PADDING = 2


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] floats in [0, 1] -> [N, H, W, C] uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor) -> Image.Image:
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * (h + GRID_PADDING) + GRID_PADDING, cols * (w + GRID_PADDING) + GRID_PADDING, c), np.uint8)
    for i in range(n):
        top = GRID_PADDING + (i // cols) * (h + GRID_PADDING)
        left = GRID_PADDING + (i % cols) * (w + GRID_PADDING)
        canvas[top : top + h, left : left + w] = pixels[i]
    return Image.fromarray(canvas.squeeze(-1) if c == 1 else canvas)


def write_png_atomically(image: Image.Image, path: str | os.PathLike) -> None:
    _write_atomically(path, lambda f: image.save(f, format="PNG"))


def _write_atomically(path: str | os.PathLike, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def channels_first(images: np.ndarray) -> torch.Tensor:
    """diffusers' ``output_type="np"`` images ``[N, H, W, C]`` -> ``[N, C, H, W]`` tensors."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


GIF_FRAME_MS = 125


def save_video_grid(videos: torch.Tensor, path: str | os.PathLike) -> None:
    """``[N, F, C, H, W]`` floats in [0, 1] -> one animated GIF, the N videos side by side."""
    frames = [grid(videos[:, f]) for f in range(videos.shape[1])]
    _write_atomically(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                     duration=GIF_FRAME_MS, loop=0))


def save_grid(images: torch.Tensor, path: str | os.PathLike) -> None:
    write_png_atomically(grid(images), path)


def save_each(images: torch.Tensor, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    folder.mkdir(parents=False, exist_ok=True)
    for i, pixels in enumerate(to_uint8(images)):
        write_png_atomically(Image.fromarray(pixels.squeeze(-1)), folder / f"{i:03d}.png")


def save_each_video(videos: torch.Tensor, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    folder.mkdir(parents=False, exist_ok=True)
    for i, video in enumerate(videos):
        save_video_grid(video[None], folder / f"{i:03d}.gif")
