"""ImageNet-1k from the standard extracted layout ``root/{train,val}/<wnid>/*.JPEG``.

This project never downloads data: a missing folder is a one-line ``DataError`` saying what layout
is expected. (``val`` must already be sorted into ``<wnid>`` sub-folders, as most ImageNet copies
are.)

Class index = position of the wnid in the sorted list of wnid folders of ``root/train`` (of the
split's own folder when ``root/train`` does not exist). Taking it from ``train`` keeps train and
val indices identical even when ``val`` holds only a subset of the classes.

Scanning 1.28M files takes minutes on network storage, so the sorted relative file list is cached
as ``filelist.txt`` and reused on later constructions (delete it to rescan after changing the
data). Location, first that applies: ``<cachedir>/<split>/filelist.txt``; next to the data
(``root/<split>/filelist.txt``); if that folder is read-only,
``$MERGEVQ_CACHE (default ~/.cache/mergevq)/imagenet/<hash of root>/<split>/filelist.txt``.
Its first line is a ``# root: <absolute root>`` comment; a cache written for another root is
rebuilt. Writes are atomic (temp file + ``os.replace``), so ranks that scan concurrently cannot
corrupt it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from typing import ClassVar

from taming.data.base import DEFAULT_MAX_PIXELS, ImagePaths, check_max_pixels, read_filelist
from taming.data.errors import DataError
from taming.data.folder import make_transform

__all__ = ["ImageNetTrain", "ImageNetValidation", "IMAGENET_EXTENSIONS"]

IMAGENET_EXTENSIONS = (".jpeg", ".jpg", ".png")  # compared case-insensitively (.JPEG is standard)
_FILELIST = "filelist.txt"
_HEADER = "# root: "


def _wnid_dirs(folder: str) -> list[str]:
    return sorted(
        name
        for name in os.listdir(folder)
        if not name.startswith(".") and os.path.isdir(os.path.join(folder, name))
    )


def _scan_split(split_dir: str) -> list[str]:
    """Sorted ``<wnid>/<file>`` paths of all images in ``split_dir``."""
    found = []
    for wnid in _wnid_dirs(split_dir):
        with os.scandir(os.path.join(split_dir, wnid)) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(".") and name.lower().endswith(IMAGENET_EXTENSIONS):
                    found.append(f"{wnid}/{name}")
    found.sort()
    return found


def _default_cache_dir(root: str) -> str:
    # Same convention as mergevq.paths.cache_root (taming cannot import mergevq).
    env = os.environ.get("MERGEVQ_CACHE")
    if env:
        base = os.path.expanduser(env)
    else:
        base = os.path.join(os.path.expanduser("~"), ".cache", "mergevq")
    digest = hashlib.sha1(root.encode("utf-8")).hexdigest()[:16]
    return os.path.join(base, "imagenet", digest)


def _read_cache(path: str, root: str) -> list[str] | None:
    """The cached list, or None if absent or written for another root."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        first = f.readline().rstrip("\n")
    if first != _HEADER + root:
        return None
    entries = read_filelist(path)
    return entries or None


def _write_atomic(path: str, root: str, entries: list[str]) -> None:
    """Write the list via a temp file in the same folder + ``os.replace``; OSError if read-only."""
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".filelist-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(_HEADER + root + "\n")
            for entry in entries:
                f.write(entry + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _cached_file_list(root: str, split: str, split_dir: str, cachedir: str | None) -> list[str]:
    if cachedir is not None:
        candidates = [os.path.join(os.path.expanduser(cachedir), split, _FILELIST)]
    else:
        candidates = [
            os.path.join(split_dir, _FILELIST),
            os.path.join(_default_cache_dir(root), split, _FILELIST),
        ]
    for candidate in candidates:
        cached = _read_cache(candidate, root)
        if cached is not None:
            return cached
    entries = _scan_split(split_dir)
    if not entries:
        raise DataError(
            f"no images found in {split_dir} (expected {split_dir}/<wnid>/*.JPEG; "
            "this project never downloads data)"
        )
    errors = []
    for candidate in candidates:
        try:
            _write_atomic(candidate, root, entries)
            return entries
        except OSError as e:  # read-only data folder: try the next location
            errors.append(f"{candidate}: {e.strerror or e}")
    if cachedir is not None:
        raise DataError(f"cannot write the ImageNet file list to cachedir: {'; '.join(errors)}")
    return entries  # nowhere writable: still usable, just rescanned next time


class _ImageNetSplit(ImagePaths):
    split: ClassVar[str]

    def __init__(
        self,
        *,
        root: str,
        cachedir: str | None,
        size: int,
        views: bool,
        random_crop: bool,
        flip: bool,
        filelist: str | None,
        view_size: int,
        max_pixels: int | None,
    ) -> None:
        check_max_pixels(max_pixels)  # before a scan of 1.28M files, not after
        root = os.path.abspath(os.path.expanduser(str(root)))
        split_dir = os.path.join(root, self.split)
        if not os.path.isdir(split_dir):
            raise DataError(
                f"ImageNet {self.split} folder not found: {split_dir} (expected "
                f"root/{self.split}/<wnid>/*.JPEG; this project never downloads data)"
            )
        if filelist is not None:
            rel_paths = read_filelist(os.path.expanduser(filelist))
            if not rel_paths:
                raise DataError(f"file list {filelist} lists no images")
        else:
            rel_paths = _cached_file_list(root, self.split, split_dir, cachedir)
        train_dir = os.path.join(root, "train")
        self.classes: list[str] = _wnid_dirs(train_dir if os.path.isdir(train_dir) else split_dir)
        index = {wnid: i for i, wnid in enumerate(self.classes)}
        labels = []
        for rel in rel_paths:
            wnid = rel.replace("\\", "/").split("/")[0]
            if wnid not in index or "/" not in rel.replace("\\", "/"):
                raise DataError(
                    f"{rel} (in the {self.split} file list) is not under a known wnid folder; "
                    f"expected <wnid>/<file> with <wnid> one of the folders of {train_dir}"
                )
            labels.append(index[wnid])
        super().__init__(
            paths=[os.path.join(split_dir, rel) for rel in rel_paths],
            labels=labels,
            transform=make_transform(
                size=size, views=views, random_crop=random_crop, flip=flip, view_size=view_size
            ),
            root=split_dir,
            max_pixels=max_pixels,
        )


class ImageNetTrain(_ImageNetSplit):
    """ImageNet train split (``root/train``); random crop + flip by default.

    ``filelist``: optional text file of ``<wnid>/<file>`` paths relative to ``root/train`` (e.g.
    a 1% subset) used instead of the scan and its cache. ``max_pixels``: larger images are
    skipped before decoding (None = Pillow's own limit; see ``taming.data.image_io``).
    """

    split = "train"

    def __init__(
        self,
        *,
        root: str,
        cachedir: str | None = None,
        size: int = 256,
        views: bool = False,
        random_crop: bool = True,
        flip: bool = True,
        filelist: str | None = None,
        view_size: int = 224,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            root=root, cachedir=cachedir, size=size, views=views, random_crop=random_crop,
            flip=flip, filelist=filelist, view_size=view_size, max_pixels=max_pixels,
        )  # fmt: skip


class ImageNetValidation(_ImageNetSplit):
    """ImageNet validation split (``root/val``); centre crop, no flip by default (evaluation).

    Same options as ``ImageNetTrain``."""

    split = "val"

    def __init__(
        self,
        *,
        root: str,
        cachedir: str | None = None,
        size: int = 256,
        views: bool = False,
        random_crop: bool = False,
        flip: bool = False,
        filelist: str | None = None,
        view_size: int = 224,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        super().__init__(
            root=root, cachedir=cachedir, size=size, views=views, random_crop=random_crop,
            flip=flip, filelist=filelist, view_size=view_size, max_pixels=max_pixels,
        )  # fmt: skip
