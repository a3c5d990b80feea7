"""Image transforms: PIL RGB image → float32 tensors, one view or the multi-view alignment sample.

Why written on PIL directly (not torchvision.transforms.v2): every crop is one ``Image.resize`` call
with a ``box`` (crop + resize in a single antialiased bicubic resample, no full-size intermediate),
and all randomness is drawn from torch with an optional ``torch.Generator``, so a seeded generator
makes a sample reproducible. Without a generator the global torch RNG is used, which the DataLoader
seeds differently in every worker.

Conventions:
- ``image`` (reconstruction view) and ``student_image`` (strong view for the tokenizer encoder) are
  in **[-1, 1]**: the tokenizer takes [-1, 1] inputs (DESIGN §4).
- ``teacher_image`` (weak view for the frozen DINOv2 teacher) is **ImageNet mean/std normalised**,
  the input distribution DINOv2 was trained on (DESIGN §4 step 7).
- Resizing the short side to the target size also *up*-scales small images (a 3x3 image works).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageTransform",
    "MultiView",
    "random_resized_crop_box",
    "short_side_crop_box",
    "to_minus_one_one",
    "to_imagenet_normalised",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_Box = tuple[float, float, float, float]  # (left, upper, right, lower) in source pixels


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(high_inclusive: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(0, high_inclusive + 1, (), generator=generator))


def _coin(generator: torch.Generator | None) -> bool:
    return bool(torch.rand((), generator=generator) < 0.5)


def short_side_crop_box(
    width: int, height: int, *, random: bool, generator: torch.Generator | None = None
) -> _Box:
    """The largest centred (or uniformly placed) square: "resize short side, then crop" as a box."""
    side = min(width, height)
    if random:
        left, top = _randint(width - side, generator), _randint(height - side, generator)
    else:
        left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def random_resized_crop_box(
    width: int,
    height: int,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> _Box:
    """Inception-style crop (area fraction in ``scale``, log-uniform aspect ratio in ``ratio``).

    Same sampling rule as torchvision's RandomResizedCrop: 10 attempts, then a centre crop
    clamped to the ratio range.
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left, top = _randint(width - w, generator), _randint(height - h, generator)
            return (left, top, left + w, top + h)
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    w, h = max(w, 1), max(h, 1)
    left, top = (width - w) // 2, (height - h) // 2
    return (left, top, left + w, top + h)


def _crop_resize(img: Image.Image, box: _Box, size: int, flip: bool) -> Image.Image:
    out = img.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out


def _to_unit(img: Image.Image) -> torch.Tensor:
    """(H, W, 3) uint8 RGB → (3, H, W) float32 in [0, 1]."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; decode with load_rgb()")
    array = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_minus_one_one(img: Image.Image) -> torch.Tensor:
    """RGB image → (3, H, W) float32 in [-1, 1] (the tokenizer's input range)."""
    return _to_unit(img).mul_(2.0).sub_(1.0)


def to_imagenet_normalised(img: Image.Image) -> torch.Tensor:
    """RGB image → (3, H, W) float32, (x/255 − mean) / std with ImageNet statistics."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return _to_unit(img).sub_(mean).div_(std)


class ImageTransform:
    """One view: resize short side to ``size``, centre (eval) or random (train) crop, optional flip.

    Returns a (3, size, size) float32 tensor in [-1, 1].
    """

    def __init__(self, *, size: int = 256, random_crop: bool = False, flip: bool = False) -> None:
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size = size
        self.random_crop = random_crop
        self.flip = flip

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        box = short_side_crop_box(*img.size, random=self.random_crop, generator=generator)
        flip = self.flip and _coin(generator)
        return to_minus_one_one(_crop_resize(img, box, self.size, flip))

    def __repr__(self) -> str:
        return (
            f"ImageTransform(size={self.size}, random_crop={self.random_crop}, flip={self.flip})"
        )


class MultiView:
    """The three views the tokenizer's training step needs (DESIGN §4 step 7).

    Returns a dict of float32 tensors:
    - ``image``: (3, size, size) in [-1, 1]; the reconstruction view (as ``ImageTransform``).
    - ``teacher_image``: (3, view_size, view_size), ImageNet-normalised; the *weak* view for the
      frozen teacher: resize short side to ``view_size`` + centre crop, never flipped.
    - ``student_image``: (3, view_size, view_size) in [-1, 1]; the *strong* view for the tokenizer
      encoder: RandomResizedCrop(view_size, scale=student_scale) + horizontal flip (p = 0.5).
    The teacher and student views are drawn independently of the reconstruction view.
    """

    def __init__(
        self,
        *,
        size: int = 256,
        random_crop: bool = True,
        flip: bool = True,
        view_size: int = 224,
        student_scale: tuple[float, float] = (0.08, 1.0),
    ) -> None:
        if view_size < 1:
            raise ValueError(f"view_size must be a positive number of pixels, got {view_size}")
        lo, hi = student_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"student_scale must satisfy 0 < lo <= hi <= 1, got {student_scale}")
        self.reconstruction = ImageTransform(size=size, random_crop=random_crop, flip=flip)
        self.view_size = view_size
        self.student_scale = (float(lo), float(hi))

    def __call__(
        self, img: Image.Image, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        image = self.reconstruction(img, generator)
        width, height = img.size
        teacher_box = short_side_crop_box(width, height, random=False)
        teacher = to_imagenet_normalised(_crop_resize(img, teacher_box, self.view_size, False))
        student_box = random_resized_crop_box(
            width, height, scale=self.student_scale, generator=generator
        )
        student_flip = _coin(generator)
        student = to_minus_one_one(_crop_resize(img, student_box, self.view_size, student_flip))
        return {"image": image, "teacher_image": teacher, "student_image": student}

    def __repr__(self) -> str:
        return (
            f"MultiView(reconstruction={self.reconstruction!r}, view_size={self.view_size}, "
            f"student_scale={self.student_scale})"
        )
