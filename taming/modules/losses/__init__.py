"""Losses of the tokenizer's training: adversarial, LeCAM, perceptual (LPIPS) and alignment (KL)."""

from taming.modules.losses.alignment import alignment_kl
from taming.modules.losses.gan import hinge_d_loss, non_saturating_g_loss, vanilla_d_loss
from taming.modules.losses.lecam import LeCAMRegularizer
from taming.modules.losses.perceptual import REDUCTIONS, PerceptualLoss

__all__ = [
    "REDUCTIONS",
    "LeCAMRegularizer",
    "PerceptualLoss",
    "alignment_kl",
    "hinge_d_loss",
    "non_saturating_g_loss",
    "vanilla_d_loss",
]
