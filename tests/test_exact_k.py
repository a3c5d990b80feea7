"""Exact-K sampling (issue 14 item 3): once a row holds K distinct indices, later tokens only repeat
indices already produced, so every sample is a true K-token image and the compressed cache has the
fixed capacity P + K + w. Before the K-th distinct token the draws are the free mode's. A tiny
MergeAR with random weights on a 4 x 4 grid: flat enough that free sampling makes ~16 distinct tokens."""

from __future__ import annotations

import pytest
import torch

from mergevq.ar.kv_cache import KVCache
from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import SamplingSettings, allowed_sub_tokens, generate
from mergevq.tokenizer.quantizer import indices_to_subtokens

pytestmark = pytest.mark.usefixtures("one_thread")
LABELS = torch.tensor([0, 3, 5, 9, 1, 2])
NUM_KEEP = torch.tensor([1, 2, 3, 5, 8, 16])
SEEDS = torch.arange(6) + 40


@pytest.fixture(scope="module")
def model() -> MergeAR:
    torch.manual_seed(0)
    return MergeAR(config=build_config(preset="tiny", changes={"grid": (4, 4), "window": 2})).eval()


def _kth_distinct(row: list[int], k: int) -> int:
    """Position (0-based) of the k-th distinct index of ``row``; len(row) when there are fewer."""
    seen: set[int] = set()
    for i, value in enumerate(row):
        seen.add(value)
        if len(seen) == k:
            return i
    return len(row)


@pytest.mark.parametrize("settings", [
    SamplingSettings(temperature=1.0),
    SamplingSettings(temperature=1.0, cfg_scale=(2.0, 1.5), top_p=0.9),
    SamplingSettings(temperature=0.0, cfg_scale=3.0),
], ids=["plain", "cfg-top-p", "greedy-cfg"])
def test_exact_k_samples_hold_at_most_k_indices_and_follow_free_mode_until_the_kth(model, settings):
    free = generate(model, labels=LABELS, num_keep=NUM_KEEP, seeds=SEEDS, settings=settings)
    exact_settings = SamplingSettings(**{**settings.__dict__, "exact_k": True})
    exact = generate(model, labels=LABELS, num_keep=NUM_KEEP, seeds=SEEDS, settings=exact_settings)
    for b, k in enumerate(NUM_KEEP.tolist()):
        free_row, exact_row = free.indices[b].tolist(), exact.indices[b].tolist()
        distinct_free = len(set(free_row))
        assert len(set(exact_row)) == min(k, distinct_free) == exact.unique_tokens[b]
        # identical draws up to and including the k-th distinct token: the restriction starts after it
        upto = _kth_distinct(free_row, k)
        assert exact_row[:upto + 1] == free_row[:upto + 1]
    assert (free.unique_tokens > NUM_KEEP).any()  # the model does make more than K when free


def test_exact_k_cache_has_fixed_capacity_prefix_plus_k_plus_window(model, monkeypatch):
    settings = SamplingSettings(temperature=1.0, exact_k=True)
    reads = []
    original = KVCache._safe_steps
    monkeypatch.setattr(KVCache, "_safe_steps", lambda self: reads.append(self.bounded) or original(self))
    for keep in (2, 5):
        out = generate(model, labels=LABELS, num_keep=keep, seeds=SEEDS, settings=settings)
        assert out.cache_capacity == 2 + keep + 2  # P + K + w, never grown
        assert int(out.peak_cache_entries.max()) <= 2 + keep + 2
        assert not reads  # bounded: the free-slot count is never read back from the device
        free = generate(model, labels=LABELS, num_keep=keep, seeds=SEEDS, settings=SamplingSettings(temperature=1.0))
        assert free.cache_capacity > 2 + keep + 2  # the free mode grew back towards the full cache
        assert reads and not any(reads)
        reads.clear()
    full = generate(model, labels=LABELS, num_keep=2, seeds=SEEDS, settings=settings, compressed_cache=False)
    assert torch.equal(full.indices, generate(model, labels=LABELS, num_keep=2, seeds=SEEDS, settings=settings).indices)


def test_allowed_sub_tokens_are_those_of_produced_indices_consistent_with_the_draws():
    bits = (2, 3)
    produced = torch.tensor([[0b101_10, 0b011_10, 0b111_01, 0b000_11]])  # (high 3 bits, low 2 bits)
    valid = torch.tensor([True, True, True, False])  # the last one is not produced yet
    first = allowed_sub_tokens(produced, valid, torch.zeros(1, 0, dtype=torch.long), bits=bits)
    assert first[0].nonzero().flatten().tolist() == [0b01, 0b10]  # low sub-tokens of the produced three
    given = torch.tensor([[0b10]])
    second = allowed_sub_tokens(produced, valid, given, bits=bits)
    assert second[0].nonzero().flatten().tolist() == [0b011, 0b101]  # only indices ending in 0b10
    assert indices_to_subtokens(produced, bits)[0, 0].tolist() == [0b10, 0b101]


def test_exact_k_must_be_a_boolean():
    with pytest.raises(ValueError, match="exact_k"):
        SamplingSettings(exact_k=1)
