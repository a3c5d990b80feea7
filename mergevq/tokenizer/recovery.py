"""Source recovery: from K kept tokens back to the L-position raster grid (DESIGN §4 step 5).

Two ways to get the L-token map the decoder needs:

* :func:`unmerge` — the assignment is known (the encoder returned it): a gather,
  ``z_L[b, l] = z_K[b, assign[b, l]]``.
* :class:`LearnedRecovery` — the assignment is not known (a K-token sequence from elsewhere):
  L learnable position queries cross-attend to the K quantized tokens and score every kept token
  for every position; ``predict`` takes the argmax. It is trained by the caller with
  ``F.cross_entropy(logits.transpose(1, 2), assign)`` against the encoder's true assignment, and
  :func:`assignment_accuracy` is the metric to log.

The K tokens arrive in the canonical order of DESIGN §4 step 2 (raster order of the first position
each covers), so a token's rank k in the sequence carries position information; the module embeds it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import Mlp
from timm.models.vision_transformer import Attention
from torch import nn

__all__ = ["LearnedRecovery", "assignment_accuracy", "unmerge"]


def unmerge(tokens: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Expand kept tokens to the full grid: ``out[b, l] = tokens[b, assign[b, l]]``.

    Args:
        tokens: (B, K, C) kept (merged) tokens, in canonical order.
        assign: (B, L) integer, values in [0, K): the kept token holding each original position.

    Returns:
        (B, L, C) tokens in raster order; positions merged together share the same vector.
    """
    if tokens.ndim != 3:
        raise ValueError(f"unmerge: tokens must be (B, K, C), got shape {tuple(tokens.shape)}")
    if assign.ndim != 2:
        raise ValueError(f"unmerge: assign must be (B, L), got shape {tuple(assign.shape)}")
    if assign.shape[0] != tokens.shape[0]:
        raise ValueError(f"unmerge: batch sizes differ: tokens {tokens.shape[0]} vs assign {assign.shape[0]}")
    if assign.dtype.is_floating_point or assign.dtype == torch.bool or assign.is_complex():
        raise TypeError(f"unmerge: assign must be an integer tensor, got {assign.dtype}")
    index = repeat(assign.long(), "b l -> b l c", c=tokens.shape[2])  # (B, L, C)
    return torch.gather(tokens, dim=1, index=index)  # (B, L, C)


def assignment_accuracy(logits: torch.Tensor, assign: torch.Tensor) -> torch.Tensor:
    """Fraction of positions whose argmax token equals the true one. logits (B, L, K), assign (B, L)."""
    return (logits.argmax(dim=-1) == assign).float().mean()


class _CrossAttention(nn.Module):
    """Multi-head attention of queries (B, L, D) over a context (B, K, D), through SDPA."""

    def __init__(self, *, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b l (h e) -> b h l e", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b k (two h e) -> two b h k e", two=2, h=self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, head_dim)
        return self.proj(rearrange(out, "b h l e -> b l (h e)"))


class _RecoveryBlock(nn.Module):
    """Pre-LN [self-attention among queries (optional)] + cross-attention to tokens + MLP."""

    def __init__(self, *, dim: int, num_heads: int, mlp_ratio: float, self_attention: bool) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim) if self_attention else None
        self.self_attn = Attention(dim, num_heads=num_heads, qkv_bias=True) if self_attention else None
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross_attn = _CrossAttention(dim=dim, num_heads=num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """queries (B, L, D), tokens (B, K, D) -> (B, L, D)."""
        if self.self_attn is not None:
            queries = queries + self.self_attn(self.norm_self(queries))
        queries = queries + self.cross_attn(self.norm_query(queries), self.norm_context(tokens))
        return queries + self.mlp(self.norm_mlp(queries))


class LearnedRecovery(nn.Module):
    """Predict the merge assignment (B, L) from K quantized codes alone.

    Tokens: ``linear(codes) + rank_embed[k]`` (k = rank in the canonical K-sequence). Queries: one
    learnable vector per raster position, plus (``ratio_conditioning``) a linear embedding of K/L so
    the queries know how coarse the merge was. ``depth`` pre-LN blocks refine the queries; the output
    scores are scaled dot products between the final queries and a projection of the token states,
    so one module serves every K <= ``max_tokens``.
    """

    def __init__(
        self,
        *,
        code_dim: int = 18,
        dim: int,
        num_positions: int,
        max_tokens: int | None = None,
        depth: int = 2,
        num_heads: int,
        mlp_ratio: float = 4.0,
        query_self_attention: bool = False,
        ratio_conditioning: bool = True,
    ) -> None:
        super().__init__()
        max_tokens = num_positions if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= num_positions:
            raise ValueError(f"max_tokens must be in [1, num_positions={num_positions}], got {max_tokens}")
        self.code_dim = code_dim
        self.dim = dim
        self.num_positions = num_positions
        self.max_tokens = max_tokens

        self.token_proj = nn.Linear(code_dim, dim)
        self.rank_embed = nn.Parameter(torch.zeros(max_tokens, dim))  # (K_max, D)
        self.position_queries = nn.Parameter(torch.zeros(num_positions, dim))  # (L, D)
        self.ratio_embed = nn.Linear(1, dim) if ratio_conditioning else None
        self.blocks = nn.ModuleList(
            _RecoveryBlock(
                dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, self_attention=query_self_attention
            )
            for _ in range(depth)
        )
        self.norm_query = nn.LayerNorm(dim)
        self.norm_token = nn.LayerNorm(dim)
        self.head_query = nn.Linear(dim, dim)
        self.head_token = nn.Linear(dim, dim)

        nn.init.trunc_normal_(self.rank_embed, std=0.02)
        nn.init.trunc_normal_(self.position_queries, std=0.02)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, code_dim) in canonical order -> logits (B, L, K) over the kept tokens."""
        if codes.ndim != 3 or codes.shape[2] != self.code_dim:
            raise ValueError(f"codes must be (B, K, {self.code_dim}), got shape {tuple(codes.shape)}")
        batch, num_tokens, _ = codes.shape
        if not 1 <= num_tokens <= self.max_tokens:
            raise ValueError(f"K = {num_tokens} tokens, but this module handles 1..{self.max_tokens}")

        tokens = self.token_proj(codes) + self.rank_embed[:num_tokens]  # (B, K, D)
        queries = repeat(self.position_queries, "l d -> b l d", b=batch)  # (B, L, D)
        if self.ratio_embed is not None:
            ratio = codes.new_full((1, 1), num_tokens / self.num_positions)
            queries = queries + self.ratio_embed(ratio)  # broadcast (1, D)
        for block in self.blocks:
            queries = block(queries, tokens)

        q = self.head_query(self.norm_query(queries))  # (B, L, D)
        k = self.head_token(self.norm_token(tokens))  # (B, K, D)
        return torch.einsum("bld,bkd->blk", q, k) / math.sqrt(self.dim)  # (B, L, K)

    @torch.no_grad()
    def predict(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, K, code_dim) -> assign (B, L) int64, the argmax kept token per position."""
        return self.forward(codes).argmax(dim=-1)
