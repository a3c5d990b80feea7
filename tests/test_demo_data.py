"""The embedded demo dataset: deterministic, split by photo region, cached safely, real content."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mergevq.data import demo
from mergevq.data.demo import DEMO_PHOTOS, DemoImages, build_demo_arrays, load_demo_arrays

SMALL = dict(resolution=32, train_per_photo=16, val_per_photo=6, seed=0)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Never touch the user's ~/.cache in tests.
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "mergevq-cache"))


@pytest.fixture(scope="module")
def small():
    return build_demo_arrays(**SMALL)


def _cache_files(directory):
    return sorted(p for p in directory.iterdir() if p.suffix == ".npz")


def _assert_same(a, b):
    for field in ("images", "labels", "boxes", "split"):
        x, y = getattr(a, field), getattr(b, field)
        assert x.dtype == y.dtype and x.shape == y.shape, field
        assert x.tobytes() == y.tobytes(), field
    assert a.photos == b.photos


def test_deterministic_across_cache_dirs_and_cache_hit(tmp_path, small, monkeypatch):
    a = load_demo_arrays(**SMALL, cache_dir=tmp_path / "one")
    b = load_demo_arrays(**SMALL, cache_dir=tmp_path / "two")
    _assert_same(a, b)
    _assert_same(a, small)
    (file_one,) = _cache_files(tmp_path / "one")
    assert [p.name for p in _cache_files(tmp_path / "two")] == [file_one.name]

    # A second load is a cache hit: no rebuild, same bytes.
    def no_build(**_):
        raise AssertionError("cache hit expected, but the arrays were rebuilt")

    monkeypatch.setattr(demo, "build_demo_arrays", no_build)
    _assert_same(load_demo_arrays(**SMALL, cache_dir=tmp_path / "one"), a)
    assert not [p for p in (tmp_path / "one").iterdir() if p.suffix == ".tmp"]


def test_seed_and_parameters_change_crops_and_cache_key(tmp_path, small):
    other = build_demo_arrays(**{**SMALL, "seed": 1})
    assert not np.array_equal(other.boxes, small.boxes)
    assert not np.array_equal(other.images, small.images)
    load_demo_arrays(**SMALL, cache_dir=tmp_path)
    load_demo_arrays(**{**SMALL, "seed": 1}, cache_dir=tmp_path)
    assert len(_cache_files(tmp_path)) == 2


def test_split_streams_are_independent(small):
    # More validation crops must not change the training crops (each split has its own stream).
    more_val = build_demo_arrays(**{**SMALL, "val_per_photo": 9})
    _assert_same(more_val.select("train"), small.select("train"))
    assert np.array_equal(more_val.select("validation").boxes.reshape(10, 9, 4)[:, :6],
                          small.select("validation").boxes.reshape(10, 6, 4))


def test_split_by_region_never_overlaps(small):
    photos = demo.load_demo_photos()
    train, val = small.select("train"), small.select("validation")
    for label, name in enumerate(DEMO_PHOTOS):
        height, width = photos[name].shape[:2]
        tr = train.boxes[train.labels == label]
        va = val.boxes[val.labels == label]
        assert len(tr) == SMALL["train_per_photo"] and len(va) == SMALL["val_per_photo"]
        for boxes in (tr, va):  # inside the photo, square, at least min_scale of the short side
            assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all()
            assert (boxes[:, 3] <= height).all()
            sides = boxes[:, 2] - boxes[:, 0]
            assert np.array_equal(sides, boxes[:, 3] - boxes[:, 1])
            assert (sides >= round(0.15 * min(height, width))).all()
        # No pixel of any validation box lies in any training box.
        ix = np.minimum(tr[:, None, 2], va[None, :, 2]) - np.maximum(tr[:, None, 0], va[None, :, 0])
        iy = np.minimum(tr[:, None, 3], va[None, :, 3]) - np.maximum(tr[:, None, 1], va[None, :, 1])
        assert not ((ix > 0) & (iy > 0)).any(), name
        # Stronger: they lie on either side of one column.
        assert tr[:, 2].max() <= va[:, 0].min(), name


def test_labels_one_per_photo(small):
    assert small.photos == DEMO_PHOTOS and len(DEMO_PHOTOS) == 10 == len(set(DEMO_PHOTOS))
    assert small.labels.dtype == np.int64 and small.boxes.dtype == np.int64
    for split, per_photo in (("train", 16), ("validation", 6)):
        labels = small.select(split).labels
        assert np.array_equal(np.bincount(labels, minlength=10), np.full(10, per_photo))


def test_images_are_real_photo_content(small):
    assert small.images.dtype == np.uint8 and small.images.shape == (220, 32, 32, 3)
    std = small.images.reshape(len(small.images), -1).astype(np.float64).std(axis=1)
    assert (std > 10).mean() >= 0.95
    # Different photos look different: the per-class mean colours are not all alike.
    means = np.stack([small.images[small.labels == c].mean(axis=(0, 1, 2)) for c in range(10)])
    assert means.std(axis=0).max() > 20


def test_dataset_items(tmp_path):
    ds = DemoImages(split="validation", **SMALL, cache_dir=str(tmp_path))
    assert len(ds) == 60 and ds.num_classes == 10 and ds.classes == list(DEMO_PHOTOS)
    item = ds[7]
    assert set(item) == {"image", "class_label", "index"}
    image = item["image"]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert image.min() >= -1.0 and image.max() <= 1.0 and image.std() > 0.05
    assert item["class_label"].dtype == torch.int64 and item["class_label"].item() == 1
    assert item["index"] == 7
    expected = torch.from_numpy(ds.images[7]).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(image, expected)

    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=8)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["class_label"].dtype == torch.int64

    flipping = DemoImages(split="validation", **SMALL, cache_dir=str(tmp_path), flip=True)
    seen = {bool(torch.equal(flipping[3]["image"], ds[3]["image"])) for _ in range(20)}
    assert seen == {True, False}
    assert any(torch.equal(flipping[3]["image"], ds[3]["image"].flip(-1)) for _ in range(20))


def test_train_split_and_resolution(tmp_path):
    ds = DemoImages(split="train", resolution=16, train_per_photo=3, val_per_photo=1,
                    cache_dir=str(tmp_path))
    assert len(ds) == 30 and ds[0]["image"].shape == (3, 16, 16)
    assert sorted({int(ds[i]["class_label"]) for i in range(len(ds))}) == list(range(10))


def test_unknown_split_is_one_line_error(tmp_path):
    with pytest.raises(ValueError) as err:
        DemoImages(split="val", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "'val'" in message
    assert "train" in message and "validation" in message
    assert not list(tmp_path.iterdir())  # rejected before anything was built


def test_corrupt_cache_is_rebuilt(tmp_path, small):
    load_demo_arrays(**SMALL, cache_dir=tmp_path)
    (path,) = _cache_files(tmp_path)
    for garbage in (b"not an npz file", path.read_bytes()[:200]):
        path.write_bytes(garbage)
        _assert_same(load_demo_arrays(**SMALL, cache_dir=tmp_path), small)
        assert path.stat().st_size > 1000  # rewritten
        assert _cache_files(tmp_path) == [path]


def test_env_var_sets_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "root"))
    assert demo.demo_cache_dir() == tmp_path / "root" / "demo"
    assert demo.demo_cache_dir(tmp_path / "explicit") == tmp_path / "explicit"
    DemoImages(split="train", train_per_photo=1, val_per_photo=1)
    assert len(_cache_files(tmp_path / "root" / "demo")) == 1
    monkeypatch.delenv("MERGEVQ_CACHE")
    assert demo.demo_cache_dir() == demo.Path.home() / ".cache" / "mergevq" / "demo"


def test_unwritable_cache_dir_still_returns_data(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where the cache directory should be: mkdir fails
    with pytest.warns(UserWarning, match="not cached"):
        arrays = load_demo_arrays(resolution=8, train_per_photo=1, val_per_photo=1,
                                  cache_dir=blocker / "demo")
    assert arrays.images.shape == (20, 8, 8, 3)


def test_imports_no_model_code_or_lightning():
    code = (
        "import sys, mergevq.data.demo\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')"
        " or m.startswith(('mergevq.tokenizer', 'mergevq.ar', 'mergevq.training',"
        " 'mergevq.layers'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_shares_the_image_folder_vocabulary(tmp_path):
    """size / views / random_crop / flip / labels mean what they mean for taming's ImageFolder, so one
    task config fits every data set (configs/data/demo.yaml, tests/test_config_groups.py)."""
    small = dict(train_per_photo=2, val_per_photo=1, cache_dir=str(tmp_path))
    ds = DemoImages(split="validation", size=16, views=False, random_crop=False, **small)
    assert ds[0]["image"].shape == (3, 16, 16) and ds.size == ds.resolution == 16
    assert torch.equal(DemoImages(split="validation", resolution=16, **small)[0]["image"], ds[0]["image"])
    unlabelled = DemoImages(split="validation", size=16, labels=False, **small)
    assert {int(unlabelled[i]["class_label"]) for i in range(len(unlabelled))} == {-1}
    assert int(DemoImages(split="validation", size=16, labels=True, **small)[1]["class_label"]) == 1
    for key in ("random_crop",):
        with pytest.raises(ValueError, match=f"{key}=true") as err:
            DemoImages(split="validation", size=16, **{key: True}, **small)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="give only size"):
        DemoImages(split="validation", size=16, resolution=32, **small)
