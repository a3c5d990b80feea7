"""Codebook usage (mergevq/metrics/codebook.py): counts, fraction used and entropy on known index sets."""

from __future__ import annotations

import math

import pytest
import torch

from mergevq.metrics.codebook import CodeUsage, code_counts, usage_from_counts


def test_counts_fraction_and_entropy_of_a_known_index_set():
    # 16 codes; 8 tokens: code 3 four times, codes 0 and 15 twice each
    indices = torch.tensor([[3, 3, 0, 15], [3, 15, 0, 3]])
    counts = code_counts(indices, 16)
    assert counts.dtype == torch.int64 and counts.shape == (16,)
    expected = torch.zeros(16, dtype=torch.long)
    expected[3], expected[0], expected[15] = 4, 2, 2
    assert torch.equal(counts, expected)
    stats = usage_from_counts(counts)
    assert (stats.num_codes, stats.total, stats.used) == (16, 8, 3)
    assert stats.fraction_used == pytest.approx(3 / 16)
    # p = (1/2, 1/4, 1/4): H = 1.5 bits, perplexity 2^1.5
    assert stats.entropy_bits == pytest.approx(1.5)
    assert stats.perplexity == pytest.approx(2 ** 1.5)


def test_uniform_use_of_every_code_has_full_entropy_and_one_code_has_none():
    d = 6
    every = usage_from_counts(code_counts(torch.arange(2 ** d).repeat(3), 2 ** d))
    assert every.fraction_used == 1.0 and every.entropy_bits == pytest.approx(d)
    single = usage_from_counts(code_counts(torch.full((5, 7), 9), 2 ** d))
    assert single.used == 1 and single.entropy_bits == 0.0 and single.perplexity == 1.0
    nothing = usage_from_counts(torch.zeros(8, dtype=torch.long))
    assert (nothing.total, nothing.used, nothing.entropy_bits) == (0, 0, 0.0)


def test_accumulating_batches_equals_counting_everything_at_once():
    g = torch.Generator().manual_seed(0)
    num_codes = 2 ** 18
    batches = [torch.randint(0, 300, (4, 36), generator=g) * 811 for _ in range(5)]  # spread over 2^18
    usage = CodeUsage(num_codes=num_codes)
    for batch in batches:
        usage.update(batch)
    usage.all_reduce()  # single process: the identity
    together = usage_from_counts(code_counts(torch.cat(batches), num_codes))
    assert usage.stats() == together
    distinct = torch.cat(batches).unique().numel()
    assert together.used == distinct and together.fraction_used == distinct / num_codes
    assert 0 < together.entropy_bits <= math.log2(distinct) + 1e-9


def test_bad_indices_are_clear_errors():
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        code_counts(torch.tensor([1, 8]), 8)
    with pytest.raises(ValueError, match="negative"):
        code_counts(torch.tensor([-1, 2]), 8)
    with pytest.raises(ValueError, match="integers"):
        code_counts(torch.tensor([0.5]), 8)
    with pytest.raises(ValueError, match="positive int"):
        CodeUsage(num_codes=0)
