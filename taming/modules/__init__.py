"""Building blocks of the VQGAN lineage: discriminator, losses, and the frozen-network holder."""

from taming.modules.frozen import FrozenHolder

__all__ = ["FrozenHolder"]
