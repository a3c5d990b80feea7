"""MergeVQ: token merging + lookup-free quantization tokenizer, and the MergeAR generator."""

import _torchvision_compat

_torchvision_compat.apply()

from mergevq.version import __version__  # noqa: E402

__all__ = ["__version__"]
