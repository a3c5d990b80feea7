"""``ImageFolder``: any folder of images, with or without class sub-folders.

This is what "train on my own images" points at (configs/data/folder.yaml): a two-line edit of the
train and validation ``root``. The scan is recursive, sorted and deterministic, so every rank and
every run sees the same file order. Hidden files and folders (names starting with ``.``, e.g.
macOS ``._x.jpg`` resource forks, which are not images) are ignored.

Labels: with ``labels=None`` they are inferred — if every image lives inside an immediate
sub-folder of ``root``, the sorted sub-folder names are the classes (nested folders belong to
their top-level folder); if any image sits directly in ``root`` the folder is unlabelled and every
``class_label`` is -1 (``taming.data.base.UNLABELLED``), a value that fails loudly if a
class-conditional model ever uses it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from taming.data.base import DEFAULT_MAX_PIXELS, ImagePaths, check_max_pixels, read_filelist
from taming.data.errors import DataError
from taming.data.transforms import ImageTransform, MultiView

__all__ = ["ImageFolder", "DEFAULT_EXTENSIONS", "scan_images", "make_transform"]

DEFAULT_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm",
)  # fmt: skip


def scan_images(root: str, extensions: Sequence[str]) -> list[str]:
    """Sorted ``root``-relative paths of the non-hidden files with a suffix in ``extensions``."""
    suffixes = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(suffixes):
                found.append(name if rel_dir == "." else os.path.join(rel_dir, name))
    found.sort()
    return found


def make_transform(
    *, size: int, views: bool, random_crop: bool, flip: bool, view_size: int
) -> ImageTransform | MultiView:
    """One reconstruction view, or the alignment multi-view sample when ``views`` is set."""
    if views:
        return MultiView(size=size, random_crop=random_crop, flip=flip, view_size=view_size)
    return ImageTransform(size=size, random_crop=random_crop, flip=flip)


def _top_folder(rel_path: str) -> str | None:
    parts = rel_path.replace("\\", "/").split("/")
    return parts[0] if len(parts) > 1 else None


class ImageFolder(ImagePaths):
    """All images under ``root`` (or those listed in ``filelist``), optionally class-labelled.

    Args:
        root: folder holding the images.
        filelist: optional text file of paths relative to ``root``, one per line (``#`` comments
            and blank lines ignored); replaces the scan, e.g. for a fixed subset.
        size: side of the square reconstruction view ``image``.
        views: also produce ``teacher_image`` / ``student_image`` for the alignment loss.
        random_crop, flip: train-time augmentation of ``image`` (eval: centre crop, no flip).
        extensions: file suffixes to include when scanning (case-insensitive).
        labels: True = class from the immediate sub-folder (every image must be in one);
            False = unlabelled (-1); None = infer (see module docstring).
        view_size: side of the teacher/student views (224 for DINOv2 ViT-B/14).
        max_pixels: images whose header declares more pixels are skipped (reason ``oversize``)
            before decoding, which bounds a loader worker's memory; None = Pillow's own limit.
    """

    def __init__(
        self,
        *,
        root: str,
        filelist: str | None = None,
        size: int = 256,
        views: bool = False,
        random_crop: bool = False,
        flip: bool = False,
        extensions: Sequence[str] = DEFAULT_EXTENSIONS,
        labels: bool | None = None,
        view_size: int = 224,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        check_max_pixels(max_pixels)  # before the scan, which can take long
        root = os.path.expanduser(str(root))
        if not os.path.isdir(root):
            raise DataError(f"image folder not found: {root} (expected a folder of images)")
        if filelist is not None:
            rel_paths = read_filelist(os.path.expanduser(filelist))
            for rel in rel_paths:
                if os.path.isabs(rel):
                    raise DataError(
                        f"file list {filelist}: {rel} is absolute; "
                        f"expected paths relative to {root}"
                    )
            if not rel_paths:
                raise DataError(f"file list {filelist} lists no images")
        else:
            rel_paths = scan_images(root, extensions)
            if not rel_paths:
                raise DataError(
                    f"no images in {root} (looked recursively for {', '.join(extensions)})"
                )
        tops = [_top_folder(rel) for rel in rel_paths]
        if labels is None:
            labels = all(top is not None for top in tops)
        if labels:
            loose = next((rel for rel, top in zip(rel_paths, tops) if top is None), None)
            if loose is not None:
                raise DataError(
                    f"labels=True but {os.path.join(root, loose)} is not inside a class sub-folder "
                    f"of {root}; expected root/<class>/<image>"
                )
            self.classes: list[str] = sorted(set(tops))  # type: ignore[arg-type]
            index = {name: i for i, name in enumerate(self.classes)}
            label_list: list[int] | None = [index[top] for top in tops]  # type: ignore[index]
        else:
            self.classes = []
            label_list = None
        super().__init__(
            paths=[os.path.join(root, rel) for rel in rel_paths],
            labels=label_list,
            transform=make_transform(
                size=size, views=views, random_crop=random_crop, flip=flip, view_size=view_size
            ),
            root=root,
            max_pixels=max_pixels,
        )
