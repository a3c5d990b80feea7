"""Adversarial losses on discriminator logits (DESIGN §4: hinge for D, non-saturating for G).

All functions take raw logits of any shape (PatchGAN gives (B, 1, h, w)), average over every
element, and compute in float32 with autocast disabled: under bf16/fp16 autocast the logits may
arrive in half precision, where ``softplus`` and the means over many patches lose digits that the
small (0.1-weighted) GAN term cannot afford. Inputs in float64 stay float64.

Scale convention: the discriminator losses carry VQGAN's factor ½ (the average of the real and the
fake term). The loss weights the authors tuned (the 0.01 LeCAM weight next to the hinge loss, the
discriminator learning rate) were set against that scale, so it is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _fp32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _autocast_off(device_type: str):
    return torch.autocast(device_type=device_type, enabled=False)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """½ · (mean(relu(1 − D(x))) + mean(relu(1 + D(x̂)))): a scalar.

    Real logits are pushed above +1 and fake ones below −1; beyond the margin there is no gradient,
    which keeps the discriminator from becoming over-confident.
    """
    with _autocast_off(logits_real.device.type):
        real = F.relu(1.0 - _fp32(logits_real)).mean()
        fake = F.relu(1.0 + _fp32(logits_fake)).mean()
        return 0.5 * (real + fake)


def vanilla_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """½ · (mean(softplus(−D(x))) + mean(softplus(D(x̂)))): the binary cross-entropy D loss, a scalar.

    Offered for comparison with the original GAN objective; MergeVQ uses :func:`hinge_d_loss`.
    """
    with _autocast_off(logits_real.device.type):
        real = F.softplus(-_fp32(logits_real)).mean()
        fake = F.softplus(_fp32(logits_fake)).mean()
        return 0.5 * (real + fake)


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    """mean(softplus(−D(x̂))) = mean(−log σ(D(x̂))): the generator's adversarial loss, a scalar.

    Non-saturating: the gradient stays large while the discriminator confidently rejects the fakes
    (where −log(1 − σ) would vanish). ``softplus`` is the numerically stable form of −log σ.
    """
    with _autocast_off(logits_fake.device.type):
        return F.softplus(-_fp32(logits_fake)).mean()


__all__ = ["hinge_d_loss", "non_saturating_g_loss", "vanilla_d_loss"]
