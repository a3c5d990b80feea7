"""MergeVQ decoder: L quantized codes on the (h, w) grid -> image (DESIGN §4 step 6).

    z (B, L, 18) ──conv_in──> (B, L, D) ──+ dw-conv positional encoding──> depth × ViT block
      (MLP = fc1 → 3x3 depth-wise conv on the grid → GELU → fc2) ──norm──> (B, D, h, w)
      ──conv_mid──> (B, W_0, h, w) ──> levels, coarse to fine: ResBlocks with adaptive GroupNorm,
      then conv to 4·W_{i+1} + PixelShuffle(2) ──> GroupNorm → SiLU → conv3x3 ──> (B, 3, H, W)

with W_i = ch · ch_mult[::-1][i] and H = h · 2^(len(ch_mult) − 1).

Position information enters only through the depth-wise convolutions (the CPE-style positional
encoding and the MLP's dw-conv): attention alone is permutation-equivariant over tokens.

Adaptive GroupNorm: GroupNorm without affine, then a per-channel scale and shift predicted by a
linear layer from the per-channel spatial mean and std of the quantized code map (B, 18, h, w), so the
whole up-sampling CNN is conditioned on global code statistics.

``num_res_blocks`` (an int, or one count per level in the order of ``ch_mult``, i.e. finest level
first, like the encoder) sets the CNN depth. Suggested values, which land the decoder sizes of the
DESIGN §4 variants table within 2 % (``benchmarks/param_counts.py`` prints them): 4 per level and 6
at the coarsest, i.e. ``(4, 4, 4, 6)`` for f = 8 and ``(4, 4, 4, 4, 6)`` for f = 16 (the two extra
coarse blocks play the role of the VQGAN lineage's "mid" blocks). R uses the GR-d64 decoder (D 512).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

__all__ = ["AdaptiveGroupNorm", "AdaptiveResBlock", "DWConvMlp", "Decoder", "DepthToSpaceUpsample"]


class DWConvMlp(nn.Module):
    """Token MLP with a 3x3 depth-wise conv over the (h, w) grid: fc1 → dwconv → act → fc2.

    Its keyword signature is the one timm's ``Block`` uses to build ``mlp_layer``; bind ``grid``
    with ``functools.partial``.
    """

    def __init__(
        self,
        *,
        in_features: int,
        hidden_features: int | None = None,
        out_features: int | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] | None = None,
        bias: bool = True,
        drop: float = 0.0,
        grid: tuple[int, int],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        dd = {"device": device, "dtype": dtype}
        self.grid = (int(grid[0]), int(grid[1]))
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias, **dd)
        self.dwconv = nn.Conv2d(hidden_features, hidden_features, 3, padding=1, groups=hidden_features, **dd)
        self.act = act_layer()
        self.norm = norm_layer(hidden_features, **dd) if norm_layer is not None else nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.grid
        x = self.fc1(x)  # (B, L, hidden)
        x = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        x = rearrange(self.dwconv(x), "b c h w -> b (h w) c")  # (B, L, hidden)
        x = self.drop(self.norm(self.act(x)))
        return self.drop(self.fc2(x))  # (B, L, out)


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm(x) without affine, scaled and shifted per channel from the conditioning map's statistics.

    ``forward(x (B, C, H, W), cond (B, c, h, w))``: [mean_hw(cond), std_hw(cond)] (B, 2c) → linear →
    (scale, shift) (B, C) each; out = GN(x) · (1 + scale) + shift.
    """

    def __init__(
        self, *, num_channels: int, cond_channels: int, num_groups: int = 32, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels {num_channels} is not divisible by num_groups {num_groups}")
        self.norm = nn.GroupNorm(num_groups, num_channels, eps=eps, affine=False)
        self.to_scale_shift = nn.Linear(2 * cond_channels, 2 * num_channels)
        self.stat_eps = 1e-5  # inside the sqrt: a constant map has std 0, and sqrt'(0) is infinite

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        mean = cond.mean(dim=(2, 3))  # (B, c)
        std = (cond.var(dim=(2, 3), unbiased=False) + self.stat_eps).sqrt()  # (B, c)
        scale, shift = self.to_scale_shift(torch.cat([mean, std], dim=1)).chunk(2, dim=1)  # (B, C) each
        return self.norm(x) * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class AdaptiveResBlock(nn.Module):
    """ResBlock (adaptive GN → SiLU → conv3x3, twice) with a 1x1 shortcut when the widths differ."""

    def __init__(
        self, *, in_channels: int, out_channels: int, cond_channels: int, num_groups: int = 32
    ) -> None:
        super().__init__()
        self.norm1 = AdaptiveGroupNorm(
            num_channels=in_channels, cond_channels=cond_channels, num_groups=num_groups
        )
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = AdaptiveGroupNorm(
            num_channels=out_channels, cond_channels=cond_channels, num_groups=num_groups
        )
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), cond (B, code_dim, h, w) -> (B, C_out, H, W)."""
        y = self.conv1(F.silu(self.norm1(x, cond)))
        y = self.conv2(F.silu(self.norm2(y, cond)))
        return self.shortcut(x) + y


class DepthToSpaceUpsample(nn.Module):
    """conv3x3 to 4·C_out channels, then PixelShuffle(2): (B, C_in, H, W) -> (B, C_out, 2H, 2W)."""

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4 * out_channels, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class _UpLevel(nn.Module):
    """One resolution level of the up-sampling CNN: ResBlocks, then (except the finest) ×2 up-sampling."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        next_channels: int | None,
        num_blocks: int,
        cond_channels: int,
        num_groups: int,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            AdaptiveResBlock(
                in_channels=in_channels if i == 0 else out_channels,
                out_channels=out_channels,
                cond_channels=cond_channels,
                num_groups=num_groups,
            )
            for i in range(num_blocks)
        )
        self.upsample = (
            DepthToSpaceUpsample(in_channels=out_channels, out_channels=next_channels)
            if next_channels is not None
            else None
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, cond)
        return self.upsample(x) if self.upsample is not None else x


class Decoder(nn.Module):
    """Raster-ordered codes (B, L = h·w, code_dim) -> image (B, out_channels, h·2^(n−1), w·2^(n−1)).

    ``ch`` and ``ch_mult`` are the encoder's (finest level first); the decoder walks them in reverse.
    ``num_res_blocks`` is one count for every level or one per level in ``ch_mult`` order.
    """

    def __init__(
        self,
        *,
        code_dim: int = 18,
        dim: int,
        depth: int = 12,
        num_heads: int,
        mlp_ratio: float = 4.0,
        grid: tuple[int, int],
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int | Sequence[int],
        out_channels: int = 3,
        num_groups: int = 32,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        if num_levels < 1:
            raise ValueError("ch_mult must name at least one level")
        if isinstance(num_res_blocks, int):
            blocks_per_level = [num_res_blocks] * num_levels
        else:
            blocks_per_level = [int(n) for n in num_res_blocks]
            if len(blocks_per_level) != num_levels:
                raise ValueError(
                    f"num_res_blocks has {len(blocks_per_level)} entries but ch_mult has {num_levels} levels"
                )
        self.code_dim = code_dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.upsample_factor = 2 ** (num_levels - 1)

        # Transformer on the token grid.
        self.conv_in = nn.Linear(code_dim, dim)  # a 1x1 conv on the grid, applied to tokens
        self.pos_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # CPE: x + dwconv(x)
        self.blocks = nn.ModuleList(
            Block(
                dim=dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                drop_path=drop_path,
                mlp_layer=partial(DWConvMlp, grid=self.grid),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

        # Up-sampling CNN, coarse to fine.
        widths = [ch * m for m in reversed(ch_mult)]  # W_0 (coarsest) .. W_{n-1} (full resolution)
        counts = list(reversed(blocks_per_level))
        self.conv_mid = nn.Conv2d(dim, widths[0], 3, padding=1)
        self.levels = nn.ModuleList(
            _UpLevel(
                in_channels=widths[i],
                out_channels=widths[i],
                next_channels=widths[i + 1] if i + 1 < num_levels else None,
                num_blocks=counts[i],
                cond_channels=code_dim,
                num_groups=num_groups,
            )
            for i in range(num_levels)
        )
        self.norm_out = nn.GroupNorm(num_groups, widths[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

        self.apply(_init_linear)

    @property
    def output_size(self) -> tuple[int, int]:
        return self.grid[0] * self.upsample_factor, self.grid[1] * self.upsample_factor

    def _check_codes(self, z: torch.Tensor) -> None:
        h, w = self.grid
        if z.ndim != 3 or z.shape[1] != h * w or z.shape[2] != self.code_dim:
            raise ValueError(
                f"z must be (B, L={h * w}, {self.code_dim}) for grid {self.grid}, got shape {tuple(z.shape)}"
            )

    def transformer_features(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, code_dim) -> token features (B, L, D) after the transformer and its final norm."""
        h, w = self.grid
        self._check_codes(z)
        x = self.conv_in(z)  # (B, L, D)
        x_grid = rearrange(x, "b (h w) c -> b c h w", h=h, w=w)
        x = x + rearrange(self.pos_conv(x_grid), "b c h w -> b (h w) c")  # (B, L, D)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # (B, L, D)

    def upsample_features(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The CNN half: features (B, L, D) and conditioning map (B, code_dim, h, w) -> (B, out, H, W)."""
        h, w = self.grid
        x = rearrange(features, "b (h w) c -> b c h w", h=h, w=w)  # (B, D, h, w)
        x = self.conv_mid(x)  # (B, W_0, h, w)
        for level in self.levels:
            x = level(x, cond)  # (B, W_{i+1}, 2·H_i, 2·W_i) except at the finest level
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, out_channels, H, W)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, code_dim) raster-ordered codes (after unmerge) -> image (B, out_channels, H, W)."""
        h, w = self.grid
        self._check_codes(z)
        cond = rearrange(z, "b (h w) d -> b d h w", h=h, w=w)  # (B, code_dim, h, w)
        return self.upsample_features(self.transformer_features(z), cond)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
