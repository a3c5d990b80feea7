"""The authors' tokenizer-evaluation protocol (``eval.protocol: official`` of ``mergevq
evaluate-tokenizer``), so that rFID / PSNR / SSIM can be set beside the paper's table.

The project's own protocol (``eval.protocol: ours``, :mod:`mergevq.metrics.recon` and
:mod:`mergevq.metrics.fid`) averages per-image PSNR / SSIM computed on the float reconstructions and
computes rFID with torch-fidelity on images rounded to uint8 (what a PNG holds). The authors'
evaluation script computes the same quantities differently; this module re-computes them their way
(written from a reading of what their script computes, not from its code):

1. The reconstruction is clamped to [-1, 1]; the original is not. Both go to [0, 1] as ``(x + 1) / 2``
   in float32.
2. **8-bit images for PSNR / SSIM**: ``(x01 * 255)`` converted to uint8 by *truncation* (not
   rounding), then divided by 255 again. So the values are up to one grey level below a PNG's, and
   float rounding of ``(u / 127.5 - 1 + 1) / 2 * 255`` makes even decoded 8-bit originals lose one
   level for 95 of the 256 values of ``u`` (float32): a reconstruction that rounds back to exactly
   ``u`` still differs from the original by one level there.
3. **PSNR per batch**: scikit-image's ``peak_signal_noise_ratio`` on the whole batch array (data range
   1), i.e. ``10 log10(1 / MSE)`` of the MSE pooled over every pixel of every image of the batch; the
   data set's PSNR is the unweighted mean over batches (a short last batch weighs as much as a full
   one). The authors' ``--batch_size`` defaults to 25 (their ImageNet launch script keeps it).
   Pooling the MSE before the logarithm never gives more than the mean of the batch's per-image PSNRs
   (Jensen); the gap grows with the spread of the per-image errors.
4. **SSIM per image**: scikit-image's ``structural_similarity`` defaults on the 8-bit images of step 2
   (7 x 7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, data range 1, the 3-pixel border
   dropped, channels averaged), averaged over the batch, then over batches.
5. **rFID**: pytorch-fid's ``InceptionV3`` (FID-Inception weights, the pool3 block, 2048-d) on the
   *float* [0, 1] images (no uint8 step): bilinear ``F.interpolate`` to 299 x 299
   (``align_corners=False``, no antialiasing), then ``2 x - 1``. Features of the originals and of the
   reconstructions of the whole set; ``mu = mean``, ``sigma = np.cov(rowvar=False)`` in numpy; the
   Fréchet distance with ``scipy.linalg.sqrtm`` of ``sigma1 @ sigma2``, retried with ``1e-6`` added to
   both diagonals if that square root is not finite, its imaginary part dropped (an error if a diagonal
   entry's exceeds 1e-3).
6. LPIPS (the mean over images of the per-image distance on the clamped [-1, 1] images) and codebook
   usage are computed the same way in both protocols, so they are not repeated here.

The Inception network is the project's (torch-fidelity's ``FeatureExtractorInceptionV3`` layers with
the FID-Inception weights, the same 2015-12-05 graph pytorch-fid ports); only its input pipeline
differs from :class:`mergevq.metrics.fid.InceptionFeatures` (torch-fidelity rounds to uint8, resizes
like TF1 and normalises with ``(x - 128) / 128``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mergevq.errors import ConfigError

__all__ = [
    "OFFICIAL_BATCH_SIZE",
    "PROTOCOLS",
    "OfficialInceptionFeatures",
    "OfficialProtocol",
    "batch_mean",
    "batch_psnr",
    "check_official_batch_size",
    "check_protocol",
    "frechet_distance",
    "mse_8bit_per_image",
    "official_feature_stats",
    "official_fid_from_features",
    "ssim_8bit_per_image",
    "to_8bit_truncated",
]

PROTOCOLS = ("ours", "official")
OFFICIAL_BATCH_SIZE = 25  # the authors' evaluation.py --batch_size default (their launch script keeps it)
INCEPTION_SIZE = 299
SSIM_WINDOW = 7  # scikit-image's default uniform window
SSIM_K1, SSIM_K2 = 0.01, 0.03
FRECHET_EPS = 1e-6
FEATURE_LAYER = "2048"  # pool3, what the authors use (tests patch a cheaper layer)
# the features pytorch-fid's blocks end on, as torch-fidelity's extractor names them (the authors use "2048")
_LAYERS = ("64", "192", "768", "2048")


def check_protocol(value: object, key: str = "eval.protocol") -> str:
    """``ours`` or ``official``; anything else is a one-line ConfigError naming ``key``."""
    if not isinstance(value, str) or value not in PROTOCOLS:
        raise ConfigError(f"{key}={value!r}: expected one of {', '.join(PROTOCOLS)}")
    return value


def check_official_batch_size(value: object, key: str = "eval.official_batch_size") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected a positive integer (the authors' batch size, "
                          f"{OFFICIAL_BATCH_SIZE})")
    return value


# ---------------------------------------------------------------------------------------------------
# PSNR / SSIM on truncated 8-bit images


def to_8bit_truncated(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) floats in [-1, 1] -> uint8 the authors' way: ``(x + 1) / 2 * 255`` in float32,
    truncated toward zero (not rounded). Values outside [-1, 1] are held at 0 / 255 (the authors
    clamp the reconstruction beforehand; the originals are in range)."""
    x01 = (images.detach().float() + 1) / 2
    return (x01 * 255.0).clamp(0, 255).to(torch.uint8)


def mse_8bit_per_image(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image MSE on the [0, 1] scale of the truncated 8-bit images: (B,) float64 on the inputs'
    device. Exact (integer squared differences / 255²); scikit-image's float32 differences agree to
    ~1e-7 relative."""
    _check_pair("mse_8bit_per_image", rec, x)
    diff = to_8bit_truncated(rec).to(torch.int64) - to_8bit_truncated(x).to(torch.int64)
    sq = diff.pow(2).flatten(1).sum(dim=1)  # (B,) int64, exact
    return sq.double() / (diff[0].numel() * 255.0 ** 2)


def ssim_8bit_per_image(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """scikit-image's ``structural_similarity(a, b, data_range=1.0, channel_axis=-1)`` with its
    defaults (7 x 7 uniform window, sample covariance, K1 0.01, K2 0.03) on the truncated 8-bit
    images / 255, per image: (B,) float32 on the inputs' device.

    scikit-image filters the whole image and then drops a 3-pixel border, so every value it keeps
    comes from a window inside the image: a 7 x 7 average pool without padding computes exactly
    those values (float32 like scikit-image; ~1e-6 from its results)."""
    _check_pair("ssim_8bit_per_image", rec, x)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim_8bit_per_image needs images of at least {SSIM_WINDOW} pixels a side, "
                         f"got {tuple(x.shape[-2:])}")
    a = to_8bit_truncated(rec).float() / 255.0
    b = to_8bit_truncated(x).float() / 255.0

    def mean(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, kernel_size=SSIM_WINDOW, stride=1)

    n = SSIM_WINDOW * SSIM_WINDOW
    cov_norm = n / (n - 1)  # sample covariance
    ua, ub = mean(a), mean(b)
    va = cov_norm * (mean(a * a) - ua * ua)
    vb = cov_norm * (mean(b * b) - ub * ub)
    vab = cov_norm * (mean(a * b) - ua * ub)
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.double().mean(dim=(2, 3)).mean(dim=1).float()  # per channel, then over channels


def _groups(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def batch_psnr(mse: torch.Tensor | np.ndarray | Sequence[float], batch_size: int = OFFICIAL_BATCH_SIZE) -> float:
    """The authors' data-set PSNR from per-image MSEs (on the [0, 1] scale, in data-set order):
    consecutive batches of ``batch_size`` images (the last one may be shorter), ``10 log10(1 / MSE)`` of
    each batch's pooled MSE (equal-size images: the mean of its images' MSEs), averaged over batches.
    A batch of identical images has an infinite PSNR (so then has the result)."""
    values = np.asarray(torch.as_tensor(mse).detach().cpu().double(), dtype=np.float64)
    check_official_batch_size(batch_size, "batch_size")
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"batch_psnr expects a non-empty 1-d array of per-image MSEs, got shape {values.shape}")
    with np.errstate(divide="ignore"):
        psnrs = [10.0 * np.log10(1.0 / values[g].mean()) for g in _groups(values.size, batch_size)]
    return float(np.mean(psnrs))


def batch_mean(values: torch.Tensor | np.ndarray | Sequence[float], batch_size: int = OFFICIAL_BATCH_SIZE) -> float:
    """Mean over consecutive batches of ``batch_size`` of each batch's mean (the authors' SSIM / PSNR
    averaging; equals the plain mean unless the last batch is shorter)."""
    arr = np.asarray(torch.as_tensor(values).detach().cpu().double(), dtype=np.float64)
    check_official_batch_size(batch_size, "batch_size")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"batch_mean expects a non-empty 1-d array, got shape {arr.shape}")
    return float(np.mean([arr[g].mean() for g in _groups(arr.size, batch_size)]))


def _check_pair(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ValueError(f"{name} needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects (B, 3, H, W) images, got shape {tuple(x.shape)}")


# ---------------------------------------------------------------------------------------------------
# Inception features and Fréchet distance


class OfficialInceptionFeatures(nn.Module):
    """FID-Inception fed the way pytorch-fid's ``InceptionV3`` feeds it: (B, 3, H, W) floats in
    [-1, 1] -> ``(x + 1) / 2`` (no uint8 step) -> bilinear resize to 299 x 299 (``align_corners=False``,
    no antialiasing) -> ``2 x - 1`` -> the network -> (B, D) float32 features.

    ``extractor`` is torch-fidelity's ``FeatureExtractorInceptionV3`` (its layers and weights are
    used, its uint8 input path is not). ``layer``: "2048" (pool3, the authors' choice) or, for cheap
    tests, "64" / "192" / "768" (the spatial mean of that block's output)."""

    def __init__(self, *, extractor: nn.Module, layer: str = "2048") -> None:
        super().__init__()
        if layer not in _LAYERS:
            raise ValueError(f"layer={layer!r}: expected one of {', '.join(_LAYERS)}")
        self.extractor = extractor.eval().requires_grad_(False)
        self.layer = layer

    @classmethod
    def load(cls, *, path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
             layer: str | None = None) -> OfficialInceptionFeatures:
        """The project's Inception weights: ``path`` (a torch-fidelity InceptionV3 state dict) or the
        ones ``mergevq prepare-weights`` wrote; ``layer`` None: :data:`FEATURE_LAYER` (pool3)."""
        from mergevq.pretrained import load_inception_extractor

        layer = FEATURE_LAYER if layer is None else layer
        return cls(extractor=load_inception_extractor(cache_dir, (layer,), path=path), layer=layer)

    @staticmethod
    def preprocess(images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] floats -> the network input (B, 3, 299, 299) in float32."""
        x01 = (images.detach().float() + 1) / 2
        x01 = F.interpolate(x01, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
        return 2 * x01 - 1

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"OfficialInceptionFeatures expects (B, 3, H, W) images, got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            raise ValueError("OfficialInceptionFeatures takes float images in [-1, 1], not uint8")
        return self.features_from_input(self.preprocess(images))

    @torch.no_grad()
    def features_from_input(self, x: torch.Tensor) -> torch.Tensor:
        """The network on an already prepared (B, 3, 299, 299) input in [-1, 1]."""
        net = self.extractor
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            x = net.MaxPool_1(net.Conv2d_2b_3x3(net.Conv2d_2a_3x3(net.Conv2d_1a_3x3(x))))
            if self.layer == "64":
                return F.adaptive_avg_pool2d(x, 1).flatten(1).float()
            x = net.MaxPool_2(net.Conv2d_4a_3x3(net.Conv2d_3b_1x1(x)))
            if self.layer == "192":
                return F.adaptive_avg_pool2d(x, 1).flatten(1).float()
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                         "Mixed_6e"):
                x = getattr(net, name)(x)
            if self.layer == "768":
                return F.adaptive_avg_pool2d(x, 1).flatten(1).float()
            x = net.Mixed_7c(net.Mixed_7b(net.Mixed_7a(x)))
            return F.adaptive_avg_pool2d(x, 1).flatten(1).float()  # pool3: (B, 2048)


def official_feature_stats(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu, sigma) as the authors compute them: ``np.mean(axis=0)`` of the float32
    features (float32) and ``np.cov(rowvar=False)`` (float64). N >= 2."""
    arr = features.detach().cpu().float().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"FID statistics need (N >= 2, D) features, got shape {arr.shape}")
    return np.mean(arr, axis=0), np.cov(arr, rowvar=False)


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    from scipy import linalg

    with warnings.catch_warnings():  # singular / ill-conditioned products are handled below, like theirs
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(matrix)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, *,
                     eps: float = FRECHET_EPS) -> float:
    """``|mu1 - mu2|² + tr(sigma1) + tr(sigma2) - 2 tr(sqrtm(sigma1 sigma2))`` with the matrix square
    root of scipy; if it is not finite, retried on ``(sigma1 + eps I)(sigma2 + eps I)``. A complex
    root whose diagonal has an imaginary part above 1e-3 is an error; a smaller one is dropped."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"FID statistics of different shapes: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    root = _sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(root).all():
        offset = np.eye(sigma1.shape[0]) * eps
        root = _sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(root):
        if not np.allclose(np.diagonal(root).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the matrix square root has an imaginary part of up to "
                             f"{np.max(np.abs(root.imag)):.3g} (degenerate feature statistics)")
        root = root.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root))


def official_fid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """The authors' FID between two (N, D) feature sets."""
    mu1, sigma1 = official_feature_stats(a)
    mu2, sigma2 = official_feature_stats(b)
    return frechet_distance(mu1, sigma1, mu2, sigma2)


# ---------------------------------------------------------------------------------------------------
# Inside the evaluation pass (mergevq.inference.tokenizer_eval.evaluate_tokenizer)


@dataclass(frozen=True)
class OfficialProtocol:
    """``eval.protocol: official`` for the evaluation pass: ``batch_size`` images per PSNR / SSIM
    group (the authors' 25) and ``inception`` (the authors' input path) for rFID, None for none."""

    batch_size: int = OFFICIAL_BATCH_SIZE
    inception: OfficialInceptionFeatures | None = None

    def __post_init__(self) -> None:
        check_official_batch_size(self.batch_size)

    @staticmethod
    def prepare(rec: torch.Tensor) -> torch.Tensor:
        """A (B, 3, H, W) reconstruction as the authors score it: a non-finite image becomes white
        (they whiten the whole batch), then clamped to [-1, 1]."""
        rec = rec.float()
        finite = torch.isfinite(rec).flatten(1).all(dim=1).view(-1, 1, 1, 1)
        return torch.where(finite, rec, torch.ones_like(rec)).clamp(-1, 1)

    @staticmethod
    def image_rows(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B, 2) float64: per image, the 8-bit MSE and SSIM of a prepared reconstruction."""
        return torch.stack([mse_8bit_per_image(rec, x), ssim_8bit_per_image(rec, x).double()], dim=1)

    def summarize(self, rows: torch.Tensor) -> tuple[float, float]:
        """(N, 2) rows of the whole set in data-set order -> (batch PSNR, batch-mean SSIM)."""
        return batch_psnr(rows[:, 0], self.batch_size), batch_mean(rows[:, 1], self.batch_size)
