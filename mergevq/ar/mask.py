"""MergeAR's attention policy (DESIGN §5): which earlier entries a query may attend to.

Sequence layout. The transformer input is ``[prefix (P entries), t_1, ..., t_{L-1}]`` (``S = P + L - 1``
entries); the hidden state at the last prefix entry predicts ``t_1`` and the hidden state at ``t_i``
predicts ``t_{i+1}``. Sequence index ``s = P + i - 1`` holds token position ``i`` (1-based).

Duplicate rule. Token position ``j`` is a *duplicate* if ``t_j`` equals an earlier token's index
(merged positions always are); otherwise it is the *first occurrence* of its index (a unique token).

Visibility. A query at token position ``i`` (the entry of ``t_i``, predicting ``t_{i+1}``) sees key entry
``j`` iff ``j <= i`` and one of

* ``j`` is a prefix entry;
* ``t_j`` is a first occurrence (unique tokens are never evicted);
* ``i - j < window``: the last ``window`` tokens, the query's own entry included. The default window is
  one grid row, so the token directly above the predicted one (``i + 1 - grid_w``) is always in view.

Prefix queries see the prefix causally. ``window=None`` is plain causal attention (the LlamaGen
baseline). This is exactly what the compressed KV cache keeps at inference: when query ``i`` runs,
the cache holds the prefix, every unique token so far and the ``window`` most recent tokens (its own
K/V included: it is written before it attends); the duplicate at ``i - window`` is evicted just before
step ``i`` (tests/test_ar_cache.py checks logits equality).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def first_occurrence(indices: Tensor) -> Tensor:
    """``(B, N)`` indices -> ``(B, N)`` bool, True where the index did not occur at an earlier position.

    Sort-based, O(N log N) per row: a stable sort keeps equal indices in position order, so the first
    of each run of equal values in sorted order is the earliest position with that index."""
    sorted_values, order = torch.sort(indices, dim=1, stable=True)  # (B, N)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    return torch.empty_like(starts).scatter_(1, order, starts)


def is_duplicate(history: Tensor, new: Tensor) -> Tensor:
    """The inference-time check: ``history`` (B, n) indices generated so far, ``new`` (B,) -> (B,) bool,
    True where ``new`` already occurs in its row of ``history``."""
    if history.shape[1] == 0:
        return torch.zeros_like(new, dtype=torch.bool)
    return (history == new[:, None]).any(dim=1)


@dataclass(frozen=True)
class MaskPolicy:
    """``prefix``: number of prefix entries P; ``window``: recent-token window w (>= 1), or None for
    plain causal attention (no eviction)."""

    prefix: int
    window: int | None

    def __post_init__(self) -> None:
        if self.prefix < 1:
            raise ValueError(f"the prefix holds at least the class token, got prefix={self.prefix}")
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 (the query's own entry) or None, got {self.window}")

    @property
    def is_causal(self) -> bool:
        return self.window is None

    def training_mask(self, indices: Tensor) -> Tensor | None:
        """``indices`` (B, L) -> boolean attention mask (B, 1, S, S), True = may attend, for the input
        ``[prefix, t_1..t_{L-1}]``; None for plain causal (use SDPA's ``is_causal``)."""
        if self.window is None:
            return None
        batch, length = indices.shape
        size = self.prefix + length - 1
        device = indices.device
        token_pos = torch.arange(size, device=device) - self.prefix + 1  # (S,) token position; <= 0: prefix
        causal = token_pos[None, :] <= token_pos[:, None]  # (S_q, S_k)
        recent = (token_pos[:, None] - token_pos[None, :]) < self.window  # (S_q, S_k)
        keep_key = torch.ones(batch, size, dtype=torch.bool, device=device)  # (B, S_k)
        keep_key[:, self.prefix:] = first_occurrence(indices)[:, : length - 1]  # prefix and unique tokens
        mask = causal & (recent | keep_key[:, None, :])  # (B, S_q, S_k)
        return mask[:, None]  # (B, 1, S_q, S_k), broadcast over heads
