"""Decoding every image mode to RGB; unreadable files give None; transforms and multi-views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data_images import write_bad_images, write_good_images
from PIL import Image

from taming.data.image_io import load_rgb, to_rgb
from taming.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    MultiView,
    random_resized_crop_box,
)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("io"))
    return write_good_images(folder), write_bad_images(folder)


def test_every_readable_mode_becomes_rgb(images):
    good, _ = images
    for name, path in good.items():
        img = load_rgb(path)
        assert img is not None, name
        assert img.mode == "RGB", name


def test_unreadable_files_give_none(images, tmp_path):
    _, bad = images
    for path in bad.values():
        assert load_rgb(path) is None
    assert load_rgb(tmp_path / "missing.png") is None
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert load_rgb(empty) is None


def test_sixteen_bit_gradient_stays_a_gradient(images):
    good, _ = images
    with Image.open(good["grey16.png"]) as raw:
        assert raw.mode.startswith("I")
    row = np.asarray(load_rgb(good["grey16.png"]))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    assert len(np.unique(row)) > 40  # 50 distinct 16-bit levels, not saturated


def test_alpha_is_composited_over_white(images):
    good, _ = images
    arr = np.asarray(load_rgb(good["rgba.png"]))
    assert (arr[:10, :10] == 255).all()  # fully transparent corner → white
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    assert np.asarray(to_rgb(Image.fromarray(rgba, "RGBA")))[0, 0].tolist() == [200, 0, 0]


def test_palette_with_transparency_and_other_modes():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    pal.info["transparency"] = 1
    assert np.asarray(to_rgb(pal))[0, 0].tolist() == [255, 255, 255]
    floats = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4), mode="F")
    out = np.asarray(to_rgb(floats))[..., 0].ravel()
    assert out[0] == 0 and out[-1] == 255
    ints = Image.fromarray(np.arange(16, dtype=np.int32).reshape(4, 4) * 4000, mode="I")
    out = np.asarray(to_rgb(ints))[..., 0].ravel()
    assert out[-1] == round(60000 / 257) and np.all(np.diff(out.astype(int)) >= 0)
    assert to_rgb(Image.new("LA", (2, 2), (10, 255))).getpixel((0, 0)) == (10, 10, 10)


def test_image_transform_range_and_shape(images):
    good, _ = images
    for train in (False, True):
        transform = ImageTransform(size=32, random_crop=train, flip=train)
        for path in good.values():
            x = transform(load_rgb(path))
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32
            assert x.min() >= -1.0 and x.max() <= 1.0


def test_eval_transform_is_centre_crop_of_short_side():
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 20:40] = 255  # white centre square of a wide image
    x = ImageTransform(size=20)(Image.fromarray(arr))
    assert torch.allclose(x, torch.ones_like(x), atol=1e-6)


def test_multiview_keys_shapes_and_normalisation(images):
    good, _ = images
    view = MultiView(size=32, view_size=28)
    for path in good.values():  # includes the 3x3 image: upscaled
        out = view(load_rgb(path))
        assert set(out) == {"image", "teacher_image", "student_image"}
        assert out["image"].shape == (3, 32, 32)
        assert out["teacher_image"].shape == (3, 28, 28)
        assert out["student_image"].shape == (3, 28, 28)
        for key in ("image", "student_image"):
            assert out[key].min() >= -1 and out[key].max() <= 1
    white = MultiView(size=16, view_size=16)(Image.new("RGB", (20, 20), (255, 255, 255)))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white["teacher_image"][:, 5, 5], expected, atol=1e-5)


def test_multiview_default_sizes_and_determinism(images):
    good, _ = images
    img = load_rgb(good["rgb.jpg"])
    view = MultiView()
    a = view(img, torch.Generator().manual_seed(3))
    b = view(img, torch.Generator().manual_seed(3))
    c = view(img, torch.Generator().manual_seed(4))
    assert a["image"].shape == (3, 256, 256) and a["teacher_image"].shape == (3, 224, 224)
    assert a["student_image"].shape == (3, 224, 224)
    for key in a:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["student_image"], c["student_image"])


def test_random_resized_crop_box_respects_bounds():
    g = torch.Generator().manual_seed(0)
    for w, h in [(3, 3), (100, 40), (1, 50)]:
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(w, h, scale=(0.08, 1.0), generator=g)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h
