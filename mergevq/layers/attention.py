"""Multi-head self-attention with an additive per-key bias, returning the token-merging metric.

Parameter names (``qkv``, ``proj``) match timm's ``Attention`` so that a block built from this layer
has the same state-dict keys as timm's ``Block`` (the DINOv2 initialisation maps onto those names).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class AttentionOutput:
    """``out`` (B, N, D): the projected attention output.
    ``metric`` (B, N, head_dim): the keys averaged over heads, used by bipartite soft matching."""

    out: torch.Tensor
    metric: torch.Tensor


class Attention(nn.Module):
    """Self-attention through ``F.scaled_dot_product_attention``.

    ``key_bias`` (B, N), when given, is added to the attention logits of every query for key j
    (proportional attention passes log(size_j)); without it the call takes SDPA's unmasked fast path.
    """

    def __init__(
        self, *, dim: int, num_heads: int, qkv_bias: bool = True, proj_bias: bool = True
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor, *, key_bias: torch.Tensor | None = None) -> AttentionOutput:
        qkv = self.qkv(x)  # (B, N, 3 * D)
        q, k, v = rearrange(
            qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads
        ).unbind(0)  # each (B, H, N, head_dim)
        mask = None
        if key_bias is not None:
            mask = rearrange(key_bias, "b n -> b 1 1 n").to(q.dtype)  # broadcast over heads, queries
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, N, head_dim)
        out = self.proj(rearrange(out, "b h n d -> b n (h d)"))  # (B, N, D)
        return AttentionOutput(out=out, metric=k.mean(dim=1))  # metric: (B, N, head_dim)
