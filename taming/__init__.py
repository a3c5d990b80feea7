"""The VQGAN lineage (data, discriminator, GAN/perceptual losses), written here from scratch.

A leaf package: it never imports ``mergevq``.
"""

import _torchvision_compat

_torchvision_compat.apply()
