"""Stage 2 optimiser pieces (DESIGN §5 "Optimisation"): AdamW parameter groups and the warmup + decay
learning-rate schedule, both counted in optimizer steps.

Weight decay rule (LlamaGen's and nanoGPT's ``configure_optimizers``): a parameter with two or more
dimensions is decayed, every other one is not. That decays every matmul weight **and the embedding
tables** (class, merge-instruction and sub-token embeddings are 2-D), and leaves norm gains, biases
and other vectors alone. We follow it as written rather than exempting embeddings: it is the recipe
the paper's baselines were trained with.

The rule is applied to the parameter shapes *as built*: :func:`decay_parameter_names` is called
when the model is constructed and its answer is kept, because FSDP (``use_orig_params=True``)
later turns every parameter into a 1-D shard view, where ``ndim`` no longer tells weights from
vectors.

Schedule: the LR factor of optimizer step ``s`` (0-based; the step that uses it) is

* warmup, ``s < warmup_steps``: ``(s + 1) / warmup_steps`` (the first step already moves),
* then with ``p = (s - warmup_steps) / (total_steps - warmup_steps)`` clipped to [0, 1]:
  ``cosine``: ``m + (1 - m) (1 + cos(pi p)) / 2``; ``linear``: ``m + (1 - m) (1 - p)``;
  ``constant``: 1, where ``m`` is ``min_lr_ratio``.

:func:`warmup_decay_scheduler` wraps it in a ``LambdaLR`` stepped once per optimizer step (Lightning
``interval: "step"``). The factor is a plain function of the step, so a scheduler's state dict holds
only ``last_epoch`` (the step count) and the base LRs: resuming continues the schedule exactly, and
the schedule itself always comes from the config.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from mergevq.errors import ConfigError

__all__ = [
    "DECAYS",
    "LRSchedule",
    "build_adamw",
    "decay_parameter_names",
    "param_groups",
    "warmup_decay_scheduler",
]

DECAYS = ("cosine", "linear", "constant")

log = logging.getLogger(__name__)


def decay_parameter_names(model: nn.Module) -> frozenset[str]:
    """Names of the trainable parameters of ``model`` that get weight decay: those with ndim >= 2."""
    return frozenset(name for name, p in model.named_parameters() if p.requires_grad and p.ndim >= 2)


def param_groups(model: nn.Module, *, decay_names: Collection[str], weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW parameter groups of ``model``'s trainable parameters: ``"decay"`` (the parameters
    named in ``decay_names``, with ``weight_decay``) and ``"no_decay"`` (the rest, weight decay 0).
    Every trainable parameter lands in exactly one group; a name in ``decay_names`` that ``model``
    does not have is an error (the names were taken from another model)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        seen.add(name)
        (decay if name in decay_names else no_decay).append(p)
    missing = sorted(set(decay_names) - seen)
    if missing:
        raise ValueError(f"decay_names lists parameters the model does not have: {', '.join(missing[:5])}")
    return [
        {"params": decay, "weight_decay": float(weight_decay), "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_adamw(
    model: nn.Module,
    *,
    decay_names: Collection[str],
    lr: float,
    betas: Sequence[float],
    weight_decay: float,
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``model``."""
    b1, b2 = (float(b) for b in betas)
    groups = param_groups(model, decay_names=decay_names, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, lr=float(lr), betas=(b1, b2), eps=float(eps))


@dataclass(frozen=True)
class LRSchedule:
    """Warmup then decay, in optimizer steps (see the module docstring for the formula).

    ``total_steps``: the step count the decay spans (warmup included); None = the run's length,
    resolved by the caller (``ARModule`` uses Lightning's ``estimated_stepping_batches``, i.e.
    ``trainer.max_steps`` or ``max_epochs`` x optimizer steps per epoch). Set it explicitly when a
    run will be extended later (a resumed run with a larger ``max_steps`` would otherwise stretch the
    decay)."""

    warmup_steps: int = 0
    decay: str = "cosine"
    total_steps: int | None = None
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        where = "model.params.schedule"
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"{where}.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.decay not in DECAYS:
            raise ConfigError(f"{where}.decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if self.total_steps is not None and (
            isinstance(self.total_steps, bool) or not isinstance(self.total_steps, int) or self.total_steps < 1
        ):
            raise ConfigError(f"{where}.total_steps must be null or an int >= 1, got {self.total_steps!r}")
        ratio = self.min_lr_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ConfigError(f"{where}.min_lr_ratio must be a number in [0, 1], got {ratio!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> LRSchedule:
        """From the config mapping; unknown keys are a one-line error, missing ones keep defaults."""
        values = dict(values or {})
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(
                f"model.params.schedule: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(names)}"
            )
        return cls(**values)

    def fitted(self, total_steps: int) -> LRSchedule:
        """This schedule for a run of ``total_steps`` optimizer steps: a warmup longer than the run (a
        smoke run of a recipe, e.g. 20 steps against a 5000-step warmup) is clamped to the run's
        length with one warning naming both numbers; ``total_steps`` < 1 is a one-line error."""
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(f"the LR schedule needs total_steps >= 1, got {total_steps!r}")
        if self.warmup_steps <= total_steps:
            return self
        from lightning.pytorch.utilities import rank_zero_only

        if rank_zero_only.rank == 0:  # one line per run, not per process
            log.warning("model.params.schedule.warmup_steps=%d is longer than the run's %d optimizer steps: the warmup "
                        "is clamped to %d steps", self.warmup_steps, total_steps, total_steps)
        return replace(self, warmup_steps=total_steps)

    def factor(self, step: int, total_steps: int) -> float:
        """The LR multiplier of optimizer step ``step`` (0-based) in a run of ``total_steps`` steps."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(1, total_steps - self.warmup_steps)
        progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.decay == "cosine" else 1.0 - progress
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape


def _factor_function(schedule: LRSchedule, total_steps: int) -> Callable[[int], float]:
    # A plain function (not a callable object): LambdaLR then leaves it out of its state dict, so a
    # checkpoint holds only the step count and the schedule always comes from the config.
    def factor(step: int) -> float:
        return schedule.factor(step, total_steps)

    return factor


def warmup_decay_scheduler(
    optimizer: torch.optim.Optimizer, *, schedule: LRSchedule, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with :meth:`LRSchedule.factor` (of the schedule :meth:`LRSchedule.fitted` to the
    run), to be stepped after every optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _factor_function(schedule.fitted(total_steps), total_steps))
