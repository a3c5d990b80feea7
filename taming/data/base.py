"""``ImagePaths``: the dataset core shared by ImageNet and image folders, and the skipping collate.

Unreadable files, and files over the ``max_pixels`` limit, are *skipped and counted*, never fatal:
``__getitem__`` returns a ``Skipped`` marker (falsy, like ``None``) with the reason instead of
raising, ``collate_skip_none`` drops such samples and puts ``num_skipped`` / ``skipped_paths`` /
``skipped_reasons`` / ``skipped_details`` into the batch, and the consumer (a Lightning callback,
``mergevq.data.skips.SkippedImagesReport``) sums them per reason over the epoch. The counts travel
inside the batch, so they are correct with any number of DataLoader workers and need no global
state.

A dataset that cannot yield a single image is a user error, caught at construction
(``DataError``), not after hours of silently skipping.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from taming.data.errors import DataError
from taming.data.image_io import (
    DEFAULT_MAX_PIXELS,
    OVERSIZE,
    UNREADABLE,
    DecodeFailure,
    decode_rgb,
    format_megapixels,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImagePaths",
    "Skipped",
    "collate_skip_none",
    "check_max_pixels",
    "read_filelist",
    "UNLABELLED",
]

UNLABELLED = -1
"""``class_label`` of an image without a class (unlabelled folders)."""

Transform = Callable[[Image.Image, "torch.Generator | None"], "torch.Tensor | dict[str, torch.Tensor]"]


@dataclass(frozen=True)
class Skipped:
    """Returned by ``ImagePaths.__getitem__`` for a file that gives no image.

    It carries the path and the reason (``taming.data.image_io.SKIP_REASONS``: ``unreadable`` or
    ``oversize``, with a short ``detail`` such as ``"13300x13300 px, over the 40 Mpx limit"``) so
    the end-of-epoch report can say why and name an example, and it is falsy so code written for
    the ``None`` convention (``if not sample``) treats it the same way.
    """

    path: str
    index: int
    reason: str = UNREADABLE
    detail: str = ""

    def __bool__(self) -> bool:
        return False


class ImagePaths(Dataset):
    """Images given by a list of paths, with optional integer labels and a transform.

    A sample is a dict: the transform's output (``image``, plus ``teacher_image`` and
    ``student_image`` for ``MultiView``), ``class_label`` (int64 scalar tensor, ``UNLABELLED`` = -1
    when there are no labels), ``path`` (str; a list of str in a batch) and ``index`` (int).
    """

    def __init__(
        self,
        *,
        paths: Sequence[str],
        transform: Transform,
        labels: Sequence[int] | None = None,
        root: str | None = None,
        check_readable: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        where = root if root is not None else "the given path list"
        self.max_pixels = check_max_pixels(max_pixels)
        if len(paths) == 0:
            raise DataError(f"no image files in {where}")
        if labels is not None and len(labels) != len(paths):
            raise DataError(
                f"{where}: {len(labels)} labels for {len(paths)} images; "
                "expected one label per image"
            )
        self.paths = list(paths)
        self.labels = None if labels is None else [int(label) for label in labels]
        self.transform = transform
        self.root = root
        if check_readable:
            self._require_one_readable(where)

    def _require_one_readable(self, where: str) -> None:
        """Probe files in order until one decodes: O(1) for a healthy dataset."""
        oversize = ""  # the first file over the pixel limit: the likely cause, worth naming
        for tried, path in enumerate(self.paths, start=1):
            result = decode_rgb(path, max_pixels=self.max_pixels)
            if not isinstance(result, DecodeFailure):
                return
            if result.reason == OVERSIZE and not oversize:
                oversize = f"; e.g. {path}: {result.detail} (see max_pixels)"
        raise DataError(f"no readable image in {where} ({tried} files tried{oversize})")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any] | Skipped:
        return self.get(index)

    def get(self, index: int, *, generator: torch.Generator | None = None) -> dict[str, Any] | Skipped:
        """Sample ``index``; the transform draws its randomness from ``generator`` (the global torch
        RNG when None). A seeded generator per sample makes the sample independent of the worker
        that loads it and of what was loaded before, which an exact resume needs."""
        path = self.paths[index]
        img = decode_rgb(path, max_pixels=self.max_pixels)
        if isinstance(img, DecodeFailure):
            return Skipped(path=path, index=int(index), reason=img.reason, detail=img.detail)
        out = self.transform(img, generator)
        sample: dict[str, Any] = dict(out) if isinstance(out, dict) else {"image": out}
        label = UNLABELLED if self.labels is None else self.labels[index]
        sample["class_label"] = torch.tensor(label, dtype=torch.int64)
        sample["path"] = path
        sample["index"] = int(index)
        return sample


def collate_skip_none(batch: Sequence[dict[str, Any] | Skipped | None]) -> dict[str, Any]:
    """Collate the readable samples; count the rest.

    Adds ``num_skipped`` (int) and, one entry per ``Skipped`` sample, ``skipped_paths``,
    ``skipped_reasons`` and ``skipped_details`` (lists of str; ``None`` samples contribute a count
    only, and count as unreadable). If *every* sample was skipped the batch holds only those four
    keys — consumers must handle a batch without ``image`` (e.g. return ``None`` from
    ``training_step``).
    """
    kept = [s for s in batch if s is not None and not isinstance(s, Skipped)]
    skipped = [s for s in batch if isinstance(s, Skipped)]
    out: dict[str, Any] = default_collate(kept) if kept else {}
    out["num_skipped"] = len(batch) - len(kept)
    out["skipped_paths"] = [s.path for s in skipped]
    out["skipped_reasons"] = [s.reason for s in skipped]
    out["skipped_details"] = [s.detail for s in skipped]
    return out


def check_max_pixels(max_pixels: object) -> int | None:
    """``max_pixels`` if it is a whole number >= 1 or None, else a one-line ``DataError``."""
    if max_pixels is None:
        return None
    if isinstance(max_pixels, int) and not isinstance(max_pixels, bool) and max_pixels >= 1:
        return max_pixels
    raise DataError(
        f"max_pixels must be a whole number of pixels >= 1 (e.g. 40000000 = "
        f"{format_megapixels(DEFAULT_MAX_PIXELS)}) or null for Pillow's own limit, "
        f"got {max_pixels!r}"
    )


def read_filelist(path: str) -> list[str]:
    """Lines of a file list: one path per line, blank lines and ``#`` comments ignored."""
    if not os.path.isfile(path):
        raise DataError(f"file list not found: {path} (expected a text file, one path per line)")
    entries = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                entries.append(line)
    return entries
