"""Pictures at every tokenizer validation: a reconstruction grid (originals | K = L | nominal K |
smallest K, each K row labelled with its PSNR) and the merge groups at those K (pairs original |
groups), the same pictures ``mergevq demo`` writes (:func:`mergevq.visual.tokenizer_pictures`), sent
to the run's logger (:func:`mergevq.training.loggers.log_picture`).

The first ``num_images`` images of the first validation batch are kept on rank 0 only and drawn once
at the end of the validation, with the EMA weights when the run keeps an EMA (the weights a run's
export writes), else with the raw ones. Sanity-check validations draw nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from mergevq.errors import ConfigError
from mergevq.training.callbacks import EMACallback
from mergevq.training.loggers import log_picture
from mergevq.visual import tokenizer_pictures

__all__ = ["ValidationPictures"]

log = logging.getLogger(__name__)


class ValidationPictures(pl.Callback):
    """Draws ``pl_module.tokenizer`` (or its EMA) on a few validation images after each validation."""

    def __init__(self, *, num_images: int = 8) -> None:
        super().__init__()
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ConfigError(f"model.params.val_pictures must be an int >= 1 (0 turns the pictures off), "
                              f"got {num_images!r}")
        self.num_images = num_images
        self._images: torch.Tensor | None = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._images = None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._images is not None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if isinstance(batch, dict) and "image" in batch:  # an all-unreadable batch has none
            self._images = batch["image"][: self.num_images].detach()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images, self._images = self._images, None
        if images is None or trainer.logger is None:
            return
        emas = [c for c in trainer.callbacks if isinstance(c, EMACallback) and c.ema is not None]
        model = emas[0].ema if emas else pl_module.tokenizer
        was_training = model.training
        model.eval()
        try:
            pictures = tokenizer_pictures(model, images.to(next(model.parameters()).device))
        finally:
            model.train(was_training)
        run_dir = Path(trainer.default_root_dir)
        for name, picture in pictures.items():
            log_picture(trainer.logger, name=name, image=picture, step=int(pl_module.train_steps), run_dir=run_dir)
