"""Rotary position embeddings (RoPE), 1D and 2D (LlamaGen's 2D form for a raster grid).

A head of width ``head_dim`` is viewed as ``head_dim / 2`` adjacent pairs ``(x_2p, x_2p+1)``; pair ``p``
is rotated by the angle ``pos_p · freq_p``. In 2D the first half of the pairs rotates with the row and
the second half with the column, each with ``head_dim / 4`` frequencies ``base^(-2f / (head_dim / 2))``.
Tables hold ``cos`` and ``sin`` per position and pair, shape ``(N, head_dim / 2)``; a row of cos = 1,
sin = 0 is the identity (used for prefix tokens that have no grid position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RopeTable:
    cos: torch.Tensor  # (N, head_dim / 2)
    sin: torch.Tensor  # (N, head_dim / 2)

    def __getitem__(self, index) -> RopeTable:
        return RopeTable(cos=self.cos[index], sin=self.sin[index])


def _frequencies(num: int, dim: int, base: float) -> torch.Tensor:
    return base ** (-torch.arange(0, num, dtype=torch.float64) * 2 / dim)  # (num,)


def rope_2d(*, grid: tuple[int, int], head_dim: int, base: float = 10000.0, identity_prefix: int = 0) -> RopeTable:
    """Table for ``identity_prefix`` unrotated positions followed by the ``grid`` in raster order:
    ``(identity_prefix + H·W, head_dim / 2)``."""
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    h, w = grid
    quarter = head_dim // 4
    freqs = _frequencies(quarter, head_dim // 2, base)  # (head_dim/4,)
    rows = torch.arange(h, dtype=torch.float64).repeat_interleave(w)  # (H·W,) raster order
    cols = torch.arange(w, dtype=torch.float64).repeat(h)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (H·W, head_dim/2)
    angles = torch.cat([angles.new_zeros(identity_prefix, head_dim // 2), angles])
    return RopeTable(cos=angles.cos().float(), sin=angles.sin().float())


def rope_1d(*, length: int, head_dim: int, base: float = 10000.0) -> RopeTable:
    """Table for positions ``0..length-1``: ``(length, head_dim / 2)``."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    freqs = _frequencies(head_dim // 2, head_dim, base)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs
    return RopeTable(cos=angles.cos().float(), sin=angles.sin().float())


def apply_rope(x: torch.Tensor, table: RopeTable) -> torch.Tensor:
    """Rotate ``x`` (..., N, head_dim) by ``table`` (N, head_dim / 2) (or broadcastable, e.g.
    (B, 1, N, head_dim / 2)). Computed in fp32, returned in x's dtype."""
    pairs = x.float().unflatten(-1, (-1, 2))  # (..., N, head_dim/2, 2)
    x0, x1 = pairs.unbind(-1)
    cos, sin = table.cos.to(x.device), table.sin.to(x.device)
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
