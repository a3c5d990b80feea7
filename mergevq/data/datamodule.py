"""``ImageDataModule``: wraps already-built image datasets into train/val DataLoaders.

The config system instantiates the nested dataset nodes first, so the YAML reads
``data: {target: mergevq.data.datamodule.ImageDataModule, params: {batch_size: 16,
train: {target: taming.data.imagenet.ImageNetTrain, params: {root: ...}}, validation: {...}}}``.

Batches come from ``taming.data.base.collate_skip_none``: unreadable images are dropped, so a batch
can be smaller than ``batch_size`` and carries ``num_skipped`` / ``skipped_paths``; in the rare
case that every image of a batch is unreadable the batch holds *only* those two keys, and the
training/validation step must skip it (``if "image" not in batch``). Add
``mergevq.data.skips.SkippedImagesReport`` to the trainer's callbacks to report the counts.

Training order (``mergevq.data.samplers``): a permutation of (``seed``, epoch), sharded over the
ranks by the sampler itself, resumed mid-epoch exactly where the checkpoint was written; each sample's
crop and flip are drawn from a generator seeded with (``seed``, epoch, index), so they do not depend
on the number of workers. Validation: in order; under DDP Lightning shards it. This module imports
no model code.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from mergevq.data.samplers import ResumableDataModule, SeededSamples
from mergevq.errors import ConfigError
from taming.data.base import collate_skip_none

__all__ = ["ImageDataModule", "accelerator_present"]


def accelerator_present() -> bool:
    """Whether torch sees an accelerator (pinned host memory only helps then)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


class ImageDataModule(ResumableDataModule):
    """Train/validation DataLoaders over given datasets, skipping unreadable images.

    Args:
        train: the training dataset (shuffled, ``drop_last`` batches), or None for eval-only use.
        validation: the validation dataset (in order, all samples), or None.
        batch_size: per-process training batch size (global batch = this x devices x nodes).
        val_batch_size: per-process validation batch size; defaults to ``batch_size``.
        num_workers: DataLoader worker processes per rank.
        pin_memory: pin host memory (only applied when an accelerator is present).
        persistent_workers: keep workers alive across epochs (only with ``num_workers > 0``).
        drop_last: drop the last incomplete training batch (keeps per-step shapes uniform).
        seed: the training order and the per-sample augmentation seeds (configs: ``${run.seed}``).
    """

    def __init__(
        self,
        *,
        train: Dataset | None = None,
        validation: Dataset | None = None,
        batch_size: int,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        drop_last: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if train is None and validation is None:
            raise ConfigError("data: give at least one of train or validation (a dataset node)")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if val_batch_size is not None and val_batch_size < 1:
            raise ConfigError(f"data.val_batch_size must be >= 1, got {val_batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.train_dataset = train
        self.val_dataset = validation
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.drop_last = drop_last

    def _loader(self, dataset: Dataset, *, batch_size: int, train: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            SeededSamples(dataset=dataset, seed=self.seed) if train else dataset,
            batch_size=batch_size,
            sampler=self.train_sampler(len(dataset), keyed=True, batch_size=batch_size) if train else None,
            drop_last=self.drop_last if train else False,
            num_workers=workers,
            collate_fn=collate_skip_none,
            pin_memory=self.pin_memory and accelerator_present(),
            persistent_workers=self.persistent_workers and workers > 0,
            generator=self.loader_generator(),
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            raise ConfigError("data.train is not set, so this data module cannot train")
        return self._loader(self.train_dataset, batch_size=self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader | list:
        # An empty list tells Lightning there is no validation loop.
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, batch_size=self.val_batch_size, train=False)
