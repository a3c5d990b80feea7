"""Adversarial losses on discriminator logits (DESIGN §4: hinge for D, non-saturating for G).

The discriminator losses take raw logits of any shape (PatchGAN gives (B, 1, h, w)) and average
over every element. The generator loss first averages each image's logits, as the authors' code
does, and then applies the loss per image (see :func:`non_saturating_g_loss`). All compute in
float32 with autocast disabled: under bf16/fp16 autocast the logits may arrive in half precision,
where ``softplus`` and the means over many patches lose digits that the small (0.1-weighted) GAN
term cannot afford. Inputs in float64 stay float64.

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
    """The generator's adversarial loss, a scalar: each image's logits are averaged first.

    ``mean_b softplus(−m_b)`` with ``m_b`` the mean of ``logits_fake[b]`` over all its patches,
    i.e. −log σ of each image's average logit, averaged over the batch (dimension 0). This is the
    authors' definition. It differs from the per-patch ``mean(softplus(−D(x̂)))``: it is never
    larger (softplus is convex), and every patch of an image receives the same gradient,
    −σ(−m_b) / (B · patches), instead of one set by its own logit.

    Non-saturating: the gradient stays large while the discriminator confidently rejects the fakes
    (where −log(1 − σ) would vanish). ``softplus`` is the numerically stable form of −log σ.
    ``logits_fake`` is (B, ...) with at least one dimension; a (B,) input is one logit per image.
    """
    if logits_fake.dim() < 1:
        raise ValueError("logits_fake must have a batch dimension, got a 0-d tensor")
    with _autocast_off(logits_fake.device.type):
        per_image = _fp32(logits_fake).reshape(logits_fake.shape[0], -1).mean(dim=1)  # (B,)
        return F.softplus(-per_image).mean()


__all__ = ["hinge_d_loss", "non_saturating_g_loss", "vanilla_d_loss"]
