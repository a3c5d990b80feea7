"""Reconstruction metrics, one value per image: PSNR, SSIM and LPIPS (DESIGN §6).

Every function takes two (B, 3, H, W) batches in [-1, 1] and returns a (B,) float32 tensor on the
inputs' device, so an evaluation pass accumulates per-image rows on the device and averages over
images at the end (the data set's PSNR is the mean of per-image PSNRs, not the PSNR of a pooled
MSE). rFID and codebook usage live in :mod:`mergevq.metrics.fid` and :mod:`mergevq.metrics.codebook`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SSIM_KERNEL_SIZE", "SSIM_SIGMA", "lpips_per_image", "psnr_per_image", "ssim_per_image"]

# SSIM window (Wang et al. 2004): an 11 x 11 Gaussian with sigma 1.5 (torchmetrics' default).
SSIM_SIGMA = 1.5
SSIM_KERNEL_SIZE = 11


def _check_pair(name: str, x: torch.Tensor, y: torch.Tensor, *, images: bool) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name} needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if images and (x.ndim != 4 or x.shape[1] != 3):
        raise ValueError(f"{name} expects (B, 3, H, W) images, got shape {tuple(x.shape)}")
    if x.ndim < 2:
        raise ValueError(f"{name} expects a batch (B, ...), got shape {tuple(x.shape)}")


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each image pair: (B, ...) and (B, ...) images in [-1, 1] -> (B,) float32.

    ``10·log10(4 / MSE)`` per image (peak-to-peak 2 on the [-1, 1] scale, i.e. the usual
    ``10·log10(1 / MSE)`` on the [0, 1] scale). Average the result over images for a data set's PSNR;
    that is not the PSNR of the pooled MSE (one badly reconstructed image moves the pooled value
    much more). No clamping: clamp a reconstruction to [-1, 1] first if it can leave the range.
    Identical images give ``inf``."""
    if x.shape != y.shape:
        raise ValueError(f"psnr_per_image needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim < 2:
        raise ValueError(f"psnr_per_image expects a batch (B, ...), got shape {tuple(x.shape)}")
    mse = (x.detach().float() - y.detach().float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10.0 * torch.log10(4.0 / mse)


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair: (B, 3, H, W) and (B, 3, H, W) in [-1, 1] -> (B,) float32.

    torchmetrics' SSIM with a Gaussian window of :data:`SSIM_KERNEL_SIZE` x :data:`SSIM_KERNEL_SIZE`
    taps, sigma :data:`SSIM_SIGMA`, k1 = 0.01, k2 = 0.03 and data range 2 (the [-1, 1] scale; the
    same values as data range 1 on [0, 1] images). The SSIM map is computed over the whole image
    (reflection padding at the borders) and averaged over pixels and channels. scikit-image crops a
    5-pixel border instead, so its values differ slightly, mostly on small images. No clamping."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair("ssim_per_image", x, y, images=True)
    if min(x.shape[-2:]) < SSIM_KERNEL_SIZE // 2 + 1:
        raise ValueError(f"ssim_per_image needs images of at least {SSIM_KERNEL_SIZE // 2 + 1} pixels a side, "
                         f"got {tuple(x.shape[-2:])}")
    return structural_similarity_index_measure(
        x.detach().float(), y.detach().float(), gaussian_kernel=True, sigma=SSIM_SIGMA,
        kernel_size=SSIM_KERNEL_SIZE, reduction="none", data_range=2.0,
    ).float()


@torch.no_grad()
def lpips_per_image(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS distance of each image pair: (B, 3, H, W) and (B, 3, H, W) in [-1, 1] -> (B,) float32.

    ``model`` is an ``lpips.LPIPS`` from :func:`mergevq.pretrained.load_lpips` (``net="vgg"`` for
    LPIPS-VGG, the number the paper reports), already on the images' device. Computed in float32."""
    _check_pair("lpips_per_image", x, y, images=True)
    return model(x.detach().float(), y.detach().float()).flatten().float()  # (B, 1, 1, 1) -> (B,)
