"""Training order that a resumed run reproduces exactly, mid-epoch included (DESIGN §7 "Resume").

Three things make a resumed run see what an uninterrupted one would have seen:

* **The order is a function of (seed, epoch)**: :class:`ResumableSampler` draws epoch e's permutation
  from a generator seeded with ``seed + epoch`` (a DataLoader shuffled by one seeded generator would
  replay epoch 0's order after a resume). It is a ``DistributedSampler``, so Lightning uses it as it
  is under DDP (it would otherwise wrap the loader's sampler in its own): each rank takes every
  world-th index of the (padded) permutation, as ``DistributedSampler`` does.
* **The position within the epoch**: :meth:`ResumableSampler.resume` skips the samples this rank
  consumed before the checkpoint, in the resumed epoch only, while ``len()`` stays the epoch's full
  length (Lightning counts the batches already done into the epoch). :class:`ResumableDataModule`
  stores (epoch, batches done) in the checkpoint and hands them to the sampler.
* **Per-sample augmentation seeds**: :class:`KeyedResumableSampler` yields ``(epoch, index)`` keys and
  :class:`SeededSamples` loads sample ``index`` with a ``torch.Generator`` seeded from
  (seed, epoch, index), so crops and flips depend neither on the DataLoader worker that loads the
  sample nor on what was loaded before.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset, DistributedSampler

from mergevq.errors import ConfigError
from mergevq.seeding import derived_seed

__all__ = ["KeyedResumableSampler", "ResumableDataModule", "ResumableSampler", "SeededSamples"]

RESUME_KEY = "train_order"


class ResumableSampler(DistributedSampler):
    """Rank ``rank``'s share of a permutation of ``range(length)`` seeded with ``seed + epoch``
    (the whole permutation when ``num_replicas`` is 1). Like ``DistributedSampler(shuffle=True,
    drop_last=False)``, the permutation is padded with its first indices to a multiple of
    ``num_replicas``, so every rank yields ``ceil(length / num_replicas)`` indices."""

    def __init__(self, *, length: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.length = length
        self._skip_epoch: int | None = None
        self._skip = 0

    def resume(self, *, epoch: int, consumed: int) -> None:
        """Continue ``epoch`` after the first ``consumed`` indices of this rank (a mid-epoch resume)."""
        if consumed < 0:
            raise ValueError(f"consumed must be >= 0, got {consumed}")
        self.set_epoch(epoch)
        self._skip_epoch, self._skip = int(epoch), int(consumed)

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, the skipped ones of a resumed epoch removed."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        if self.num_replicas > 1 and order:
            padding = self.total_size - len(order)
            order += (order * (padding // len(order) + 1))[:padding]
        mine = order[self.rank:self.total_size:self.num_replicas]
        return mine[self._skip:] if self.epoch == self._skip_epoch else mine

    def __iter__(self) -> Iterator[Any]:
        return iter(self.indices())

    def __len__(self) -> int:
        return self.num_samples


class KeyedResumableSampler(ResumableSampler):
    """:class:`ResumableSampler` yielding ``(epoch, index)`` keys for :class:`SeededSamples`."""

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        return iter([(epoch, index) for index in self.indices()])


class SeededItems(Protocol):
    def get(self, index: int, *, generator: torch.Generator | None = None) -> Any: ...

    def __len__(self) -> int: ...


class SeededSamples(Dataset):
    """``dataset`` indexed by ``(epoch, index)`` keys: item ``index`` loaded with a generator seeded
    from (``seed``, epoch, index). ``dataset`` must have ``get(index, *, generator=None)``."""

    def __init__(self, *, dataset: SeededItems, seed: int) -> None:
        if not callable(getattr(dataset, "get", None)):
            raise ConfigError(f"data.train: {type(dataset).__name__} has no get(index, generator=...) method; a "
                              "training set must draw its augmentations from a given generator (exact resume)")
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        generator = torch.Generator().manual_seed(derived_seed(self.seed, epoch, index))
        return self.dataset.get(index, generator=generator)


class ResumableDataModule(pl.LightningDataModule):
    """The resumable training order shared by the image and the codes data modules.

    Its ``state_dict`` (which Lightning stores in every checkpoint) holds the epoch and the training
    batches this rank had finished; after ``load_state_dict`` (Lightning restores it before it asks
    for the loaders) :meth:`train_sampler` continues that epoch where it stopped."""

    def __init__(self, *, seed: int) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"data.params.seed must be an int >= 0, got {seed!r}")
        self.seed = seed
        self._resume: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def train_sampler(self, length: int, *, keyed: bool, batch_size: int) -> ResumableSampler:
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        cls = KeyedResumableSampler if keyed else ResumableSampler
        sampler = cls(length=length, seed=self.seed, num_replicas=world, rank=rank)
        if self._resume is not None:
            # Kept, not consumed: Lightning may build the loader more than once before training (e.g.
            # estimated_stepping_batches); the skip only ever applies to the resumed epoch itself.
            epoch, batches = self._resume
            sampler.resume(epoch=epoch, consumed=batches * batch_size)
        return sampler

    def loader_generator(self) -> torch.Generator:
        """The DataLoader's own generator: creating an iterator then draws its worker seeds from it,
        not from the global RNG that the model's dropout uses (a resumed run creates one iterator
        more than an uninterrupted one, mid-epoch)."""
        return torch.Generator().manual_seed(self.seed)

    def state_dict(self) -> dict[str, Any]:
        trainer = self.trainer
        if trainer is None:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {RESUME_KEY: {"epoch": int(trainer.current_epoch), "batches": int(done)}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        order = state_dict.get(RESUME_KEY)
        if order is not None:
            self._resume = (int(order["epoch"]), int(order["batches"]))

