"""MergeVQ encoder: a CNN (or patchify) stem, then ViT blocks that merge tokens as they go.

DESIGN §4 steps 1–2 and the start of step 4; the layout is the authors' (docs/official_parity.md):
the stem's tokens enter the ViT as they are (no projection, no position embedding: position reaches
the ViT only through the CNN's zero padding), the blocks have no final LayerNorm, and the
pre-quantisation head is a GroupNorm over all K kept tokens, SiLU and a 1x1 projection. The
encoder returns the K kept tokens in canonical order (raster order of the first position each
covers) with the assignment ``assign`` (B, L) of every original position to a kept token; nothing
is left behind on the module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange
from timm.layers import DropPath, LayerScale, Mlp
from torch import nn

from mergevq.errors import ConfigError
from mergevq.layers.attention import Attention
from mergevq.layers.conv import ResBlock, group_norm
from mergevq.tokenizer.merge import (
    bipartite_soft_matching,
    canonicalize,
    merge_schedule,
    merge_tokens,
    plan_merges,
    proportional_bias,
    track_assignment,
)

# ---------------------------------------------------------------------------------------------
# Stems: image (B, C, H, W) -> tokens (B, L, D) in raster order
# ---------------------------------------------------------------------------------------------


class CNNStem(nn.Module):
    """conv3x3 (no bias) → per level ``num_res_blocks`` ResBlocks, the first changing the width to
    ch·mult, and a stride-2 conv3x3 (padding 1) after every level but the last. The output width is
    ch·ch_mult[-1] and f = 2^(levels − 1).

    (B, in_channels, H, W) -> (B, (H/f)·(W/f), ch·ch_mult[-1]).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int | Sequence[int],
    ) -> None:
        super().__init__()
        mults = tuple(int(m) for m in ch_mult)
        if not mults or any(m < 1 for m in mults):
            raise ConfigError(f"ch_mult={list(ch_mult)} must be a non-empty list of ints >= 1")
        if isinstance(num_res_blocks, int):
            blocks_per_level = (num_res_blocks,) * len(mults)
        else:
            blocks_per_level = tuple(int(n) for n in num_res_blocks)
        if len(blocks_per_level) != len(mults) or any(n < 1 for n in blocks_per_level):
            raise ConfigError(
                f"num_res_blocks={num_res_blocks} must be an int >= 1 or one per level "
                f"({len(mults)} levels from ch_mult)"
            )
        self.downsample_factor = 2 ** (len(mults) - 1)
        self.out_dim = ch * mults[-1]
        # activation layout set by MergeVQ.set_channels_last (None: the input's); with channels_last
        # the final flattening to tokens is a view instead of a copy
        self.memory_format: torch.memory_format | None = None
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, padding=1, bias=False)
        self.levels = nn.ModuleList()
        width = ch
        for i, (mult, count) in enumerate(zip(mults, blocks_per_level)):
            level = nn.Module()
            blocks = []
            for _ in range(count):
                blocks.append(ResBlock(in_channels=width, out_channels=ch * mult))
                width = ch * mult
            level.blocks = nn.ModuleList(blocks)
            if i < len(mults) - 1:
                level.downsample = nn.Conv2d(width, width, kernel_size=3, stride=2, padding=1)
            self.levels.append(level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.levels:
            for block in level.blocks:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)  # halves H, W
        return rearrange(h, "b d h w -> b (h w) d")


class PatchStem(nn.Module):
    """Patchify conv (kernel = stride = ``patch_size``) and a per-channel GroupNorm (one channel per
    group): (B, C, H, W) -> (B, (H/p)·(W/p), dim)."""

    def __init__(self, *, in_channels: int = 3, patch_size: int = 16, dim: int) -> None:
        super().__init__()
        self.downsample_factor = patch_size
        self.out_dim = dim
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.GroupNorm(dim, dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.norm(self.proj(x)), "b d h w -> b (h w) d")


# ---------------------------------------------------------------------------------------------
# Transformer block (timm ``Block`` parameter names) split at the merge point
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttendOutput:
    """``x`` (B, N, D) after the attention residual; ``metric`` (B, N, head_dim) for matching."""

    x: torch.Tensor
    metric: torch.Tensor


class MergeBlock(nn.Module):
    """Pre-LN ViT block whose state-dict keys equal timm's ``Block`` (norm1, attn.qkv, attn.proj,
    ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma). It is run in two halves so the encoder can merge
    tokens between attention and MLP (where ToMe merges)."""

    def __init__(
        self,
        *,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim=dim, num_heads=num_heads, qkv_bias=qkv_bias)
        self.ls1 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.ls2 = LayerScale(dim, init_values=init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def attend(self, x: torch.Tensor, *, key_bias: torch.Tensor | None) -> AttendOutput:
        """x (B, N, D), key_bias (B, N) or None -> x + attention, and the merge metric."""
        attn = self.attn(self.norm1(x), key_bias=key_bias)
        return AttendOutput(x=x + self.drop_path1(self.ls1(attn.out)), metric=attn.metric)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, N, D) -> x + MLP."""
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))

    def forward(self, x: torch.Tensor, *, key_bias: torch.Tensor | None = None) -> torch.Tensor:
        """The whole block without merging (equals timm's ``Block`` when key_bias is None)."""
        return self.feed_forward(self.attend(x, key_bias=key_bias).x)


# ---------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderOutput:
    """``z`` (B, K, code_dim): pre-quantisation latents; ``tokens`` (B, K, D): the last block's
    tokens; ``cls`` (B, D): the last block's [CLS] (no norm: the alignment head reads it raw);
    ``assign`` (B, L) int64 in [0, K): kept token holding each raster position (canonical order);
    ``sizes`` (B, K) float: positions held by each kept token. All in canonical order."""

    z: torch.Tensor
    tokens: torch.Tensor
    cls: torch.Tensor
    assign: torch.Tensor
    sizes: torch.Tensor


class PreQuant(nn.Module):
    """GroupNorm over the channels of all K kept tokens together → SiLU → Linear to ``code_dim``
    (the authors' 1x1 conv on the merged-token grid). (B, K, D) -> (B, K, code_dim)."""

    def __init__(self, *, dim: int, code_dim: int) -> None:
        super().__init__()
        self.norm = group_norm(dim)
        self.act = nn.SiLU()
        self.proj = nn.Linear(dim, code_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = rearrange(self.norm(rearrange(tokens, "b k d -> b d k")), "b d k -> b k d")
        return self.proj(self.act(h))


class MergingEncoder(nn.Module):
    """Stem → [CLS] → ``depth`` ViT blocks merging r_l tokens each (the authors' schedule,
    :func:`plan_merges`) → pre-quantisation head on the K kept tokens.

    Merging happens after each block's attention, with the block's key metric; once any merge has
    happened, attention adds log(size) to the key logits (proportional attention). There is no
    position embedding, so any input size whose side is a multiple of the stem's factor works
    (e.g. the 224 px student view of the alignment loss).
    """

    def __init__(
        self,
        *,
        stem: nn.Module,
        dim: int,
        depth: int = 12,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        init_values: float | None = 1e-5,
        drop_path: float = 0.0,
        num_tokens: int,
        code_dim: int = 18,
    ) -> None:
        super().__init__()
        if depth < 1 or num_tokens < 1:
            raise ConfigError(f"depth={depth} and num_tokens={num_tokens} must be >= 1")
        if stem.out_dim != dim:
            raise ConfigError(f"the stem outputs width {stem.out_dim} but the ViT width is dim={dim}")
        self.num_tokens = num_tokens
        self.depth = depth
        self.stem = stem
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(
            MergeBlock(
                dim=dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                init_values=init_values,
                drop_path=rate,
            )
            for rate in rates
        )
        self.pre_quant = PreQuant(dim=dim, code_dim=code_dim)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.blocks.apply(_init_linear)

    def schedule(self, num_keep: int, *, num_tokens: int | None = None) -> tuple[int, ...]:
        """Tokens merged in each block to keep exactly ``num_keep`` of ``num_tokens`` (default: the
        training grid's L); ConfigError if the schedule cannot produce it."""
        return merge_schedule(
            num_tokens=self.num_tokens if num_tokens is None else num_tokens,
            num_keep=num_keep,
            depth=self.depth,
        )

    def forward(
        self, x: torch.Tensor, *, num_keep: int | None = None, num_merge: int | None = None
    ) -> EncoderOutput:
        """x (B, C, H, W) image -> merged tokens and their assignment. Give exactly one of
        ``num_keep`` (K, produced exactly or a ConfigError) or ``num_merge`` (merge that many tokens
        by the schedule; layers that cannot merge their share merge fewer, as the authors' student
        view does)."""
        factor = self.stem.downsample_factor
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ConfigError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the stem's down-sampling "
                f"factor {factor}"
            )
        length = (x.shape[-2] // factor) * (x.shape[-1] // factor)
        if (num_keep is None) == (num_merge is None):
            raise ValueError("give exactly one of num_keep and num_merge")
        if num_keep is not None:
            schedule = self.schedule(num_keep, num_tokens=length)
        else:
            merges = max(0, min(int(num_merge), length - 1))
            schedule = plan_merges(num_tokens=length, num_merge=merges, depth=self.depth).realized
        tokens = self.stem(x)  # (B, L, D)
        bsz = tokens.shape[0]
        h = torch.cat([self.cls_token.expand(bsz, -1, -1), tokens], dim=1)  # (B, 1 + L, D)
        sizes = torch.ones(bsz, 1 + length, device=h.device)  # (B, 1 + L), [CLS] included
        assign = torch.arange(length, device=h.device).expand(bsz, -1)  # (B, L)
        merged = False
        for block, r in zip(self.blocks, schedule):
            step = block.attend(h, key_bias=proportional_bias(sizes) if merged else None)
            h = step.x
            if r > 0:
                plan = bipartite_soft_matching(step.metric, r=r, protect_first=True)
                h, sizes = merge_tokens(h, sizes, plan)  # (B, N - r, D), (B, N - r)
                assign = track_assignment(assign, plan)
                merged = True
            h = block.feed_forward(h)
        canon = canonicalize(h[:, 1:], sizes[:, 1:], assign)  # (B, K, D) in canonical order
        return EncoderOutput(
            z=self.pre_quant(canon.tokens),  # (B, K, code_dim); the GroupNorm is order-free
            tokens=canon.tokens,
            cls=h[:, 0],
            assign=canon.assign,
            sizes=canon.sizes,
        )


def _init_linear(module: nn.Module) -> None:
    """ViT initialisation: truncated-normal linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
