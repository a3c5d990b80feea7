"""``SkippedImagesReport``: count the unreadable images skipped during an epoch and report them.

Why a callback reading the batch: ``collate_skip_none`` puts ``num_skipped`` / ``skipped_paths``
into every batch, so the count is exact whatever the number of DataLoader workers, with no shared
state between processes. At the end of each train / validation epoch the per-rank counts are summed
across ranks (``trainer.strategy.reduce``), rank 0 logs one warning line naming an example path,
and the counters are reset.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

__all__ = ["SkippedImagesReport"]

log = logging.getLogger(__name__)


class SkippedImagesReport(pl.Callback):
    """Warn once per epoch with the number of unreadable images skipped (train and validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {"train": 0, "validation": 0}
        self.examples: dict[str, str | None] = {"train": None, "validation": None}
        self.last_report: dict[str, int] = {}  # stage -> total of the last finished epoch

    def _add(self, stage: str, batch: Any) -> None:
        if not isinstance(batch, dict):
            return
        self.counts[stage] += int(batch.get("num_skipped", 0))
        paths = batch.get("skipped_paths") or []
        if paths and self.examples[stage] is None:
            self.examples[stage] = str(paths[0])

    def _report(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = torch.tensor(self.counts[stage], dtype=torch.long, device=pl_module.device)
        total = int(trainer.strategy.reduce(local, reduce_op="sum").item())
        example = self.examples[stage]
        self.counts[stage], self.examples[stage] = 0, None
        if getattr(trainer, "sanity_checking", False):
            return
        self.last_report[stage] = total
        if total > 0 and trainer.is_global_zero:
            hint = f" (e.g. {example})" if example else ""
            log.warning(
                "skipped %d unreadable images this %s epoch%s", total, stage, hint
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self._add("train", batch)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._add("validation", batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report("train", trainer, pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report("validation", trainer, pl_module)
