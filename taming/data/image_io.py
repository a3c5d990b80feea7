"""Decode any image file into an 8-bit RGB ``PIL.Image`` — or ``None`` when it cannot be read.

Why PIL: ``torchvision.io`` decoders are unavailable on the CPU builds this project supports
(see ENVIRONMENT.md), and PIL covers every format an ImageNet-style folder holds.

Why ``None`` instead of an exception: one corrupt file among a million must not stop a multi-day
run. Callers (``taming.data.base.ImagePaths``) turn ``None`` into a skipped sample that is counted
and reported at the end of the epoch.

Mode handling (every mode ends as 8-bit RGB):
- ``RGB``: unchanged. ``L``, ``1``, ``CMYK``, ``YCbCr``, ``HSV``: PIL's own conversion.
- Anything with alpha (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``transparency`` entry):
  composited over a **white** background. Dropping alpha instead would expose whatever colour the
  encoder left in fully transparent pixels (often black or garbage); white is what a viewer shows.
- 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): values 0..65535 rescaled to 0..255
  (``round(v / 257)``), so a full-range gradient stays a gradient instead of saturating.
- 32-bit integer ``I``: values already within 0..255 are kept; values within 0..65535 are treated
  as 16-bit (how PIL used to load 16-bit PNGs); anything else is min-max rescaled to 0..255.
- Float ``F``: values within [0, 1] are scaled by 255; otherwise clipped to 0..255. NaN → 0.
- Multi-frame files (GIF, TIFF): the first frame. EXIF orientation is **not** applied, matching
  the standard ImageNet pipelines that reference statistics (FID) were computed with.

Truncated files must fail: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left False and the image is fully
decoded (``.load()``) here, not lazily later inside a transform.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["load_rgb", "to_rgb"]

# Exceptions PIL raises on unreadable, truncated or corrupt input. UnidentifiedImageError and
# FileNotFoundError are OSErrors; the others come from individual codecs on malformed data.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
    zlib.error,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_WHITE = (255, 255, 255)


def load_rgb(path: str | os.PathLike[str]) -> Image.Image | None:
    """Fully decode ``path`` and return it as 8-bit RGB, or ``None`` if it cannot be read."""
    # Keep the project-wide guarantee even if a third-party import flipped the global switch.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except _DECODE_ERRORS:
        return None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES:
        grey = np.round(np.asarray(img).astype(np.float64) / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "I":
        return Image.fromarray(_int32_grey_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_grey_to_uint8(np.asarray(img)), mode="L").convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _int32_grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """32-bit integer grey → uint8: 8-bit range kept, 16-bit range rescaled, else min-max."""
    values = values.astype(np.int64)
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return np.round(values / 257.0).astype(np.uint8)
    span = max(hi - lo, 1)
    return np.round((values - lo) * (255.0 / span)).astype(np.uint8)


def _float_grey_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.round(np.clip(values, 0.0, 255.0)).astype(np.uint8)
