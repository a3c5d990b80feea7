"""Training order that a resumed run reproduces.

A DataLoader shuffled by a seeded ``torch.Generator`` draws epoch e's order from the generator's state
after e epochs; a run resumed at epoch e builds a fresh generator and replays epoch 0's order instead.
:class:`EpochShuffleSampler` makes the order a function of (seed, epoch) only. Lightning calls
``set_epoch`` on a loader's sampler before every training epoch (a single process); under DDP it
wraps this sampler in its ``DistributedSamplerWrapper``, which shuffles per (seed, epoch) itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochShuffleSampler"]


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(length)`` seeded with ``seed + epoch``."""

    def __init__(self, *, length: int, seed: int) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.length = length
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length
