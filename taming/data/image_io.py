"""Decode any image file into an 8-bit RGB ``PIL.Image`` — or say why it cannot be used.

Why PIL: ``torchvision.io`` decoders are unavailable on the CPU builds this project supports
(see ENVIRONMENT.md), and PIL covers every format an ImageNet-style folder holds.

Why a failure value instead of an exception: one corrupt file among a million must not stop a
multi-day run. ``decode_rgb`` returns a ``DecodeFailure`` (reason ``unreadable`` or ``oversize``
plus a short detail); callers (``taming.data.base.ImagePaths``) turn it into a skipped sample that
is counted and reported, with its reason, at the end of the epoch. ``load_rgb`` is the simple form
(image or ``None``).

Bounded memory per image: a file whose header declares more than ``max_pixels`` pixels (default
``DEFAULT_MAX_PIXELS`` = 40 Mpx; ``None`` = Pillow's ``Image.MAX_IMAGE_PIXELS``, 89.5 Mpx) is
rejected before a single pixel is decoded (PIL opens lazily: the size is known before ``load()``).
A header that lies (e.g. an ICO whose directory says 16x16 but embeds a huge PNG) is caught by
Pillow's own decompression-bomb check, whose warning is turned into the same ``oversize`` failure
(no warning is printed), and by a second size check after decoding. Pillow's hard limit
(2 x ``Image.MAX_IMAGE_PIXELS``, 179 Mpx) always applies. No conversion below makes a full-size
float64 copy: integer arithmetic, or float64 on blocks of rows.

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
import re
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "OVERSIZE",
    "SKIP_REASONS",
    "UNREADABLE",
    "DecodeFailure",
    "decode_rgb",
    "effective_pixel_limit",
    "format_megapixels",
    "load_rgb",
    "to_rgb",
]

DEFAULT_MAX_PIXELS = 40_000_000
"""Default pixel limit: 40 Mpx (e.g. 8000x5000), far above any training image, well below
Pillow's 179 Mpx hard limit; a 16-bit image this size peaks at a few hundred MB to decode."""

UNREADABLE = "unreadable"
OVERSIZE = "oversize"
SKIP_REASONS = (UNREADABLE, OVERSIZE)
"""Why a file is skipped, in the order reports list them."""

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
)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_WHITE = (255, 255, 255)
_BLOCK_PIXELS = 1 << 20  # row blocks of ~1 Mpx keep float64 temporaries at ~8 MB


@dataclass(frozen=True)
class DecodeFailure:
    """Why ``decode_rgb`` returned no image: ``reason`` is one of ``SKIP_REASONS``; ``detail`` is
    a short explanation for reports (e.g. ``"13300x13300 px, over the 40 Mpx limit"``) or ``""``."""

    reason: str
    detail: str = ""


def load_rgb(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image | None:
    """Fully decode ``path`` and return it as 8-bit RGB, or ``None`` if it cannot be used."""
    result = decode_rgb(path, max_pixels=max_pixels)
    return None if isinstance(result, DecodeFailure) else result


def decode_rgb(
    path: str | os.PathLike[str], *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image | DecodeFailure:
    """Fully decode ``path`` as 8-bit RGB, or say why not (unreadable, or over the pixel limit)."""
    # Keep the project-wide guarantee even if a third-party import flipped the global switch.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    limit = effective_pixel_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(_bomb_warning_action(limit), Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return _checked_load(img, limit)
    except _BOMB_ERRORS as e:
        return DecodeFailure(reason=OVERSIZE, detail=_pillow_bomb_detail(e, limit))
    except _DECODE_ERRORS:
        return DecodeFailure(reason=UNREADABLE)


def effective_pixel_limit(max_pixels: int | None) -> int | None:
    """``max_pixels``, or Pillow's ``Image.MAX_IMAGE_PIXELS`` for None (None there: no limit)."""
    return max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS


def format_megapixels(pixels: int) -> str:
    """``40000000`` → ``"40 Mpx"``, ``89478485`` → ``"89.5 Mpx"``; small counts stay exact."""
    if pixels < 100_000:
        return f"{pixels} px"
    return f"{pixels / 1e6:.1f}".removesuffix(".0") + " Mpx"


def _bomb_warning_action(limit: int | None) -> str:
    # Pillow warns above MAX_IMAGE_PIXELS. When our limit is at or below that, the warning can only
    # mean "over our limit" (typically a header that lied), so it aborts the decode as an error.
    # Above it, our own checks decide and the warning would only be noise.
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and limit is not None and limit <= pillow:
        return "error"
    return "ignore"


def _checked_load(img: Image.Image, limit: int | None) -> Image.Image | DecodeFailure:
    """Size check from the header, decode, size check again (the header may lie), convert."""
    failure = _size_failure(img.size, limit)
    if failure is not None:
        return failure
    img.load()
    failure = _size_failure(img.size, limit)
    if failure is not None:
        return failure
    return to_rgb(img)


def _size_failure(size: tuple[int, int], limit: int | None) -> DecodeFailure | None:
    width, height = size
    if limit is None or width * height <= limit:
        return None
    detail = f"{width}x{height} px, over the {format_megapixels(limit)} limit"
    return DecodeFailure(reason=OVERSIZE, detail=detail)


def _pillow_bomb_detail(error: BaseException, limit: int | None) -> str:
    """Pillow's check names the pixel count but not the sides; say which limit was crossed."""
    match = _PILLOW_PIXELS.search(str(error))
    if match is None:
        return "over Pillow's decompression-bomb limit"
    pixels = int(match.group(1))
    if limit is not None and pixels > limit:
        return f"{format_megapixels(pixels)}, over the {format_megapixels(limit)} limit"
    return f"{format_megapixels(pixels)}, over Pillow's decompression-bomb limit"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any PIL mode to 8-bit RGB (rules in the module docstring)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES:
        return _grey_to_rgb(_map_row_blocks(np.asarray(img), _sixteen_bit_to_uint8))
    if mode == "I":
        return _grey_to_rgb(_int32_grey_to_uint8(np.asarray(img)))
    if mode == "F":
        return _grey_to_rgb(_float_grey_to_uint8(np.asarray(img)))
    if _has_alpha(img):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # no needless full-size copy
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(grey, mode="L").convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def _row_blocks(height: int, width: int) -> Iterator[slice]:
    rows = max(1, _BLOCK_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield slice(top, min(top + rows, height))


def _map_row_blocks(values: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``fn`` applied to blocks of rows into one uint8 array: temporaries stay block-sized."""
    out = np.empty(values.shape, dtype=np.uint8)
    for rows in _row_blocks(*values.shape[:2]):
        out[rows] = fn(values[rows])
    return out


def _sixteen_bit_to_uint8(block: np.ndarray) -> np.ndarray:
    """round(v / 257) for v in 0..65535, in integers: v / 257 is never a tie (257 is odd)."""
    return ((block.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _int32_grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """32-bit integer grey → uint8: 8-bit range kept, 16-bit range rescaled, else min-max."""
    if values.size == 0:
        return values.astype(np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 255:
        return values.astype(np.uint8)
    if lo >= 0 and hi <= 65535:
        return _map_row_blocks(values, _sixteen_bit_to_uint8)
    scale = 255.0 / max(hi - lo, 1)
    # Same float64 formula as before (results unchanged), one block of rows at a time.
    return _map_row_blocks(
        values, lambda block: np.round((block.astype(np.int64) - lo) * scale).astype(np.uint8)
    )


def _float_grey_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float grey → uint8: [0, 1] scaled by 255, else clipped; NaN → 0, ±inf → 255 / 0."""
    lo, hi = _finite_range(values)
    factor = 255.0 if values.size and lo >= 0.0 and hi <= 1.0 else 1.0

    def convert(block: np.ndarray) -> np.ndarray:
        clean = _clean_floats(block) * factor
        return np.round(np.clip(clean, 0.0, 255.0)).astype(np.uint8)

    return _map_row_blocks(values, convert)


def _clean_floats(block: np.ndarray) -> np.ndarray:
    return np.nan_to_num(block.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    """min and max after NaN → 0, +inf → 255, -inf → 0 (what the scaling rule looks at)."""
    lo, hi = float("inf"), float("-inf")
    for rows in _row_blocks(*values.shape[:2]):
        clean = _clean_floats(values[rows])
        if clean.size:
            lo, hi = min(lo, float(clean.min())), max(hi, float(clean.max()))
    return lo, hi
