"""Plain convolutional building blocks shared by the encoder stem and the decoder."""

from __future__ import annotations

import torch
from torch import nn

GROUPS = 32


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (or fewer when ``channels`` is small), eps 1e-6 (VQGAN lineage)."""
    groups = GROUPS
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3, twice, plus a residual; 1x1 shortcut when the widths differ.

    (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.act = nn.SiLU()
        self.shortcut: nn.Module = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.shortcut(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 conv with asymmetric (0, 1, 0, 1) padding: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(x, (0, 1, 0, 1))
        return self.conv(x)
