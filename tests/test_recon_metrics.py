"""Per-image reconstruction metrics (mergevq/metrics/recon.py): PSNR hand values and per-image vs
pooled averaging; SSIM against scikit-image; LPIPS of identical and different images (with the real
VGG weights when `mergevq prepare-weights` has run, skipped otherwise)."""

import itertools
import math
from pathlib import Path

import pytest
import torch

from mergevq.metrics.recon import lpips_per_image, psnr_per_image, ssim_per_image


def test_hand_values():
    x = torch.zeros(3, 3, 4, 4)
    y = x.clone()
    y[0] += 0.2  # MSE 0.04 on [-1, 1] -> 10 log10(4 / 0.04) = 20 dB
    y[1] += 0.02  # MSE 4e-4 -> 40 dB
    y[2, 0] += 2.0  # one of three channels off by the full range: MSE 4/3 -> 10 log10(3)
    psnr = psnr_per_image(y, x)
    assert psnr.shape == (3,) and psnr.dtype == torch.float32
    assert psnr.tolist() == pytest.approx([20.0, 40.0, 10 * math.log10(3)], abs=1e-4)
    # the [0, 1] convention gives the same numbers
    x01, y01 = (x + 1) / 2, (y + 1) / 2
    mse01 = (x01 - y01).pow(2).flatten(1).mean(1)
    assert psnr.tolist() == pytest.approx((10 * torch.log10(1 / mse01)).tolist(), abs=1e-4)


def test_symmetric_and_identical_is_inf():
    x, y = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    assert torch.allclose(psnr_per_image(x, y), psnr_per_image(y, x))
    assert torch.isinf(psnr_per_image(x, x)).all()


def test_mean_of_per_image_differs_from_pooled_psnr():
    x = torch.zeros(2, 3, 4, 4)
    y = x.clone()
    y[0] += 0.2  # 20 dB
    y[1] += 0.002  # 60 dB
    per_image = psnr_per_image(y, x)
    pooled = 10 * torch.log10(4 / (y - x).pow(2).mean())  # PSNR of the batch's pooled MSE
    assert float(per_image.mean()) == pytest.approx(40.0, abs=1e-3)
    assert float(pooled) == pytest.approx(10 * math.log10(4 / ((0.04 + 4e-6) / 2)), abs=1e-3)  # ~23 dB
    assert float(per_image.mean()) - float(pooled) > 15


def test_shape_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        psnr_per_image(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="batch"):
        psnr_per_image(torch.zeros(4), torch.zeros(4))


# ---- SSIM ------------------------------------------------------------------------------------------


def _smooth(n: int, seed: int, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(-1, 1)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    x = _smooth(2, seed=0)
    assert torch.allclose(ssim_per_image(x, x), torch.ones(2), atol=1e-6)
    noise = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    values = [ssim_per_image(x, (x + s * noise).clamp(-1, 1)) for s in (0.02, 0.1, 0.5)]
    for a, b in itertools.pairwise(values):
        assert (a > b).all()
    assert torch.allclose(ssim_per_image(x, x + 0.1 * noise), ssim_per_image(x + 0.1 * noise, x), atol=1e-6)


def test_ssim_is_per_image_and_matches_scikit_image_away_from_the_border():
    from skimage.metrics import structural_similarity

    x, y = _smooth(3, seed=2, size=48), _smooth(3, seed=3, size=48)
    batch = ssim_per_image(x, y)
    assert batch.shape == (3,) and batch.dtype == torch.float32
    one_by_one = torch.cat([ssim_per_image(x[i:i + 1], y[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, one_by_one, atol=1e-6)
    # scikit-image with the Wang et al. settings (Gaussian sigma 1.5, data range 2) averages the same
    # SSIM map over the interior only; smooth images keep the border's share small
    for i in range(3):
        ref = structural_similarity(x[i].permute(1, 2, 0).numpy(), y[i].permute(1, 2, 0).numpy(), channel_axis=2,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=2.0)
        assert float(batch[i]) == pytest.approx(ref, abs=0.05)


def test_ssim_shape_errors():
    with pytest.raises(ValueError, match="equal shapes"):
        ssim_per_image(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ssim_per_image(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="at least"):
        ssim_per_image(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))


# ---- LPIPS -----------------------------------------------------------------------------------------


def test_lpips_per_image_with_the_stand_in_network():
    from mergevq.pretrained import load_lpips

    model = load_lpips("vgg", random_init=True)
    x, y = _smooth(2, seed=4), _smooth(2, seed=5)
    same = lpips_per_image(model, x, x)
    assert same.shape == (2,) and same.dtype == torch.float32
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)
    batch = lpips_per_image(model, x, y)
    assert (batch > 0).all()
    assert torch.allclose(batch, torch.cat([lpips_per_image(model, x[i:i + 1], y[i:i + 1]) for i in range(2)]),
                          atol=1e-5)


def _photo(name: str, size: int = 128) -> torch.Tensor:
    """A real photo from scikit-image, short side resized to ``size`` and centre-cropped: (1, 3, s, s)."""
    from PIL import Image
    from skimage import data as skdata

    from taming.data.transforms import ImageTransform

    return ImageTransform(size=size, random_crop=False, flip=False)(Image.fromarray(getattr(skdata, name)()))[None]


@pytest.mark.skipif(not (Path.home() / ".cache" / "mergevq" / "weights" / "lpips" / "vgg.pth").is_file(),
                    reason="needs the real LPIPS-VGG weights (mergevq prepare-weights)")
def test_lpips_with_the_real_vgg_weights():
    from mergevq.pretrained import load_lpips

    model = load_lpips("vgg", cache_dir=Path.home() / ".cache" / "mergevq" / "weights")
    astronaut, cat = _photo("astronaut"), _photo("chelsea")
    assert float(lpips_per_image(model, astronaut, astronaut)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(lpips_per_image(model, astronaut, cat)[0]) > 0.3
