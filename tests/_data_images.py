"""Small image files of every awkward kind, written into a temp folder (shared by data tests)."""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


def _rgb(size: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], axis=-1)
    return np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)


def write_good_images(folder: str) -> dict[str, str]:
    """Readable files of many modes; returns name -> path."""
    os.makedirs(folder, exist_ok=True)
    paths = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        path = os.path.join(folder, name)
        img.save(path, **kw)
        paths[name] = path

    save("rgb.jpg", Image.fromarray(_rgb(48, 1)), quality=90)
    save("cmyk.jpg", Image.fromarray(_rgb(40, 2)).convert("CMYK"))
    rgba = np.concatenate([_rgb(36, 3), np.full((36, 36, 1), 128, np.uint8)], axis=-1)
    rgba[:10, :10, 3] = 0
    save("rgba.png", Image.fromarray(rgba, mode="RGBA"))
    gradient = np.tile(np.linspace(0, 65535, 50).astype(np.uint16), (30, 1))
    save("grey16.png", Image.fromarray(gradient))  # mode I;16
    save("palette.png", Image.fromarray(_rgb(32, 4)).convert("P", palette=Image.Palette.ADAPTIVE))
    save("grey.jpg", Image.fromarray(_rgb(44, 5)).convert("L"))
    save("tiny.png", Image.fromarray(_rgb(3, 6)))
    return paths


def write_bad_images(folder: str) -> dict[str, str]:
    """A corrupt JPEG (random bytes) and a truncated PNG (a valid PNG cut in half)."""
    os.makedirs(folder, exist_ok=True)
    corrupt = os.path.join(folder, "corrupt.jpg")
    with open(corrupt, "wb") as f:
        f.write(np.random.default_rng(7).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    Image.fromarray(_rgb(48, 8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    truncated = os.path.join(folder, "truncated.png")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    return {"corrupt.jpg": corrupt, "truncated.png": truncated}


def write_jpeg(path: str, size: int = 24, seed: int = 0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(_rgb(size, seed)).save(path, format="JPEG", quality=90)
