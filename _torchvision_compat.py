"""Make ``import torchvision`` work on a CPU-only torch build.

The torchvision wheel paired with torch 2.13 on PyPI is a CUDA build: its ``_C`` extension cannot
load against the CPU torch, and ``torchvision/_meta_registrations.py`` then registers fake kernels
for ``torchvision::nms``/``qnms``, operators that were never defined, so the import (and that of
lightning, timm, torch-fidelity, lpips and torchmetrics) fails. Before torchvision is first
imported we try to load its extension; only if none loads do we define the two operator schemas so
the import succeeds. ``torchvision.ops`` C++ kernels and ``torchvision.io`` decoders stay
unavailable on such an install (this project decodes images with PIL). Where the extension loads
(GPU installs) this is a no-op.

Installed as a top-level module plus ``mergevq-torchvision-compat.pth``, whose import hook runs the
fix lazily the first time torchvision is imported, so Python start-up does not import torch.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

_LIBRARY = None  # the torch.library.Library must stay alive for the schemas to stay defined
_DONE = False


def _extension_loads() -> bool:
    import glob
    import os

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to fix
    for folder in spec.submodule_search_locations:
        for lib in glob.glob(os.path.join(folder, "_C*.so")) + glob.glob(os.path.join(folder, "_C*.pyd")):
            try:
                torch.ops.load_library(lib)
                return True
            except (OSError, RuntimeError):
                continue
    return False


def apply() -> None:
    """Define the torchvision operator schemas if its C++ extension cannot load. Idempotent."""
    global _LIBRARY, _DONE
    if _DONE:
        return
    _DONE = True
    if "torchvision" in sys.modules:
        return  # too late to help, and nothing to do if it imported fine
    if _extension_loads():
        return
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - already defined by someone else
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib


class _Hook(importlib.abc.MetaPathFinder):
    """Runs :func:`apply` just before the first ``import torchvision``, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: ARG002 - finder protocol
        if fullname == "torchvision":
            uninstall_hook()
            apply()
        return None


_HOOK = _Hook()


def install_hook() -> None:
    if not _DONE and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
