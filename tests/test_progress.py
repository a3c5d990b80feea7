"""Progress bars (issue 13 item 6): one tqdm bar on rank 0 only, counting the right total, for the
inference loops; MERGEVQ_PROGRESS=0 hides it, =1 draws the terminal bar. Two ranks are simulated by
the rank the loops are told (no process group: the collectives are the identity)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from mergevq.distributed import DistContext
from mergevq.errors import ConfigError
from mergevq.inference.generation_eval import ImageArray, extract_features
from mergevq.inference.progress import ENV, loader_items, progress_bar, track


@pytest.fixture(autouse=True)
def _automatic(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)


def _count(values: list[int], *, rank: int, file) -> list[int]:
    bar = progress_bar(total=sum(values), desc="work", unit="img", is_main=rank == 0, file=file)
    return list(track(values, bar, count=lambda v: v))


def test_only_rank_zero_draws_and_the_bar_counts_the_total():
    streams = {rank: io.StringIO() for rank in (0, 1)}
    for rank, stream in streams.items():
        assert _count([3, 3, 1], rank=rank, file=stream) == [3, 3, 1]  # the items pass through unchanged
    assert streams[1].getvalue() == ""
    final = streams[0].getvalue().split("\r")[-1]
    assert "work: 100%" in final and "7/7" in final, streams[0].getvalue()


def test_the_bar_is_closed_when_the_loop_raises():
    stream = io.StringIO()
    bar = progress_bar(total=4, desc="work", unit="img", is_main=True, file=stream)
    with pytest.raises(RuntimeError):
        for item in track([1, 1, 1, 1], bar, count=lambda v: v):
            if item and bar.n == 2:
                raise RuntimeError("stop")
    assert bar.disable  # tqdm's close() disables the bar
    assert "2/4" in stream.getvalue().split("\r")[-1]


def test_environment_switch(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    stream = io.StringIO()
    _count([2, 2], rank=0, file=stream)
    assert stream.getvalue() == ""
    monkeypatch.setenv(ENV, "1")  # a terminal bar even though a StringIO is no terminal: unicode blocks
    _count([2, 2], rank=0, file=stream)
    assert "4/4" in stream.getvalue() and "█" in stream.getvalue()
    monkeypatch.setenv(ENV, "yes")
    with pytest.raises(ConfigError, match="MERGEVQ_PROGRESS='yes': expected 0"):
        progress_bar(total=1, desc="work", unit="img", is_main=True)


def test_loader_items_counts_skipped_images():
    assert loader_items({"image": torch.zeros(3, 3, 4, 4), "num_skipped": 2}) == 5
    assert loader_items({"num_skipped": 4}) == 4  # every image of the batch unreadable


class _Features(torch.nn.Module):
    """Stands in for the Inception: a 2048-d feature per image."""

    with_logits = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))[:, None].expand(-1, 2048)


def test_gfid_feature_extraction_shows_rank_zero_share(capsys):
    images = ImageArray(pixels=np.zeros((10, 4, 4, 3), np.uint8), path="mem.npz", member="arr_0")
    for rank in (0, 1):
        features = extract_features(images, inception=_Features(), device=torch.device("cpu"), batch_size=2,
                                    ctx=DistContext(rank=rank, world_size=2, local_rank=rank), desc="Inception")
        assert features.pool.shape == (5, 2048)  # this rank's share (no process group to gather)
        err = capsys.readouterr().err
        if rank == 0:
            assert "Inception: 100%" in err and "5/5" in err.split("\r")[-1], err
        else:
            assert err == ""
