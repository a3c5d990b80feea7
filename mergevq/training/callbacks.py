"""Training callbacks: the generator EMA (DESIGN §4 "EMA") and the step limit.

Both read the counters the training module keeps (``generator_updates``, ``train_steps``; see
``mergevq.training.tokenizer_module``) instead of Lightning's ``global_step``, which counts every
``optimizer.step()`` of the generator *and* the discriminator.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from mergevq.errors import ConfigError

__all__ = ["EMA_STATE_KEY", "EMACallback", "StepLimit"]

log = logging.getLogger(__name__)

EMA_STATE_KEY = "ema_state_dict"


class EMACallback(pl.Callback):
    """Exponential moving average of ``pl_module.tokenizer`` (the generator only), kept in fp32.

    After every applied generator step: ``ema ← decay · ema + (1 − decay) · param`` for every
    parameter; buffers are copied. The copy starts from the weights at the start of fit (or from the
    checkpoint's ``ema_state_dict`` when resuming, so resume is exact) and is saved in every checkpoint
    as ``checkpoint["ema_state_dict"]`` (a plain state dict of the tokenizer, what ``mergevq export``
    writes by default). DDP keeps the raw weights identical on all ranks, so every rank's EMA is the
    same without communication.

    Validation: after each validation batch the EMA model is evaluated with the training module's
    ``evaluation_metrics`` and logged under ``val_ema/...`` (next to the raw weights' ``val/...``).
    """

    def __init__(self, *, decay: float = 0.999) -> None:
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ConfigError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.ema: nn.Module | None = None
        self._loaded_state: dict[str, torch.Tensor] | None = None
        self._seen_updates = 0

    # ---- the average ------------------------------------------------------------------------------

    def start(self, model: nn.Module) -> nn.Module:
        """Make the EMA copy of ``model`` (fp32, eval mode, no gradients); load a restored state."""
        ema = copy.deepcopy(model).float().eval().requires_grad_(False)
        if self._loaded_state is not None:
            ema.load_state_dict(self._loaded_state, strict=True)
            self._loaded_state = None
        self.ema = ema
        return ema

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        if self.ema is None:
            raise RuntimeError("EMACallback.update called before start()")
        ema_params = list(self.ema.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay)
        for ema_buffer, buffer in zip(self.ema.buffers(), model.buffers()):
            ema_buffer.copy_(buffer)

    # ---- Lightning hooks --------------------------------------------------------------------------

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start(pl_module.tokenizer)
        self._seen_updates = pl_module.generator_updates

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.generator_updates != self._seen_updates:
            self.update(pl_module.tokenizer)
            self._seen_updates = pl_module.generator_updates

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.ema is None or not isinstance(batch, dict) or "image" not in batch:
            return
        metrics = pl_module.evaluation_metrics(self.ema, batch)
        pl_module.log_evaluation("val_ema", metrics, batch_size=batch["image"].shape[0])

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint[EMA_STATE_KEY] = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(EMA_STATE_KEY)
        if state is None:
            log.warning("the checkpoint has no %s: the EMA restarts from the raw weights", EMA_STATE_KEY)
        self._loaded_state = state

    @contextlib.contextmanager
    def weights(self) -> Any:
        """``with ema_callback.weights() as model:`` the EMA model (for evaluation code)."""
        if self.ema is None:
            raise RuntimeError("the EMA model does not exist before fit starts")
        yield self.ema


class StepLimit(pl.Callback):
    """Stop after ``max_steps`` training steps (``pl_module.train_steps``: optimizer steps of the
    generator/discriminator pair, including skipped ones). -1: no limit. The checkpoint callback sees
    ``trainer.should_stop`` at the same batch and writes the final checkpoint."""

    def __init__(self, *, max_steps: int) -> None:
        super().__init__()
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or (max_steps < 1 and max_steps != -1):
            raise ConfigError(f"trainer.max_steps must be -1 or an int >= 1, got {max_steps!r}")
        self.max_steps = max_steps

    def reached(self, pl_module: pl.LightningModule) -> bool:
        return self.max_steps != -1 and pl_module.train_steps >= self.max_steps

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.reached(pl_module):
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.reached(pl_module):
            trainer.should_stop = True
