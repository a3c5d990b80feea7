"""SwiGLU feed-forward (Llama / LlamaGen): ``w2(silu(w1 x) * w3 x)``, no biases."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def swiglu_hidden(dim: int, *, ratio: float = 4.0, multiple_of: int = 256) -> int:
    """Hidden width of a SwiGLU MLP with the parameters of a ``ratio``-wide plain MLP: ``2/3 · ratio · dim``
    rounded up to a multiple of ``multiple_of`` (LlamaGen's rule: 1024 -> 2816, 768 -> 2048)."""
    hidden = int(2 * ratio * dim / 3)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nn.Module):
    def __init__(self, *, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
