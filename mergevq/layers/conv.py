"""Plain convolutional building blocks shared by the encoder stem and the decoder."""

from __future__ import annotations

import torch
from torch import nn

GROUPS = 32


def group_norm(channels: int, *, affine: bool = True) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is small: tiny test models), eps 1e-6."""
    groups = GROUPS
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=affine)


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv3x3, twice, plus a residual; a 1x1 shortcut where the width changes.

    The convolutions have no bias (each is followed by a GroupNorm or feeds the residual sum, as in
    the authors' tokenizer). (B, in_channels, H, W) -> (B, out_channels, H, W).
    """

    def __init__(self, *, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.act = nn.SiLU()
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = self.conv2(self.act(self.norm2(h)))
        return self.shortcut(x) + h
