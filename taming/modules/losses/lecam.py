"""LeCAM regulariser for the discriminator (Tseng et al., "Regularizing Generative Adversarial
Networks under Limited Data", CVPR 2021), weight 0.01 next to the hinge loss (DESIGN §4).

It keeps exponential moving averages α_R, α_F of the discriminator's mean output on real and fake
images and penalises predictions that stray past the *other* side's anchor::

    R = mean(relu(D(x) − α_F)²) + mean(relu(α_R − D(x̂))²)

so D cannot drive real and fake logits arbitrarily far apart; this bounds how sharp D becomes and
stabilises GAN training on limited data or long schedules.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


class LeCAMRegularizer(nn.Module):
    """The LeCAM term; call it once per discriminator step with that step's logits.

    Args:
        decay: EMA decay: ``α ← decay · α + (1 − decay) · batch_mean``.

    Update rule (training mode only, no gradient): the batch means of the real and fake logits are
    taken (and averaged over ranks when ``torch.distributed`` is initialised, so every rank holds
    the same anchors and the regulariser does not depend on the number of GPUs); then the EMAs are
    updated, and the penalty is computed against the *updated* anchors. The very first update sets
    the EMAs to the first batch means instead of decaying from 0, which would otherwise anchor D at
    0 for thousands of steps. In eval mode the anchors are read but never changed (before any
    update has happened, eval mode anchors at the current batch means without storing them).
    Under DDP the update is a collective: every rank must call ``forward`` in training mode in the
    same steps.

    ``ema_real``, ``ema_fake`` and ``initialized`` are persistent buffers, so a resumed run continues
    with exactly the anchors it stopped with.
    """

    ema_real: Tensor
    ema_fake: Tensor
    initialized: Tensor

    def __init__(self, *, decay: float = 0.999) -> None:
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCAMRegularizer: decay must be a float in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.register_buffer("ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_fake", torch.zeros((), dtype=torch.float32))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def _update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        means = torch.stack([logits_real.detach().float().mean(), logits_fake.detach().float().mean()])
        if dist.is_available() and dist.is_initialized():
            # SUM then divide: gloo has no AVG reduction.
            dist.all_reduce(means, op=dist.ReduceOp.SUM)
            means /= dist.get_world_size()
        means = means.to(self.ema_real.dtype)
        # decay 0 on the first update sets the anchors to the first batch means; a tensor select, not
        # a Python branch on the flag, so the training step reads nothing on the host
        decay = torch.where(self.initialized, self.decay, 0.0).to(means.dtype)
        self.ema_real.mul_(decay).add_(means[0] * (1.0 - decay))
        self.ema_fake.mul_(decay).add_(means[1] * (1.0 - decay))
        self.initialized.fill_(True)

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """D's logits on real and fake images (any shapes) → the scalar penalty (fp32 or wider)."""
        if self.training:
            self._update(logits_real, logits_fake)
        with torch.autocast(device_type=logits_real.device.type, enabled=False):
            real = logits_real if logits_real.dtype == torch.float64 else logits_real.float()
            fake = logits_fake if logits_fake.dtype == torch.float64 else logits_fake.float()
            # before any update (eval, e.g. a sanity-check validation): the local batch means
            ema_real = torch.where(self.initialized, self.ema_real.to(real.dtype), real.detach().mean())
            ema_fake = torch.where(self.initialized, self.ema_fake.to(fake.dtype), fake.detach().mean())
            return torch.relu(real - ema_fake).pow(2).mean() + torch.relu(ema_real - fake).pow(2).mean()

    def extra_repr(self) -> str:
        return f"decay={self.decay}"


__all__ = ["LeCAMRegularizer"]
