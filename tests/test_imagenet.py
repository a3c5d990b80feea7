"""ImageNet datasets over a fake tree: labels from sorted wnids, cached file list, errors."""

from __future__ import annotations

import os

import pytest
from _data_images import write_jpeg

import taming.data.imagenet as imagenet
from taming.data.errors import DataError
from taming.data.imagenet import ImageNetTrain, ImageNetValidation

WNIDS = ["n03000134", "n01440764", "n02102040"]  # deliberately unsorted


@pytest.fixture()
def fake_root(tmp_path):
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for k, wnid in enumerate(WNIDS):
            for i in range(2):
                ext = ".JPEG" if i == 0 else ".jpg"
                write_jpeg(str(root / split / wnid / f"{wnid}_{i}{ext}"), size=20, seed=k)
    return str(root)


def _no_scan(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the file list was rescanned")

    monkeypatch.setattr(imagenet, "_scan_split", boom)
    monkeypatch.setattr(os, "walk", boom)


def test_labels_follow_sorted_wnids(fake_root):
    for cls in (ImageNetTrain, ImageNetValidation):
        ds = cls(root=fake_root, size=16)
        assert ds.classes == sorted(WNIDS) and len(ds) == 6
        for i, path in enumerate(ds.paths):
            wnid = os.path.basename(os.path.dirname(path))
            assert ds[i]["class_label"].item() == sorted(WNIDS).index(wnid)
            assert ds[i]["image"].shape == (3, 16, 16)


def test_filelist_cached_next_to_data_and_reused(fake_root, monkeypatch):
    first = ImageNetTrain(root=fake_root, size=16)
    cache = os.path.join(fake_root, "train", "filelist.txt")
    lines = open(cache).read().splitlines()
    assert lines[0] == "# root: " + os.path.abspath(fake_root)
    assert lines[1:] == sorted(lines[1:]) and len(lines) == 7
    assert all(not os.path.isabs(line) for line in lines[1:])
    _no_scan(monkeypatch)
    second = ImageNetTrain(root=fake_root, size=16)
    assert second.paths == first.paths


def test_cachedir_option(fake_root, tmp_path, monkeypatch):
    cachedir = tmp_path / "cache"
    train = ImageNetTrain(root=fake_root, cachedir=str(cachedir))
    val = ImageNetValidation(root=fake_root, cachedir=str(cachedir))
    assert (cachedir / "train" / "filelist.txt").is_file()
    assert (cachedir / "val" / "filelist.txt").is_file()
    assert not os.path.exists(os.path.join(fake_root, "train", "filelist.txt"))
    assert set(train.paths).isdisjoint(val.paths)
    _no_scan(monkeypatch)
    assert ImageNetTrain(root=fake_root, cachedir=str(cachedir)).paths == train.paths


def test_read_only_data_falls_back_to_home_cache(fake_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "home_cache"))
    real_write = imagenet._write_atomic

    def read_only(path, root, entries):
        if path.startswith(fake_root):
            raise PermissionError(13, "Read-only file system")
        real_write(path, root, entries)

    monkeypatch.setattr(imagenet, "_write_atomic", read_only)
    first = ImageNetValidation(root=fake_root)
    written = list((tmp_path / "home_cache" / "imagenet").glob("*/val/filelist.txt"))
    assert len(written) == 1
    _no_scan(monkeypatch)
    assert ImageNetValidation(root=fake_root).paths == first.paths


def test_cache_for_another_root_is_rebuilt(fake_root, tmp_path):
    cache = os.path.join(fake_root, "train", "filelist.txt")
    with open(cache, "w") as f:
        f.write("# root: /somewhere/else\nn01440764/ghost.JPEG\n")
    ds = ImageNetTrain(root=fake_root)
    assert len(ds) == 6


def test_missing_folders_are_errors(tmp_path, fake_root):
    with pytest.raises(DataError, match=r"ImageNet train folder not found: .*never downloads"):
        ImageNetTrain(root=str(tmp_path / "nowhere"))
    (tmp_path / "only_train" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="ImageNet val folder not found"):
        ImageNetValidation(root=str(tmp_path / "only_train"))
    with pytest.raises(DataError, match="no images found in"):
        ImageNetTrain(root=str(tmp_path / "only_train"))


def test_explicit_filelist_and_views(fake_root, tmp_path):
    listing = tmp_path / "subset.txt"
    a, b = WNIDS[0], WNIDS[1]
    listing.write_text(f"# 1 per class\n{a}/{a}_0.JPEG\n{b}/{b}_1.jpg\n")
    ds = ImageNetTrain(root=fake_root, filelist=str(listing), size=16, views=True, view_size=14)
    assert len(ds) == 2
    sample = ds[0]
    assert sample["class_label"].item() == 2  # n03000134 is last in sorted order
    assert sample["teacher_image"].shape == (3, 14, 14)
    assert sample["student_image"].shape == (3, 14, 14)
    listing.write_text("n99999999/x.JPEG\n")
    with pytest.raises(DataError, match="not under a known wnid folder"):
        ImageNetTrain(root=fake_root, filelist=str(listing))
