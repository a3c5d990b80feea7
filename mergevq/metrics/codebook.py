"""Codebook usage of a lookup-free quantizer: how many of the 2^d codes a data set uses and how
evenly (DESIGN §6).

Counting is one ``torch.bincount`` per batch into a (2^d,) int64 histogram that stays on the
device (2 MiB for d = 18); ranks sum their histograms with one all-reduce. From the histogram:

* ``fraction_used`` = codes seen at least once / 2^d (the paper's "codebook usage");
* ``entropy_bits`` = the Shannon entropy of the empirical code distribution, in bits (at most d);
* ``perplexity`` = 2^entropy_bits, the number of equally used codes with the same entropy.

The functions work standalone (:func:`code_counts`, :func:`usage_from_counts`); :class:`CodeUsage`
accumulates them over an evaluation pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mergevq.distributed import all_reduce_sum

__all__ = ["CodeUsage", "CodeUsageStats", "code_counts", "usage_from_counts"]


@dataclass(frozen=True)
class CodeUsageStats:
    """Usage of a codebook of ``num_codes`` codes by ``total`` code occurrences."""

    num_codes: int
    total: int  # tokens counted
    used: int  # distinct codes seen
    fraction_used: float  # used / num_codes
    entropy_bits: float  # entropy of the empirical code distribution (0 when nothing was counted)
    perplexity: float  # 2 ** entropy_bits

    def as_dict(self) -> dict[str, float | int]:
        return {"num_codes": self.num_codes, "total": self.total, "used": self.used,
                "fraction_used": self.fraction_used, "entropy_bits": self.entropy_bits,
                "perplexity": self.perplexity}


def _check_num_codes(num_codes: int) -> None:
    if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 1:
        raise ValueError(f"num_codes must be a positive int, got {num_codes!r}")


def code_counts(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Histogram of code ``indices`` (any shape, integer values in [0, num_codes)) -> (num_codes,)
    int64 on the indices' device."""
    _check_num_codes(num_codes)
    if indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"code indices must be integers, got {indices.dtype}")
    flat = indices.detach().reshape(-1).long()
    try:
        counts = torch.bincount(flat, minlength=num_codes)
    except RuntimeError:  # bincount rejects negative values
        raise ValueError(f"code indices must lie in [0, {num_codes}), got negative values") from None
    if counts.numel() != num_codes:  # a value >= num_codes lengthened the histogram
        raise ValueError(f"code indices must lie in [0, {num_codes}), got values up to {counts.numel() - 1}")
    return counts


def usage_from_counts(counts: torch.Tensor) -> CodeUsageStats:
    """Usage statistics of a (num_codes,) histogram (one host transfer of three scalars)."""
    if counts.ndim != 1 or counts.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D histogram, got shape {tuple(counts.shape)}")
    counts = counts.detach()
    total = counts.sum()
    p = counts.double() / total.clamp(min=1)
    # xlogy: 0 · log 0 = 0 for unused codes
    entropy = -torch.special.xlogy(p, p).sum() / math.log(2.0)
    summary = torch.stack([total.double(), (counts > 0).sum().double(), entropy]).cpu().tolist()
    total_n, used, entropy_bits = int(summary[0]), int(summary[1]), float(summary[2]) + 0.0  # -0.0 -> 0.0
    num_codes = int(counts.numel())
    return CodeUsageStats(num_codes=num_codes, total=total_n, used=used, fraction_used=used / num_codes,
                          entropy_bits=entropy_bits, perplexity=2.0 ** entropy_bits)


class CodeUsage:
    """Accumulates a code histogram over batches on ``device``; ``all_reduce`` sums it over ranks.

    ``usage = CodeUsage(num_codes=2 ** 18, device=device)``; ``usage.update(encoded.indices)`` per
    batch; after the pass ``usage.all_reduce()`` (every rank, once) and ``usage.stats()``."""

    def __init__(self, *, num_codes: int, device: torch.device | str = "cpu") -> None:
        _check_num_codes(num_codes)
        self.num_codes = num_codes
        self.counts = torch.zeros(num_codes, dtype=torch.long, device=device)

    def update(self, indices: torch.Tensor) -> None:
        self.counts += code_counts(indices.to(self.counts.device), self.num_codes)

    def all_reduce(self) -> None:
        """Sum the histograms of all ranks (the identity in a single process)."""
        all_reduce_sum(self.counts)

    def stats(self) -> CodeUsageStats:
        return usage_from_counts(self.counts)
