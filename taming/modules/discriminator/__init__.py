"""Discriminators for the GAN term of the tokenizer's training."""

from taming.modules.discriminator.patchgan import NORMS, PatchGANDiscriminator, min_input_size

__all__ = ["NORMS", "PatchGANDiscriminator", "min_input_size"]
