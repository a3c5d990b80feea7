"""Process-group helpers for the evaluation, extraction and sampling commands (DESIGN §7).

Training runs under Lightning, which owns its process group. The one-pass commands
(``evaluate-tokenizer``, ``reconstruct``, ``extract-codes``, ``sample``) are launched with ``torchrun``
(or SLURM through it) and use these helpers directly: :func:`init_from_env` joins the group torchrun
describes in the environment, :func:`shard` gives each rank one contiguous slice of the work, and
:func:`gather_rows` concatenates per-rank results in rank order, so N ranks reproduce the
single-process result row for row (no padding, no duplicated samples).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mergevq.errors import ConfigError

__all__ = ["DistContext", "all_reduce_sum", "barrier", "gather_rows", "init_from_env", "is_distributed",
           "shard", "shutdown"]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size`` (``local_rank`` on its node)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {value!r}") from None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_from_env(*, backend: str) -> DistContext:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
    ``MASTER_ADDR``/``MASTER_PORT``; a single process (no ``WORLD_SIZE`` or 1) joins nothing.
    ``backend``: ``nccl`` (CUDA), ``hccl`` (Ascend) or ``gloo`` (CPU). Idempotent."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    if is_distributed():
        return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)
    if world > 1:
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(name):
                raise ConfigError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun")
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def shutdown() -> None:
    """Leave the process group. On the normal path every rank first waits for the others: gloo was
    seen to abort a rank at exit ("terminate called without an active exception") whose peer had
    already torn the group down. While an exception propagates (a ``finally``), no collective is
    entered: the other ranks may never reach it."""
    if is_distributed():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def shard(num_items: int, *, rank: int, world_size: int) -> range:
    """The contiguous slice of ``range(num_items)`` that ``rank`` handles. Slices differ in length
    by at most one and concatenate, in rank order, to ``range(num_items)``."""
    if num_items < 0 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard({num_items}, rank={rank}, world_size={world_size}) is not a valid split")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place and returned); the identity in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``(n_rank, ...)`` tensor along dim 0, in rank order, on every rank.
    Ranks may hold different ``n_rank`` (including 0); trailing dims and dtype must agree."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    count = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))  # all_gather needs equal shapes
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])
