"""Loss settings of Stage 1 and the generator / discriminator loss terms as named outputs.

The loss *functions* live in ``taming.modules.losses``; this module only holds the typed settings
read from the config (``loss_weights``, ``perceptual``) and the dataclasses the training module
returns, so a mistyped key fails at build time naming it (DESIGN §3).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mergevq.errors import ConfigError

__all__ = ["DiscriminatorLosses", "GeneratorLosses", "LossWeights", "PerceptualSettings"]


def _typed_from_mapping(cls: type, data: Mapping[str, Any] | None, *, key: str) -> Any:
    """``cls(**data)`` for a frozen dataclass; unknown keys are a one-line ConfigError."""
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"model.params.{key} must be a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"model.params.{key}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}")
    return cls(**dict(data))


@dataclass(frozen=True)
class LossWeights:
    """Weights of the Stage 1 loss terms (DESIGN §4 "Losses"). ``align`` is w_cls."""

    l1: float = 1.0
    perceptual: float = 1.0
    gan: float = 0.1
    entropy: float = 0.1
    commit: float = 0.25
    align: float = 1.0
    recovery: float = 1.0
    lecam: float = 0.01

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"model.params.loss_weights.{f.name} must be a number >= 0, got {value!r}")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LossWeights:
        return _typed_from_mapping(cls, data, key="loss_weights")


@dataclass(frozen=True)
class PerceptualSettings:
    """How to build the LPIPS network (``mergevq.pretrained.load_lpips``)."""

    net: str = "vgg"
    weights_path: str | None = None
    random_init: bool = False

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> PerceptualSettings:
        return _typed_from_mapping(cls, data, key="perceptual")


@dataclass
class GeneratorLosses:
    """One generator micro-step. Every field is a scalar tensor; a term that is off is 0.

    ``total`` is the weighted sum that is back-propagated (before the 1/accumulation scaling)."""

    total: torch.Tensor
    l1: torch.Tensor
    perceptual: torch.Tensor
    gan: torch.Tensor
    entropy: torch.Tensor
    commit: torch.Tensor
    align: torch.Tensor
    recovery: torch.Tensor
    recovery_accuracy: torch.Tensor
    usage: torch.Tensor  # distinct codes in the batch / tokens in the batch
    per_sample_entropy: torch.Tensor
    codebook_entropy: torch.Tensor
    reconstruction: torch.Tensor  # (B, 3, H, W), detached: the discriminator's fake input

    def scalars(self) -> dict[str, torch.Tensor]:
        """The loggable scalars (everything but the reconstruction), detached."""
        return {f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self) if f.name != "reconstruction"}


@dataclass
class DiscriminatorLosses:
    """One discriminator micro-step: scalar tensors."""

    total: torch.Tensor
    hinge: torch.Tensor
    lecam: torch.Tensor
    logits_real: torch.Tensor  # mean D logit on real images
    logits_fake: torch.Tensor  # mean D logit on reconstructions

    def scalars(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).detach() for f in dataclasses.fields(self)}
