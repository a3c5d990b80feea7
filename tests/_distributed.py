"""Run a worker function on N gloo ranks in spawned processes, bounded in time (CPU tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch.multiprocessing as mp


def run_ranks(worker: Callable[..., None], *, world: int, tmp_path: Path, timeout_s: float = 60.0,
              what: str = "2-process gloo test") -> None:
    """Spawn ``worker(rank, world, init_file, out_dir)`` on ``world`` ranks; fail the test (after
    killing the workers) if they do not finish within ``timeout_s``. Workers write their results
    into ``out_dir`` (``tmp_path``); ``init_file`` is a file:// rendezvous in ``tmp_path``."""
    ctx = mp.start_processes(worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"{what} did not finish within {timeout_s:.0f} s")
