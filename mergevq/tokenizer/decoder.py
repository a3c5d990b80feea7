"""MergeVQ decoder: L quantized codes on the (h, w) grid -> image (DESIGN §4 step 6), in the
authors' layout (docs/official_parity.md):

    codes (B, 18, h, w) ──conv3x3──> (B, D, h, w) ──+ dw-conv positional encoding──> depth × ViT block
      (LayerScale; MLP = fc1 → 3x3 depth-wise conv on the grid → GELU → fc2), no final norm
      ──> (B, D, h, w) ──> levels, coarse to fine: adaptive GroupNorm once, ResBlocks (the first one
      changes the width), then conv3x3 to 4·W + depth-to-space (DCR order) ──> GroupNorm → SiLU →
      conv3x3 ──> (B, 3, H, W)

with W_i = dec_ch · dec_ch_mult[i] (finest level i = 0), D = W of the coarsest level, and
H = h · 2^(levels − 1).

Position information enters only through the depth-wise convolutions (the CPE-style positional
encoding and the MLP's dw-conv): attention alone is permutation-equivariant over tokens.

Adaptive GroupNorm (once at the start of each level): GroupNorm without affine, then
scale·GN(x) + shift, the per-channel scale a linear map of the code map's per-channel spatial std
(unbiased variance + 1e-6) and the shift a linear map of its per-channel spatial mean, so the
up-sampling CNN is conditioned on global code statistics.

``num_res_blocks`` gives one count per level in ``ch_mult`` order (finest first); the authors use
4 at the finest level and 5 elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block
from torch import nn

from mergevq.layers.conv import ResBlock, group_norm

__all__ = ["AdaptiveGroupNorm", "DWConvMlp", "Decoder", "DepthToSpaceUpsample", "depth_to_space"]


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

    ``forward(x (B, C, H, W), cond (B, c, h, w))``: scale = gamma(std_hw(cond)), shift =
    beta(mean_hw(cond)), each (B, C); out = scale · GN(x) + shift. std uses the unbiased variance
    plus ``eps`` inside the square root (a constant map has std 0, where sqrt' is infinite).
    """

    def __init__(self, *, num_channels: int, cond_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = group_norm(num_channels, affine=False)
        self.gamma = nn.Linear(cond_channels, num_channels)
        self.beta = nn.Linear(cond_channels, num_channels)
        self.stat_eps = eps

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        flat = rearrange(cond, "b c h w -> b c (h w)")
        std = (flat.var(dim=-1) + self.stat_eps).sqrt()  # (B, c), unbiased variance
        scale = self.gamma(std)[:, :, None, None]  # (B, C, 1, 1)
        shift = self.beta(flat.mean(dim=-1))[:, :, None, None]  # (B, C, 1, 1)
        return scale * self.norm(x) + shift


def depth_to_space(x: torch.Tensor, block: int, *, channels_last: bool = False) -> torch.Tensor:
    """(B, block²·C, H, W) -> (B, C, block·H, block·W) in DCR order: output channel c at sub-pixel
    (i, j) reads input channel (block·i + j)·C + c (``nn.PixelShuffle`` reads c·block² + block·i + j).

    One copy either way; the output is contiguous (NCHW), or channels_last with ``channels_last``
    (then the CNN after an up-sampling stays in NHWC)."""
    if not channels_last:
        return rearrange(x, "b (i j c) h w -> b c (h i) (w j)", i=block, j=block)
    nhwc = rearrange(x.permute(0, 2, 3, 1), "b h w (i j c) -> b (h i) (w j) c", i=block, j=block)  # one copy
    return nhwc.permute(0, 3, 1, 2)  # (B, C, bH, bW) with channels_last strides


class DepthToSpaceUpsample(nn.Module):
    """conv3x3 to 4·C channels, then DCR depth-to-space: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 4 * channels, 3, padding=1)
        self.channels_last = False  # output layout (MergeVQ.set_channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(self.conv(x), 2, channels_last=self.channels_last)


class _UpLevel(nn.Module):
    """One resolution level: adaptive GroupNorm, ResBlocks (the first one changes the width to
    ``out_channels``), then (except at the finest level) ×2 up-sampling."""

    def __init__(
        self, *, in_channels: int, out_channels: int, num_blocks: int, cond_channels: int, upsample: bool
    ) -> None:
        super().__init__()
        self.adagn = AdaptiveGroupNorm(num_channels=in_channels, cond_channels=cond_channels)
        self.blocks = nn.ModuleList(
            ResBlock(in_channels=in_channels if i == 0 else out_channels, out_channels=out_channels)
            for i in range(num_blocks)
        )
        self.upsample = DepthToSpaceUpsample(channels=out_channels) if upsample else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.adagn(x, cond)
        for block in self.blocks:
            x = block(x)
        return self.upsample(x) if self.upsample is not None else x


class Decoder(nn.Module):
    """Raster-ordered codes (B, L = h·w, code_dim) -> image (B, out_channels, h·2^(n−1), w·2^(n−1)).

    ``ch`` / ``ch_mult`` / ``num_res_blocks`` are given finest level first; the decoder walks them
    in reverse. ``dim`` (the ViT width) must equal ``ch · ch_mult[-1]``: the ViT output enters the
    CNN directly.
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
        init_values: float | None = 1e-5,
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
        widths = [ch * m for m in reversed(ch_mult)]  # coarsest .. finest
        if dim != widths[0]:
            raise ValueError(f"decoder dim={dim} must equal ch·ch_mult[-1] = {widths[0]} (the ViT feeds the CNN)")
        self.code_dim = code_dim
        self.grid = (int(grid[0]), int(grid[1]))
        self.upsample_factor = 2 ** (num_levels - 1)
        # layout of the CNN half, set by MergeVQ.set_channels_last (None: as the token grid comes, NHWC)
        self.memory_format: torch.memory_format | None = None

        # Transformer on the token grid.
        self.conv_in = nn.Conv2d(code_dim, dim, 3, padding=1)
        self.pos_conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # CPE: x + dwconv(x)
        self.blocks = nn.ModuleList(
            Block(
                dim=dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                init_values=init_values,
                drop_path=drop_path,
                mlp_layer=partial(DWConvMlp, grid=self.grid),
            )
            for _ in range(depth)
        )

        # Up-sampling CNN, coarse to fine.
        counts = list(reversed(blocks_per_level))
        self.levels = nn.ModuleList(
            _UpLevel(
                in_channels=widths[i - 1] if i > 0 else widths[0],
                out_channels=widths[i],
                num_blocks=counts[i],
                cond_channels=code_dim,
                upsample=i + 1 < num_levels,
            )
            for i in range(num_levels)
        )
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

        self.blocks.apply(_init_vit)
        _init_vit(self.pos_conv)

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
        """z (B, L, code_dim) -> token features (B, L, D) after the transformer (no final norm)."""
        h, w = self.grid
        self._check_codes(z)
        x = self.conv_in(rearrange(z, "b (h w) d -> b d h w", h=h, w=w))  # (B, D, h, w)
        x = rearrange(x + self.pos_conv(x), "b c h w -> b (h w) c")  # (B, L, D)
        for block in self.blocks:
            x = block(x)
        return x

    def upsample_features(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The CNN half: features (B, L, D) and conditioning map (B, code_dim, h, w) -> (B, out, H, W)."""
        h, w = self.grid
        x = rearrange(features, "b (h w) c -> b c h w", h=h, w=w)  # (B, D, h, w), an NHWC view
        if self.memory_format is not None:
            x = x.contiguous(memory_format=self.memory_format)
        for level in self.levels:
            x = level(x, cond)  # (B, W_i, ...), ×2 in H and W except at the finest level
        return self.conv_out(F.silu(self.norm_out(x)))  # (B, out_channels, H, W)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L, code_dim) raster-ordered codes (after unmerge) -> image (B, out_channels, H, W)."""
        h, w = self.grid
        self._check_codes(z)
        cond = rearrange(z, "b (h w) d -> b d h w", h=h, w=w)  # (B, code_dim, h, w)
        return self.upsample_features(self.transformer_features(z), cond)


def _init_vit(module: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for the transformer's linear and conv
    layers (the authors' ViT initialisation)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
