"""Writing what a run made: PNG images (one, or several as a grid), animated GIF or MP4 videos, and
their metadata (PNG text chunks and a JSON sidecar).

Every file is written atomically (a temporary file in the same folder, then a rename), so a failed
or interrupted run never leaves a half-written file behind, and with the permissions the user's
umask gives a new file (``mkstemp`` alone would leave them 0600).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, PngImagePlugin

GRID_PADDING = 2


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] floats in [0, 1] -> [N, H, W, C] uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _pil(pixels: np.ndarray) -> Image.Image:
    """[H, W, C] uint8 -> an L or RGB image."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def grid(images: torch.Tensor) -> Image.Image:
    """The images side by side in a near-square grid with thin gaps; one image is just itself."""
    pixels = to_uint8(images)
    n, h, w, c = pixels.shape
    if n == 1:
        return _pil(pixels[0])
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * (h + GRID_PADDING) + GRID_PADDING, cols * (w + GRID_PADDING) + GRID_PADDING, c), np.uint8)
    for i in range(n):
        top = GRID_PADDING + (i // cols) * (h + GRID_PADDING)
        left = GRID_PADDING + (i % cols) * (w + GRID_PADDING)
        canvas[top : top + h, left : left + w] = pixels[i]
    return _pil(canvas)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(temporary_path)`` fills a temporary file beside ``path``, which then replaces it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # as open() would have created it
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_bytes(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(f)

    write_atomically(path, fill)


def write_png(image: Image.Image, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """A PNG; ``metadata`` goes into text chunks (one per key, values JSON where not strings)."""
    info = None
    if metadata is not None:
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    _write_bytes(path, lambda f: image.save(f, format="PNG", pnginfo=info))


def write_json(data, path: str | os.PathLike) -> None:
    _write_bytes(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode()))


def video_encoder_available() -> bool:
    """MP4 needs ffmpeg from the ``imageio-ffmpeg`` package (``pip install swiftfusion[video]``)."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
        return True
    except (ImportError, RuntimeError):
        return False


def write_video(frames: list[Image.Image], path: str | os.PathLike, fps: float) -> None:
    """An animated GIF or an H.264 MP4, by the suffix of ``path``."""
    if Path(path).suffix.lower() == ".gif":
        duration = round(1000 / fps)
        _write_bytes(path, lambda f: frames[0].save(f, format="GIF", save_all=True, append_images=frames[1:],
                                                    duration=duration, loop=0))
        return
    import imageio_ffmpeg

    def encode(tmp: str) -> None:
        rgb = [np.asarray(frame.convert("RGB")) for frame in frames]
        height, width = rgb[0].shape[:2]
        # macro_block_size=2: H.264 with yuv420p needs even sides; other sizes are left alone.
        writer = imageio_ffmpeg.write_frames(tmp, (width, height), fps=fps, macro_block_size=2,
                                             ffmpeg_log_level="error")
        writer.send(None)
        for frame in rgb:
            writer.send(np.ascontiguousarray(frame))
        writer.close()

    write_atomically(path, encode)


def video_frames(videos: torch.Tensor) -> list[Image.Image]:
    """``[N, F, C, H, W]`` floats in [0, 1] -> F frames, the N videos side by side in each."""
    return [grid(videos[:, f]) for f in range(videos.shape[1])]
