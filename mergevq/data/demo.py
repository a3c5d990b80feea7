"""Embedded demo data: random crops of the colour photos in scikit-image and scikit-learn.

Nothing is downloaded and no image file is committed: the ten source photos are read from the
installed ``skimage.data`` and ``sklearn.datasets`` packages, cut into deterministic random square
crops, resized to ``resolution`` and cached as one ``.npz`` file. One class per source photo
(``DEMO_PHOTOS`` gives the names in class-id order).

Crops: for each photo, split and crop index a square side is drawn uniformly between
``min_scale`` and ``max_scale`` times the photo's short side (clamped to the split's region),
its top-left corner uniformly inside the split's region, and the crop is resized to
``resolution`` x ``resolution`` with PIL's Lanczos filter. A nearly flat crop (black
surroundings of the retina, empty sky) is redrawn, up to ``_MAX_TRIES`` times.
Every (photo, split) pair has its own random stream derived from ``seed``, so changing
``val_per_photo`` does not change the training crops and vice versa.

Split by region: validation crops lie entirely inside the right-most ``val_fraction`` of each
photo's width, training crops entirely inside the rest, so no validation pixel is ever seen in
training. (The validation band is therefore a slightly different part of each scene, e.g. more
foliage in "china": a mild, deliberate distribution shift.)

Cache: ``$MERGEVQ_CACHE/demo`` (default ``~/.cache/mergevq/demo``), or the ``cache_dir`` argument.
The file name holds a hash of every build parameter, the format version and the versions of the
libraries that supply the photos and the resize, so a change to any of them builds a new file. A
file that fails to load or validate is rebuilt; files are written atomically (temporary file +
os.replace), so concurrent builders (DDP ranks) are safe.

This module imports no model code and no Lightning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mergevq.fileio import atomic_write
from mergevq.paths import cache_root
from taming.data.base import UNLABELLED
from taming.data.transforms import to_imagenet_normalised

__all__ = [
    "DEMO_PHOTOS",
    "SPLITS",
    "DemoArrays",
    "DemoImages",
    "build_demo_arrays",
    "demo_cache_dir",
    "load_demo_arrays",
    "load_demo_photos",
]

# Bump when the build procedure or the file layout changes: old cache files are then ignored.
FORMAT_VERSION = 1

# Class id = position in this tuple. Colour photos only. Excluded on purpose: ``colorwheel``
# (synthetic, not a photo), the grey images (camera, moon, brick, ...: a trivial colour cue), and
# the right view of ``stereo_motorcycle`` (the same scene shifted sideways: its left part shows
# what the left view's validation band shows, which would leak validation content into training).
DEMO_PHOTOS: tuple[str, ...] = (  # name, class id, source, H x W
    "astronaut",  # 0  skimage.data.astronaut             512 x 512
    "chelsea",  # 1  skimage.data.chelsea (a cat)          300 x 451
    "coffee",  # 2  skimage.data.coffee                    400 x 600
    "rocket",  # 3  skimage.data.rocket                    427 x 640
    "hubble_deep_field",  # 4  skimage.data.hubble_deep_field  872 x 1000
    "immunohistochemistry",  # 5  skimage.data.immunohistochemistry  512 x 512
    "retina",  # 6  skimage.data.retina                   1411 x 1411
    "motorcycle",  # 7  skimage.data.stereo_motorcycle()[0], left view  500 x 741
    "china",  # 8  sklearn.datasets.load_sample_images()  427 x 640
    "flower",  # 9  sklearn.datasets.load_sample_images()  427 x 640
)

SPLITS: tuple[str, ...] = ("train", "validation")

_MAX_TRIES = 12  # redraws of a nearly flat crop
_MIN_STD = 12.0  # a crop whose resized pixels have a smaller std (0..255 scale) is redrawn
# PIL's two-step resize (box reduce, then Lanczos over >= 3x the output size): ~4x faster than a
# plain Lanczos from a large crop and visually the same. Part of the cache key.
_GAP = 3.0


# --------------------------------------------------------------------------------------------------
# Source photos
# --------------------------------------------------------------------------------------------------


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data  # only the images bundled in the wheel are used: no pooch download

        return getattr(skimage.data, name)()

    return load


def _motorcycle_left() -> np.ndarray:
    import skimage.data

    left, _right, _disparity = skimage.data.stereo_motorcycle()
    return left


def _sklearn(file_stem: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for filename, image in zip(bunch.filenames, bunch.images):
            if Path(filename).stem == file_stem:
                return image
        raise RuntimeError(f"sklearn.datasets.load_sample_images() has no image {file_stem!r}")

    return load


_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "motorcycle": _motorcycle_left,
    "china": _sklearn("china"),
    "flower": _sklearn("flower"),
}
assert tuple(_LOADERS) == DEMO_PHOTOS


def load_demo_photos() -> dict[str, np.ndarray]:
    """The source photos, name -> uint8 (H, W, 3), in ``DEMO_PHOTOS`` order. Offline only."""
    photos = {}
    for name in DEMO_PHOTOS:
        image = np.asarray(_LOADERS[name]())
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RuntimeError(f"demo photo {name!r} is not uint8 RGB: {image.dtype} {image.shape}")
        photos[name] = np.ascontiguousarray(image)
    return photos


# --------------------------------------------------------------------------------------------------
# Pure build
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DemoArrays:
    """All demo crops of both splits.

    images: uint8 (N, H, W, 3); labels: int64 (N,), the class id = index into ``photos``;
    boxes: int64 (N, 4), the crop in source-photo pixels as (x0, y0, x1, y1), half-open;
    split: int64 (N,), index into ``SPLITS`` (0 train, 1 validation); photos: class names.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    split: np.ndarray
    photos: tuple[str, ...]

    def select(self, split: str) -> DemoArrays:
        """The rows of one split ("train" or "validation")."""
        keep = self.split == _split_index(split)
        return DemoArrays(
            images=self.images[keep],
            labels=self.labels[keep],
            boxes=self.boxes[keep],
            split=self.split[keep],
            photos=self.photos,
        )


def _split_index(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown demo split {split!r}; valid choices: {', '.join(SPLITS)}")
    return SPLITS.index(split)


def _check_params(
    resolution: int,
    train_per_photo: int,
    val_per_photo: int,
    min_scale: float,
    max_scale: float,
    val_fraction: float,
) -> None:
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if train_per_photo < 0 or val_per_photo < 0:
        raise ValueError(
            "train_per_photo and val_per_photo must be >= 0, "
            f"got {train_per_photo}, {val_per_photo}"
        )
    if not 0.0 < min_scale <= max_scale <= 1.0:
        raise ValueError(f"need 0 < min_scale <= max_scale <= 1, got {min_scale}, {max_scale}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")


def _regions(width: int, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int]]:
    """Column ranges [x0, x1) of the train and validation regions of a photo of this width."""
    x_split = width - int(round(val_fraction * width))
    return (0, x_split), (x_split, width)


def _crops_of_region(
    photo: np.ndarray,
    *,
    region: tuple[int, int],
    count: int,
    rng: np.random.Generator,
    resolution: int,
    min_scale: float,
    max_scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    height = photo.shape[0]
    x_lo, x_hi = region
    short = min(photo.shape[:2])
    # The side never exceeds the region: e.g. the 25 % validation band of a square photo caps it at
    # 0.25 of the width, below max_scale = 0.4 (validation then sees slightly smaller crops).
    side_max = min(int(round(max_scale * short)), x_hi - x_lo, height)
    side_min = min(max(1, int(round(min_scale * short))), side_max)
    images = np.empty((count, resolution, resolution, 3), np.uint8)
    boxes = np.empty((count, 4), np.int64)
    for i in range(count):
        best = None
        for _ in range(_MAX_TRIES):
            side = int(rng.integers(side_min, side_max + 1))
            x0 = int(rng.integers(x_lo, x_hi - side + 1))
            y0 = int(rng.integers(0, height - side + 1))
            crop = Image.fromarray(photo[y0 : y0 + side, x0 : x0 + side])
            small = np.asarray(
                crop.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=_GAP)
            )
            std = float(small.std())
            if best is None or std > best[0]:
                best = (std, small, (x0, y0, x0 + side, y0 + side))
            if std >= _MIN_STD:
                break
        assert best is not None
        images[i] = best[1]
        boxes[i] = best[2]
    return images, boxes


def build_demo_arrays(
    *,
    resolution: int = 32,
    train_per_photo: int = 200,
    val_per_photo: int = 20,
    seed: int = 0,
    min_scale: float = 0.15,
    max_scale: float = 0.4,
    val_fraction: float = 0.25,
) -> DemoArrays:
    """Build every demo crop in memory (pure and deterministic; no cache). Rows are ordered by
    split (train first), then photo, then crop index."""
    _check_params(resolution, train_per_photo, val_per_photo, min_scale, max_scale, val_fraction)
    photos = load_demo_photos()
    images, labels, boxes, splits = [], [], [], []
    for split_id, count in enumerate((train_per_photo, val_per_photo)):
        for label, name in enumerate(DEMO_PHOTOS):
            photo = photos[name]
            region = _regions(photo.shape[1], val_fraction)[split_id]
            rng = np.random.default_rng([seed, label, split_id])
            crops, crop_boxes = _crops_of_region(
                photo, region=region, count=count, rng=rng, resolution=resolution,
                min_scale=min_scale, max_scale=max_scale,
            )
            images.append(crops)
            boxes.append(crop_boxes)
            labels.append(np.full(count, label, np.int64))
            splits.append(np.full(count, split_id, np.int64))
    return DemoArrays(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        boxes=np.concatenate(boxes),
        split=np.concatenate(splits),
        photos=DEMO_PHOTOS,
    )


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def demo_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$MERGEVQ_CACHE/demo``, else ``~/.cache/mergevq/demo``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_root() / "demo"


def _cache_key(params: dict[str, object]) -> str:
    # Package versions from metadata: importing sklearn costs ~1 s, too much for a cache hit.
    from importlib.metadata import version

    keyed = {
        "format_version": FORMAT_VERSION,
        "params": params,
        "photos": list(DEMO_PHOTOS),
        "max_tries": _MAX_TRIES,
        "min_std": _MIN_STD,
        "reducing_gap": _GAP,
        "versions": {
            name: version(name) for name in ("numpy", "pillow", "scikit-image", "scikit-learn")
        },
    }
    return json.dumps(keyed, sort_keys=True)


def _read_cache(path: Path, key: str) -> DemoArrays:
    with np.load(path, allow_pickle=False) as data:
        if str(data["key"]) != key:
            raise ValueError("cache key mismatch")
        arrays = DemoArrays(
            images=data["images"],
            labels=data["labels"],
            boxes=data["boxes"],
            split=data["split"],
            photos=tuple(str(p) for p in data["photos"]),
        )
    n = arrays.images.shape[0]
    ok = (
        arrays.images.dtype == np.uint8 and arrays.images.ndim == 4 and arrays.images.shape[3] == 3
        and arrays.labels.shape == (n,) and arrays.labels.dtype == np.int64
        and arrays.boxes.shape == (n, 4) and arrays.split.shape == (n,)
        and arrays.photos == DEMO_PHOTOS
    )
    if not ok:
        raise ValueError("cache arrays have unexpected shapes or dtypes")
    return arrays


def _write_cache(path: Path, key: str, arrays: DemoArrays) -> None:
    with atomic_write(path) as handle:  # concurrent builders (DDP ranks) never see a partial file
        np.savez_compressed(
            handle, key=np.array(key), images=arrays.images, labels=arrays.labels,
            boxes=arrays.boxes, split=arrays.split, photos=np.array(arrays.photos),
        )


def load_demo_arrays(
    *,
    resolution: int = 32,
    train_per_photo: int = 200,
    val_per_photo: int = 20,
    seed: int = 0,
    min_scale: float = 0.15,
    max_scale: float = 0.4,
    val_fraction: float = 0.25,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DemoArrays:
    """``build_demo_arrays`` through the on-disk cache (see the module docstring). A cache file that
    is missing, corrupt or stale is rebuilt; an unwritable cache directory only costs a warning."""
    params = dict(
        resolution=resolution, train_per_photo=train_per_photo, val_per_photo=val_per_photo,
        seed=seed, min_scale=min_scale, max_scale=max_scale, val_fraction=val_fraction,
    )
    _check_params(resolution, train_per_photo, val_per_photo, min_scale, max_scale, val_fraction)
    key = _cache_key(params)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = demo_cache_dir(cache_dir) / f"demo-v{FORMAT_VERSION}-{resolution}px-{digest}.npz"
    if path.is_file():
        try:
            return _read_cache(path, key)
        except Exception:  # corrupt, truncated or foreign file: rebuild it below
            pass
    arrays = build_demo_arrays(**params)  # type: ignore[arg-type]
    try:
        _write_cache(path, key, arrays)
    except OSError as err:
        warnings.warn(f"demo data not cached ({path}): {err}", stacklevel=2)
    return arrays


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


class DemoImages(Dataset):
    """One split of the demo crops as a map-style dataset.

    Item: ``{"image": float32 (3, H, W) in [-1, 1], "class_label": int64 scalar tensor,
    "index": int}``. ``classes`` lists the photo names (class id = position), ``num_classes`` = 10.

    The data-set keys a task config sets for every data set mean what they mean for
    ``taming.data.folder.ImageFolder``: ``size`` the side of the square crops (the cached build is
    made at that size); ``flip`` mirrors an item horizontally with probability 1/2, drawn from the
    generator given to :meth:`get` (the global torch RNG through ``dataset[i]``); ``labels`` false
    gives every item the label -1 (unlabelled), null / true the photo's class. ``random_crop``
    exists so that one task config fits every data set: the demo crops are cut once, at build time,
    so only false is accepted. ``resolution`` is the earlier name of ``size`` (give one of them).

    ``views`` (the global alignment loss) adds the two views the tokenizer's training step reads, in
    the roles of ``taming.data.transforms.MultiView``'s: ``teacher_image``, the crop never flipped,
    resized to ``view_size`` (PIL bicubic) and ImageNet-normalised (3, view_size, view_size);
    ``student_image``, the crop in [-1, 1] at ``size`` with its own flip (p = 1/2, drawn after the
    reconstruction view's). Unlike MultiView's 224 px strong view, the student view stays at ``size``:
    the tokenizer's encoder only takes its own image size, and a random resized crop of a 32 px
    crop would leave little to align.
    """

    def __init__(
        self,
        *,
        split: str,
        size: int | None = None,
        resolution: int | None = None,
        train_per_photo: int = 200,
        val_per_photo: int = 20,
        seed: int = 0,
        min_scale: float = 0.15,
        max_scale: float = 0.4,
        val_fraction: float = 0.25,
        cache_dir: str | None = None,
        flip: bool = False,
        views: bool = False,
        random_crop: bool = False,
        labels: bool | None = None,
        view_size: int = 224,
    ) -> None:
        _split_index(split)  # validate before the (possibly slow) build
        if size is not None and resolution is not None and size != resolution:
            raise ValueError(f"size={size} and resolution={resolution} disagree: resolution is the earlier "
                             "name of size; give only size")
        if isinstance(view_size, bool) or not isinstance(view_size, int) or view_size < 1:
            raise ValueError(f"view_size must be a positive number of pixels, got {view_size!r}")
        if random_crop:
            raise ValueError("random_crop=true: the demo crops are cut once when the set is built "
                             "(demo_data.seed chooses them); set random_crop: false")
        side = size if size is not None else resolution if resolution is not None else 32
        arrays = load_demo_arrays(
            resolution=side, train_per_photo=train_per_photo, val_per_photo=val_per_photo,
            seed=seed, min_scale=min_scale, max_scale=max_scale, val_fraction=val_fraction,
            cache_dir=cache_dir,
        ).select(split)
        self.split = split
        self.size = side
        self.resolution = side
        self.flip = flip
        self.views = views
        self.view_size = view_size
        self.images = arrays.images  # uint8 (N, H, W, 3)
        self.labels = arrays.labels  # int64 (N,)
        self.unlabelled = labels is False
        self.boxes = arrays.boxes  # int64 (N, 4) x0, y0, x1, y1 in source-photo pixels
        self.classes: list[str] = list(arrays.photos)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, object]:
        return self.get(index)

    def get(self, index: int, *, generator: torch.Generator | None = None) -> dict[str, object]:
        """Item ``index``; the flip draws from ``generator`` (the global torch RNG when None)."""
        crop = torch.from_numpy(self.images[index]).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        crop = crop.to(torch.float32) / 127.5 - 1.0
        image = crop.flip(-1) if self.flip and bool(torch.rand((), generator=generator) < 0.5) else crop
        item: dict[str, object] = {
            "image": image,
            "class_label": torch.tensor(UNLABELLED if self.unlabelled else int(self.labels[index]), dtype=torch.int64),
            "index": int(index),
        }
        if self.views:
            item.update(self._views(index, crop, generator))
        return item

    def _views(self, index: int, crop: torch.Tensor, generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        side = self.view_size
        teacher = Image.fromarray(self.images[index]).resize((side, side), Image.Resampling.BICUBIC)
        student = crop.flip(-1) if bool(torch.rand((), generator=generator) < 0.5) else crop
        return {"teacher_image": to_imagenet_normalised(teacher), "student_image": student}
