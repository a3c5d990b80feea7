"""LPIPS perceptual loss (DESIGN §4, generator step: weight 1.0, VGG backbone).

The LPIPS network is a fixed metric loaded from its own file (``mergevq.pretrained.load_lpips``
builds it; this leaf package only wraps it). It is therefore held by :class:`FrozenHolder`: frozen,
always in eval mode, moved by ``.to()`` / ``.double()`` with the parent, and never part of the
parent's ``state_dict`` (checkpoints stay small and ``load_state_dict(strict=True)`` does not depend
on which LPIPS file was used), ``parameters()`` or ``apply()``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from taming.modules.frozen import FrozenHolder

REDUCTIONS = ("mean", "none")


class PerceptualLoss(FrozenHolder):
    """LPIPS distance between reconstructions and targets, images in [−1, 1].

    Args:
        model: an ``lpips.LPIPS`` instance (any module with LPIPS's call signature
            ``model(in0, in1, normalize=False) -> (B, 1, 1, 1)``). It is frozen and held outside the
            state dict.
        reduction: ``"mean"`` → scalar mean over the batch; ``"none"`` → (B,) per-sample distances.

    ``forward(x, y)`` runs with autocast disabled in the network's own dtype (float32 unless the
    parent was explicitly cast, e.g. ``.double()``): LPIPS normalises deep features channel-wise and
    sums tiny squared differences, which bf16 autocast would quantise. Gradients flow to both inputs
    (pass a detached target if only the reconstruction should receive them); none reach the network.
    """

    def __init__(self, *, model: nn.Module, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"PerceptualLoss: unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
        super().__init__(module=model)
        self.reduction = reduction

    def _dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            return p.dtype
        return torch.float32

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """x, y: (B, 3, H, W) in [−1, 1] → scalar (``"mean"``) or (B,) (``"none"``)."""
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f"PerceptualLoss expects two (B, 3, H, W) images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        net = self.held_eval()
        dtype = self._dtype()
        with torch.autocast(device_type=x.device.type, enabled=False):
            d = net(x.to(dtype), y.to(dtype), normalize=False)  # (B, 1, 1, 1)
            d = d.reshape(x.shape[0])  # (B,)
            if d.dtype != torch.float64:
                d = d.float()
            return d.mean() if self.reduction == "mean" else d

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, {super().extra_repr()}"


__all__ = ["REDUCTIONS", "PerceptualLoss"]
