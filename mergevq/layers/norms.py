"""RMSNorm (Llama): ``x / rms(x) · weight``, no bias, no mean subtraction; computed in fp32."""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, *, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics: bf16 squares lose too much precision for long rows
        xf = x.float()
        out = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + self.eps)
        return out.to(x.dtype) * self.weight
