"""Inception features and the distances computed from them: FID, KID, precision/recall, IS (DESIGN §6).

One feature path for every Inception-based number in the project (rFID in ``evaluate-tokenizer``,
gFID / KID / precision-recall / IS in ``evaluate-generation``, the demo): torch-fidelity's
``FeatureExtractorInceptionV3`` with local weights (``mergevq prepare-weights`` or a user file) and
torch-fidelity's own statistics and distance functions, so a number here equals
``torch_fidelity.calculate_metrics`` on the same images written as PNG folders.

Images stay on their device: :func:`to_uint8_tensor` quantises a float batch exactly as writing
it to PNG would (round, clamp) without a host copy, and features are accumulated on the device
until the end of the pass.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "FeatureStats",
    "InceptionFeatures",
    "fid_from_features",
    "fid_from_stats",
    "feature_stats",
    "inception_score",
    "kid_from_features",
    "precision_recall",
    "to_uint8_tensor",
]

POOL = "2048"
LOGITS = "logits_unbiased"


def to_uint8_tensor(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) floats in [-1, 1] -> (N, 3, H, W) uint8 on the same device: the pixel values a
    PNG of the batch holds (``mergevq.visual.to_uint8`` rounds the same way)."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class InceptionFeatures(nn.Module):
    """Frozen FID Inception: images -> pool3 features (N, 2048) float32 (and the 1008-way logits
    when the weights have the classifier and ``with_logits=True``).

    Accepts float images in [-1, 1] (quantised to uint8 first, like a saved PNG) or uint8 images in
    0..255, any size (the extractor resizes to 299 the way TF1 did)."""

    def __init__(self, *, extractor: nn.Module, with_logits: bool) -> None:
        super().__init__()
        self.extractor = extractor.eval().requires_grad_(False)
        self.with_logits = with_logits

    @classmethod
    def load(
        cls,
        *,
        path: str | os.PathLike | None = None,
        cache_dir: str | os.PathLike | None = None,
        has_classifier: bool = False,
        with_logits: bool = False,
    ) -> InceptionFeatures:
        """From ``path`` (a torch-fidelity InceptionV3 state dict) or the prepared weights under
        ``cache_dir`` / ``$MERGEVQ_CACHE``. ``with_logits`` needs weights with the classifier."""
        from mergevq.pretrained import load_inception_extractor

        features = (POOL, LOGITS) if with_logits else (POOL,)
        extractor = load_inception_extractor(cache_dir, features, path=path, has_classifier=has_classifier)
        return cls(extractor=extractor, with_logits=with_logits)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"InceptionFeatures expects (N, 3, H, W) images, got {tuple(images.shape)}")
        out = self.extractor(to_uint8_tensor(images))
        if self.with_logits:
            return out[0], out[1]
        return out[0]


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a feature set (the ``mu`` / ``sigma`` of an ADM reference batch)."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    count: int

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"mu": self.mu, "sigma": self.sigma}


def feature_stats(features: torch.Tensor) -> FeatureStats:
    """torch-fidelity's statistics of (N, D) features (N >= 2)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID statistics need (N >= 2, D) features, got {tuple(features.shape)}")
    stats = fid_features_to_statistics(features.detach().cpu())
    return FeatureStats(mu=stats["mu"], sigma=stats["sigma"], count=int(features.shape[0]))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between two Gaussians (torch-fidelity's computation)."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    if a.mu.shape != b.mu.shape:
        raise ValueError(f"FID statistics of different widths: {a.mu.shape} vs {b.mu.shape}")
    # torch-fidelity asserts equal dtypes; reference files may store float64 where ours are float32
    dtype_mu = np.result_type(a.mu.dtype, b.mu.dtype)
    dtype_sigma = np.result_type(a.sigma.dtype, b.sigma.dtype)
    first = {"mu": a.mu.astype(dtype_mu), "sigma": a.sigma.astype(dtype_sigma)}
    second = {"mu": b.mu.astype(dtype_mu), "sigma": b.sigma.astype(dtype_sigma)}
    return float(fid_statistics_to_metric(first, second, verbose=False)[KEY_METRIC_FID])


def fid_from_features(a: torch.Tensor, b: torch.Tensor) -> float:
    return fid_from_stats(feature_stats(a), feature_stats(b))


def kid_from_features(generated: torch.Tensor, reference: torch.Tensor, *, subsets: int = 100,
                      subset_size: int = 1000, seed: int = 2020) -> tuple[float, float]:
    """Kernel Inception Distance (mean, std over subsets), torch-fidelity's estimator; the subset
    size is capped at the smaller set."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(generated), len(reference))
    # torch-fidelity's defaults for the kernel: cubic polynomial, gamma 1/D, coef0 1
    out = kid_features_to_metric(generated.detach().cpu(), reference.detach().cpu(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return float(out[KEY_METRIC_KID_MEAN]), float(out[KEY_METRIC_KID_STD])


def precision_recall(generated: torch.Tensor, reference: torch.Tensor, *, neighborhood: int = 3,
                     batch_size: int = 10000) -> tuple[float, float]:
    """Improved precision / recall (Kynkäänniemi et al.) with torch-fidelity's implementation."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    out = prc_features_to_metric(generated.detach().cpu().float(), reference.detach().cpu().float(),
                                 prc_neighborhood=neighborhood, prc_batch_size=batch_size, save_cpu_ram=False,
                                 verbose=False)
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def inception_score(logits: torch.Tensor, *, splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over splits) from the 1008-way unbiased logits."""
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    out = isc_features_to_metric(logits.detach().cpu(), splits=splits, shuffle=True, rng_seed=2020)
    return float(out[KEY_METRIC_ISC_MEAN]), float(out[KEY_METRIC_ISC_STD])
