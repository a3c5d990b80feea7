"""ImageFolder: every awkward file handled, unreadable ones skipped and counted, user errors."""

from __future__ import annotations

import os

import pytest
import torch
from _data_images import write_bad_images, write_good_images, write_jpeg
from torch.utils.data import DataLoader

from taming.data.base import ImagePaths, Skipped, collate_skip_none
from taming.data.errors import DataError
from taming.data.folder import ImageFolder
from taming.data.transforms import ImageTransform


@pytest.fixture()
def mixed_folder(tmp_path):
    root = tmp_path / "mixed"
    write_good_images(str(root))
    write_bad_images(str(root))
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(b"junk")  # hidden: ignored
    return str(root)


def test_mixed_folder_samples(mixed_folder):
    ds = ImageFolder(root=mixed_folder, size=32)
    assert len(ds) == 9 and ds.classes == []  # 7 good + 2 bad; txt and hidden ignored
    skipped = []
    for i in range(len(ds)):
        sample = ds[i]
        if isinstance(sample, Skipped):
            assert not sample  # falsy, like None
            skipped.append(os.path.basename(sample.path))
            continue
        assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.float32
        assert -1 <= sample["image"].min() and sample["image"].max() <= 1
        assert sample["class_label"].item() == -1 and sample["index"] == i
    assert sorted(skipped) == ["corrupt.jpg", "truncated.png"]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skips_are_counted_through_a_dataloader(mixed_folder, num_workers):
    ds = ImageFolder(root=mixed_folder, size=32, views=True, view_size=24)
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, collate_fn=collate_skip_none)
    skipped, seen, paths = 0, 0, []
    for batch in loader:
        skipped += batch["num_skipped"]
        paths += batch["skipped_paths"]
        if "image" in batch:
            n = batch["image"].shape[0]
            seen += n
            assert batch["teacher_image"].shape == (n, 3, 24, 24)
            assert batch["student_image"].shape == (n, 3, 24, 24)
            assert batch["class_label"].dtype == torch.int64 and len(batch["path"]) == n
    assert skipped == 2 and seen == 7
    assert sorted(os.path.basename(p) for p in paths) == ["corrupt.jpg", "truncated.png"]


def test_all_skipped_batch_has_only_the_counts():
    big = Skipped(path="b.png", index=1, reason="oversize", detail="9000x9000 px, over the 40 Mpx limit")
    batch = collate_skip_none([Skipped(path="a.jpg", index=0), None, big])
    assert batch == {
        "num_skipped": 3,
        "skipped_paths": ["a.jpg", "b.png"],
        "skipped_reasons": ["unreadable", "oversize"],
        "skipped_details": ["", "9000x9000 px, over the 40 Mpx limit"],
    }


def test_only_corrupt_files_is_an_error(tmp_path):
    write_bad_images(str(tmp_path))
    with pytest.raises(DataError, match=r"no readable image in .* \(2 files tried\)"):
        ImageFolder(root=str(tmp_path))


def test_empty_and_missing_folders_are_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match="no images in"):
        ImageFolder(root=str(tmp_path))
    with pytest.raises(DataError, match="image folder not found: .*nope"):
        ImageFolder(root=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="no image files"):
        ImagePaths(paths=[], transform=ImageTransform(size=8))


def test_readability_probe_stops_at_first_success(tmp_path, monkeypatch):
    for i in range(5):
        write_jpeg(str(tmp_path / f"{i}.jpg"))
    import taming.data.base as base

    calls = []
    real = base.decode_rgb
    monkeypatch.setattr(base, "decode_rgb", lambda p, max_pixels: calls.append(p) or real(p, max_pixels=max_pixels))
    ImageFolder(root=str(tmp_path))
    assert len(calls) == 1


def _class_tree(root):
    for cls, n in (("dogs", 2), ("cats", 3)):
        for i in range(n):
            write_jpeg(os.path.join(root, cls, f"{i}.JPG"), seed=i)
    write_jpeg(os.path.join(root, "cats", "nested", "deep.jpeg"))


def test_class_subfolders_give_labels(tmp_path):
    _class_tree(str(tmp_path))
    ds = ImageFolder(root=str(tmp_path), size=16)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 6
    labels = {
        os.path.relpath(p, tmp_path): ds[i]["class_label"].item() for i, p in enumerate(ds.paths)
    }
    assert labels[os.path.join("cats", "nested", "deep.jpeg")] == 0
    assert labels[os.path.join("dogs", "1.JPG")] == 1
    assert ds.paths == sorted(ds.paths)  # deterministic order
    unlabelled = ImageFolder(root=str(tmp_path), labels=False)
    assert unlabelled.classes == [] and unlabelled[0]["class_label"].item() == -1


def test_loose_images_mean_unlabelled_unless_forced(tmp_path):
    _class_tree(str(tmp_path))
    write_jpeg(str(tmp_path / "loose.jpg"))
    assert ImageFolder(root=str(tmp_path)).classes == []
    with pytest.raises(DataError, match="not inside a class sub-folder"):
        ImageFolder(root=str(tmp_path), labels=True)


def test_filelist_option(tmp_path):
    _class_tree(str(tmp_path))
    listing = tmp_path / "subset.txt"
    listing.write_text("# a subset\ndogs/0.JPG\n\ncats/1.JPG\n")
    ds = ImageFolder(root=str(tmp_path), filelist=str(listing), size=16)
    assert [os.path.relpath(p, tmp_path) for p in ds.paths] == [
        os.path.join("dogs", "0.JPG"), os.path.join("cats", "1.JPG")
    ]
    assert ds.classes == ["cats", "dogs"] and ds[0]["class_label"].item() == 1
    with pytest.raises(DataError, match="file list not found"):
        ImageFolder(root=str(tmp_path), filelist=str(tmp_path / "missing.txt"))


def test_extensions_option_is_case_insensitive(tmp_path):
    write_jpeg(str(tmp_path / "a.JPG"))
    write_jpeg(str(tmp_path / "b.jpeg"))
    assert len(ImageFolder(root=str(tmp_path), extensions=[".jpg"])) == 1
    assert len(ImageFolder(root=str(tmp_path), extensions=["JPEG", ".JpG"])) == 2
