"""psnr_per_image (mergevq/metrics/recon.py): hand values and per-image vs pooled averaging."""

import math

import pytest
import torch

from mergevq.metrics.recon import psnr_per_image


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
