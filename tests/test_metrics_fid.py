"""rFID path (mergevq/metrics/fid.py as evaluate-tokenizer uses it): our FID equals torch-fidelity's
``calculate_metrics`` on the same two PNG folders, a set against itself gives ~0, and features of
in-memory float images equal those of the PNGs they would be saved as.

Offline: a randomly initialised Inception in torch-fidelity's layout (tests/_eval_weights.py). The
distances are compared on torch-fidelity's 64-d feature layer ("64", the same extractor stopped after
its first blocks): a 2048-d FID costs one 2048 x 2048 non-symmetric eigen-decomposition, 10-40 s on
this 2-core machine, while the computation is the same code for any width. The 2048-d pool3
features themselves are checked against PNG round trips.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _eval_weights import write_random_inception
from PIL import Image

from mergevq.metrics.fid import (
    InceptionFeatures,
    feature_stats,
    fid_from_features,
    fid_from_stats,
    to_uint8_tensor,
)
from mergevq.pretrained import load_inception_extractor
from mergevq.visual import save_png, to_uint8

N = 8


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    return write_random_inception(tmp_path_factory.mktemp("inception") / "pt_inception.pth")


@pytest.fixture(scope="module")
def inception(inception_file):
    return InceptionFeatures.load(path=inception_file)


@pytest.fixture(scope="module")
def inception64(inception_file):
    """The same weights, features from torch-fidelity's "64" layer (cheap FIDs)."""
    return InceptionFeatures(extractor=load_inception_extractor(None, ("64",), path=inception_file),
                             with_logits=False)


def _smooth_images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """(n, 3, size, size) in [-1, 1]: upsampled low-resolution noise, i.e. image-like smooth colour
    fields (not quantised: float pixels between PNG levels)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def _write_folder(images: torch.Tensor, folder) -> None:
    for i, pixels in enumerate(to_uint8(images)):
        save_png(pixels, folder / f"{i:03d}.png")


def _read_folder(folder) -> torch.Tensor:
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, 3, H, W) uint8


def test_to_uint8_tensor_matches_png_pixels(tmp_path):
    images = _smooth_images(3, seed=1)
    _write_folder(images, tmp_path)
    on_device = to_uint8_tensor(images)
    assert on_device.dtype == torch.uint8 and on_device.device == images.device
    assert torch.equal(on_device, _read_folder(tmp_path))


def test_float_images_give_the_features_of_their_pngs(tmp_path, inception):
    images = _smooth_images(2, seed=2)
    _write_folder(images, tmp_path)
    from_floats = inception(images)
    from_png = inception(_read_folder(tmp_path))
    assert from_floats.shape == (2, 2048) and from_floats.dtype == torch.float32
    assert torch.allclose(from_floats, from_png, atol=1e-5)
    assert from_floats.std(dim=0).mean() > 1e-3  # the stand-in separates images (else every FID is 0)


def test_fid_equals_torch_fidelity_on_folders_and_self_fid_is_zero(tmp_path, inception64, inception_file):
    from torch_fidelity import calculate_metrics

    first, second = tmp_path / "originals", tmp_path / "reconstructions"
    originals = _smooth_images(N, seed=3)
    reconstructions = (0.5 * originals + 0.5 * _smooth_images(N, seed=4)).clamp(-1, 1)  # lower contrast
    _write_folder(originals, first)
    _write_folder(reconstructions, second)

    theirs = calculate_metrics(
        input1=str(first), input2=str(second), fid=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(inception_file), cache=False, verbose=False, cuda=False,
        batch_size=N, save_cpu_ram=True, feature_layer_fid="64",
    )["frechet_inception_distance"]
    a, b = inception64(originals), inception64(reconstructions)  # float images, quantised like the PNGs
    assert a.shape == (N, 64)
    ours = fid_from_features(a, b)
    assert theirs > 0.5  # a non-trivial distance, so the comparison means something
    assert ours == pytest.approx(theirs, abs=1e-3)

    stats = feature_stats(a)
    assert fid_from_stats(stats, stats) == pytest.approx(0.0, abs=1e-3)
