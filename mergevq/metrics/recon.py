"""Reconstruction metrics (issue #5 extends this file with SSIM, LPIPS, rFID and codebook usage)."""

from __future__ import annotations

import torch

__all__ = ["psnr_per_image"]


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
