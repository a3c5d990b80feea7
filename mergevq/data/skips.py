"""``SkippedImagesReport``: count the images skipped during an epoch, by reason, and report them.

Why a callback reading the batch: ``collate_skip_none`` puts ``num_skipped`` / ``skipped_paths`` /
``skipped_reasons`` / ``skipped_details`` into every batch, so the counts are exact whatever the
number of DataLoader workers, with no shared state between processes. At the end of each train /
validation epoch the per-rank counts of every reason (``taming.data.image_io.SKIP_REASONS``) are
summed across ranks (``trainer.strategy.reduce``), rank 0 logs one warning line saying why images
were skipped with an example path per reason, and the counters are reset. Example line::

    skipped 3 images this train epoch: 2 unreadable (e.g. /x/bad.jpg), 1 oversize
    (e.g. /x/huge.png: 9000x6000 px, over the 40 Mpx limit)
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

from taming.data.image_io import SKIP_REASONS, UNREADABLE

__all__ = ["SkippedImagesReport", "describe_skips"]

log = logging.getLogger(__name__)

Example = tuple[str, str]  # (path, detail)


def describe_skips(stage: str, counts: dict[str, int], examples: dict[str, Example]) -> str:
    """One line: "skipped 6 unreadable images this train epoch (e.g. a.jpg)" for one reason, or
    "skipped 3 images this train epoch: 2 unreadable (e.g. …), 1 oversize (e.g. …)" for several."""
    present = {reason: n for reason, n in counts.items() if n > 0}
    if len(present) == 1:
        ((reason, n),) = present.items()
        return f"skipped {n} {reason} {_images(n)} this {stage} epoch{_example_hint(examples.get(reason))}"
    total = sum(present.values())
    parts = [f"{n} {reason}{_example_hint(examples.get(reason))}" for reason, n in present.items()]
    return f"skipped {total} {_images(total)} this {stage} epoch: {', '.join(parts)}"


def _images(n: int) -> str:
    return "image" if n == 1 else "images"


def _example_hint(example: Example | None) -> str:
    if example is None:
        return ""
    path, detail = example
    return f" (e.g. {path}: {detail})" if detail else f" (e.g. {path})"


def _skipped_entries(batch: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(path, reason, detail) per named skipped sample; batches without reasons mean unreadable."""
    paths = [str(p) for p in batch.get("skipped_paths") or []]
    reasons = batch.get("skipped_reasons") or [UNREADABLE] * len(paths)
    details = batch.get("skipped_details") or [""] * len(paths)
    return [
        (path, reason if reason in SKIP_REASONS else UNREADABLE, str(detail))
        for path, reason, detail in zip(paths, reasons, details)
    ]


class SkippedImagesReport(pl.Callback):
    """Warn once per epoch with the number of images skipped and why (train and validation)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, dict[str, int]] = {s: _zero_counts() for s in ("train", "validation")}
        self.examples: dict[str, dict[str, Example]] = {"train": {}, "validation": {}}
        self.last_report: dict[str, int] = {}  # stage -> total of the last finished epoch
        self.last_reasons: dict[str, dict[str, int]] = {}  # stage -> reason -> count, same epoch

    def _add(self, stage: str, batch: Any) -> None:
        if not isinstance(batch, dict):
            return
        entries = _skipped_entries(batch)
        counts = self.counts[stage]
        # Samples skipped without a Skipped marker (None) carry no reason: they are unreadable.
        counts[UNREADABLE] += max(0, int(batch.get("num_skipped", 0)) - len(entries))
        for path, reason, detail in entries:
            counts[reason] += 1
            self.examples[stage].setdefault(reason, (path, detail))

    def _report(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        local = torch.tensor([self.counts[stage][r] for r in SKIP_REASONS], dtype=torch.long,
                             device=pl_module.device)  # fmt: skip
        summed = trainer.strategy.reduce(local, reduce_op="sum").tolist()
        counts = dict(zip(SKIP_REASONS, (int(n) for n in summed)))
        examples = self.examples[stage]
        self.counts[stage], self.examples[stage] = _zero_counts(), {}
        if getattr(trainer, "sanity_checking", False):
            return
        total = sum(counts.values())
        self.last_report[stage], self.last_reasons[stage] = total, counts
        if total > 0 and trainer.is_global_zero:
            log.warning("%s", describe_skips(stage, counts, examples))

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


def _zero_counts() -> dict[str, int]:
    return {reason: 0 for reason in SKIP_REASONS}
