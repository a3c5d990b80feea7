"""Pictures for people: image grids written as PNG (demo, reconstructions, samples)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from mergevq.fileio import atomic_write


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats in [-1, 1] -> (N, H, W, 3) uint8 (one device->host copy for the batch)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(pixels, "n c h w -> n h w c").cpu().numpy()


def grid(images: np.ndarray, *, ncol: int, pad: int = 2, scale: int = 1, fill: int = 255) -> np.ndarray:
    """Tile (N, H, W, 3) uint8 images row by row into one (rows*(H+pad)+pad, ..., 3) image.

    Missing cells at the end are left as ``fill``; ``scale`` enlarges each image by pixel repetition
    so tiny demo crops stay visible without interpolation blur."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"grid expects (N, H, W, 3) uint8 images, got shape {tuple(images.shape)}")
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = images.shape
    rows = max(1, -(-n // ncol))
    out = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, 3), fill, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out


def save_png(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 image atomically (temp file + rename), creating the folder."""
    with atomic_write(path) as handle:
        Image.fromarray(image).save(handle, format="PNG")
    return Path(path)
