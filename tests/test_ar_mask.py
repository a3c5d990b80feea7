"""MergeAR mask policy (DESIGN §5): the tensor-built training mask against a slow loop reference."""

import time

import pytest
import torch

from mergevq.ar.mask import MaskPolicy, first_occurrence, is_duplicate


def reference_first(row: list[int]) -> list[bool]:
    return [row[j] not in row[:j] for j in range(len(row))]


def reference_mask(indices: list[int], *, prefix: int, window: int) -> torch.Tensor:
    """The rule as written in DESIGN §5, one entry at a time, on [prefix, t_1..t_{L-1}]."""
    length = len(indices)
    size = prefix + length - 1
    first = reference_first(indices)
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(q + 1):  # causal
            if k < prefix:  # the prefix is always in view
                mask[q, k] = True
                continue
            i, j = q - prefix + 1, k - prefix + 1  # token positions (1-based); q >= k >= prefix
            mask[q, k] = first[j - 1] or i - j < window  # unique tokens, the recent window (self included)
    return mask


def duplicate_heavy(batch: int, length: int, *, vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g) * 4099  # few distinct values: many merges


@pytest.mark.parametrize("prefix, window", [(1, 1), (2, 1), (2, 3), (1, 4), (2, 16), (2, 40)])
def test_training_mask_matches_the_slow_reference(prefix, window):
    indices = duplicate_heavy(3, 16, vocab=5, seed=window + 10 * prefix)
    mask = MaskPolicy(prefix=prefix, window=window).training_mask(indices)
    assert mask.shape == (3, 1, prefix + 15, prefix + 15) and mask.dtype == torch.bool
    for b in range(3):
        assert torch.equal(mask[b, 0], reference_mask(indices[b].tolist(), prefix=prefix, window=window))


def test_window_at_least_length_is_plain_causal():
    indices = duplicate_heavy(2, 12, vocab=3, seed=1)
    mask = MaskPolicy(prefix=2, window=12).training_mask(indices)
    causal = torch.ones(13, 13, dtype=torch.bool).tril()
    assert torch.equal(mask[:, 0], causal.expand(2, -1, -1))
    assert MaskPolicy(prefix=2, window=None).training_mask(indices) is None  # SDPA's is_causal path


def test_all_unique_sequences_are_plain_causal_and_all_equal_keep_only_window():
    unique = torch.arange(10)[None]
    assert torch.equal(MaskPolicy(prefix=1, window=2).training_mask(unique)[0, 0], torch.ones(10, 10).tril().bool())
    same = torch.full((1, 10), 7)
    mask = MaskPolicy(prefix=1, window=2).training_mask(same)[0, 0]
    # query t_9 (row 9) sees the class token, t_1 (first occurrence), t_8 and itself
    assert mask[9].nonzero().flatten().tolist() == [0, 1, 8, 9]


def test_first_occurrence_and_is_duplicate():
    indices = duplicate_heavy(4, 30, vocab=6, seed=3)
    first = first_occurrence(indices)
    for b in range(4):
        assert first[b].tolist() == reference_first(indices[b].tolist())
    for i in range(30):
        assert torch.equal(is_duplicate(indices[:, :i], indices[:, i]), ~first[:, i])


def test_training_mask_is_built_with_tensor_ops():
    """L = 1024 (a 32x32 grid), batch 8: a Python loop over L^2 pairs would take minutes."""
    indices = duplicate_heavy(8, 1024, vocab=300, seed=0)
    start = time.perf_counter()
    mask = MaskPolicy(prefix=2, window=32).training_mask(indices)
    assert time.perf_counter() - start < 5.0
    assert mask.shape == (8, 1, 1025, 1025)


def test_invalid_policies_are_rejected():
    with pytest.raises(ValueError, match="prefix"):
        MaskPolicy(prefix=0, window=4)
    with pytest.raises(ValueError, match="window"):
        MaskPolicy(prefix=1, window=0)
