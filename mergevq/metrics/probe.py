"""Linear-probe pieces that know nothing about the model (DESIGN §6 "Representation"): top-k
accuracy and the probe head's optimiser (SGD or LARS, as in MAE's linear-probing recipe).

LARS is timm's :class:`timm.optim.Lars` (trust ratio ``trust_coeff * ||w|| / (||g|| + wd ||w|| +
eps)``, then SGD momentum). MAE's LARS adapts and decays only parameters with two or more
dimensions; biases and other vectors take plain SGD-momentum steps. :func:`build_probe_optimizer`
reproduces that with two parameter groups: matrices with ``always_adapt=True`` and the weight
decay, vectors with weight decay 0 and ``always_adapt=False`` (timm adapts a group only when one
of the two is set).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from mergevq.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "OptimizerName",
    "TopK",
    "build_probe_optimizer",
    "check_optimizer",
    "topk_accuracy",
    "topk_correct",
]

OptimizerName = Literal["lars", "sgd"]
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


def check_optimizer(name: object, *, key: str = "probe.optimizer") -> OptimizerName:
    """``name`` if it is a known optimiser, else a one-line ConfigError naming ``key``."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"{key} must be one of {', '.join(OPTIMIZERS)}, got {name!r}")
    return name  # type: ignore[return-value]


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> torch.Tensor:
    """logits (N, C), labels (N,) -> int64 (len(ks),): how many rows have their label among the
    ``k`` highest logits, for each k. A k above C counts every row (the label is always among all
    C classes). Counts, not fractions, so they add up over batches and ranks."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, C) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, k_max), best first
    hit = top == labels[:, None]  # (N, k_max): at most one True per row
    return torch.stack([hit[:, :k].any(dim=1).sum() for k in ks]).to(torch.int64)


@dataclass(frozen=True)
class TopK:
    """Top-1 / top-5 accuracy in percent over ``count`` samples."""

    top1: float
    top5: float
    count: int


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> TopK:
    """Top-1 and top-5 accuracy (percent) of ``logits`` (N, C) against ``labels`` (N,)."""
    if labels.numel() == 0:
        raise ValueError("top-k accuracy of an empty set")
    correct = topk_correct(logits, labels, ks=(1, 5)).tolist()
    n = int(labels.numel())
    return TopK(top1=100.0 * correct[0] / n, top5=100.0 * correct[1] / n, count=n)


def build_probe_optimizer(
    parameters: Iterable[tuple[str, nn.Parameter]],
    *,
    name: OptimizerName,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    trust_coeff: float = 0.001,
) -> torch.optim.Optimizer:
    """SGD or LARS (see the module docstring) over named ``parameters`` (``module.named_parameters()``).

    Matrices (ndim >= 2) get ``weight_decay`` (and, with LARS, the trust ratio); vectors (biases)
    get neither, as in MAE's probe."""
    check_optimizer(name)
    params = [(n, p) for n, p in parameters if p.requires_grad]
    matrices = [p for _, p in params if p.ndim >= 2]
    vectors = [p for _, p in params if p.ndim < 2]
    if name == "sgd":
        groups = [{"params": matrices, "weight_decay": float(weight_decay)}, {"params": vectors, "weight_decay": 0.0}]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=float(lr), momentum=float(momentum))
    from timm.optim import Lars

    groups = [
        {"params": matrices, "weight_decay": float(weight_decay), "always_adapt": True},
        {"params": vectors, "weight_decay": 0.0, "always_adapt": False},
    ]
    return Lars([g for g in groups if g["params"]], lr=float(lr), momentum=float(momentum), trust_coeff=float(trust_coeff))
