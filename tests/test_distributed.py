"""mergevq.distributed: contiguous shards that reassemble the whole, and rank-ordered gathers."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from _distributed import run_ranks
from mergevq import distributed as D
from mergevq.errors import ConfigError


@pytest.mark.parametrize("n, world", [(0, 1), (7, 1), (7, 2), (8, 3), (2, 4), (100, 8)])
def test_shards_partition_in_rank_order(n, world):
    parts = [D.shard(n, rank=r, world_size=world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bad_shard_arguments():
    with pytest.raises(ValueError):
        D.shard(5, rank=2, world_size=2)


def test_single_process_is_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = D.init_from_env(backend="gloo")
    assert (ctx.rank, ctx.world_size, ctx.is_main) == (0, 1, True)
    x = torch.arange(6).reshape(3, 2)
    assert D.gather_rows(x) is x
    assert torch.equal(D.all_reduce_sum(x.clone()), x)


def test_world_without_master_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        D.init_from_env(backend="gloo")


def _gather_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        n = 5
        part = D.shard(n, rank=rank, world_size=world)
        rows = torch.arange(n * 3, dtype=torch.float64).reshape(n, 3)[part.start:part.stop]
        gathered = D.gather_rows(rows)
        total = D.all_reduce_sum(torch.tensor([float(len(part))]))
        if rank == 0:
            torch.save({"gathered": gathered, "total": total}, f"{out_dir}/gather.pt")
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_gather_rows_reassembles_uneven_shards(tmp_path):
    run_ranks(_gather_worker, world=3, tmp_path=tmp_path, what="3-process gather")
    out = torch.load(tmp_path / "gather.pt")
    assert torch.equal(out["gathered"], torch.arange(15, dtype=torch.float64).reshape(5, 3))
    assert out["total"].item() == 5
