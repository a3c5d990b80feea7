"""The exactness and memory contract of the KV caches (DESIGN §5, issue 6 bar).

Step-by-step decoding through the compressed (or full) cache gives the logits of one teacher-forced
pass with the MergeAR training mask; the compressed cache holds exactly prefix + unique tokens so far
+ the duplicates in the recent window, so its peak is prefix + unique + w on sequences built to reach it.
"""

import pytest
import torch

from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import teacher_forced_decode

TOL = 1e-4


def tiny(**changes) -> MergeAR:
    torch.manual_seed(0)
    return MergeAR(config=build_config(preset="tiny", changes=changes or None)).eval()


def merged_sequences(batch: int, length: int, *, vocab: int, seed: int) -> torch.Tensor:
    """Random raster grids with many repeats (what merging produces), indices spread over 18 bits."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g) * 9973 % 2**18


def max_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


SMALL = {"grid": (4, 4)}  # L = 16: the same code path in a quarter of the steps


@pytest.mark.parametrize("window, merge_token, compressed", [
    (1, True, True), (3, False, True), (5, True, False), (20, True, True),
])
def test_cached_decoding_equals_the_masked_forward_pass(window, merge_token, compressed):
    model = tiny(window=window, merge_token=merge_token, **SMALL)
    indices = merged_sequences(4, 16, vocab=6, seed=window)
    labels, num_keep = torch.tensor([0, 3, 9, 10]), torch.tensor([6, 2, 9, 16])  # 10 = the null class
    forced = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep,
                                   compressed_cache=compressed)
    assert max_diff(forced.logits, model(indices, labels, num_keep).logits) <= TOL


@pytest.mark.parametrize("compressed", [True, False])
def test_cached_decoding_equals_the_masked_forward_pass_on_the_8x8_grid(compressed):
    model = tiny()  # default window: one grid row (8)
    indices = merged_sequences(3, 64, vocab=12, seed=0)
    labels, num_keep = torch.tensor([0, 3, 10]), torch.tensor([12, 30, 64])
    forced = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep,
                                   compressed_cache=compressed)
    assert max_diff(forced.logits, model(indices, labels, num_keep).logits) <= TOL


def test_causal_policy_and_wide_window_without_m_are_plain_causal_decoding():
    causal = tiny(mask="causal", merge_token=False, **SMALL)
    wide = MergeAR(config=causal.config.replace({"mask": "mergear", "window": 100})).eval()
    wide.load_state_dict(causal.state_dict())
    indices = merged_sequences(2, 16, vocab=4, seed=5)
    labels, num_keep = torch.tensor([1, 2]), torch.tensor([4, 4])
    reference = causal(indices, labels, num_keep).logits
    for model in (causal, wide):
        forced = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep)
        assert max_diff(forced.logits, reference) <= TOL
        assert forced.cache_capacity == 1 + 15 and forced.peak_cache_entries.tolist() == [16, 16]  # no eviction


def expected_entries(row: list[int], *, prefix: int, window: int) -> list[int]:
    """Entries held after feeding t_i: prefix + unique so far + duplicates among the last w tokens."""
    out = []
    for i in range(1, len(row)):  # t_1..t_{L-1} are fed
        fed = row[:i]
        unique = len(set(fed))
        dups = sum(1 for j in range(max(0, i - window), i) if fed[j] in fed[:j])
        out.append(prefix + unique + dups)
    return out


def constructed() -> torch.Tensor:
    """4x4 grids built so that the window fills with duplicates once every unique token is in."""
    uniques_first = list(range(1, 9)) + [5] * 8  # 8 unique, then duplicates
    interleaved = [i // 2 for i in range(10)] + [3] * 6  # each index twice in a row, 5 unique
    blocks = [i // 4 for i in range(12)] + [0] * 4  # merges of 4 in a row, 3 unique, then repeats
    repeats = list(range(5)) * 3 + [1]  # 5 unique, a repeating pattern
    return torch.tensor([uniques_first, interleaved, blocks, repeats]) * 131  # spread over the bits


@pytest.mark.parametrize("window", [1, 2, 4])
def test_compressed_cache_holds_prefix_plus_unique_plus_window(window):
    model = tiny(window=window, **SMALL)
    indices = constructed()
    labels, num_keep = torch.tensor([0, 1, 2, 3]), torch.tensor([8, 5, 3, 5])
    forced = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep)
    prefix = model.config.prefix
    for b, row in enumerate(indices.tolist()):
        want = expected_entries(row, prefix=prefix, window=window)
        assert forced.entries[b].tolist() == want  # at every step, never more
        unique = len(set(row[:-1]))
        assert forced.peak_cache_entries[b].item() == prefix + unique + window == max(want)
    # capacity planned as P + max K + w and never grown: no row has more than max K unique tokens
    assert forced.cache_capacity == prefix + 8 + window
    assert max_diff(forced.logits, model(indices, labels, num_keep).logits) <= TOL


def test_compressed_cache_grows_when_a_row_has_more_unique_tokens_than_planned():
    model = tiny(window=2, **SMALL)
    indices = merged_sequences(2, 16, vocab=60, seed=2)  # ~14 distinct values per row
    labels, num_keep = torch.tensor([1, 2]), torch.tensor([2, 2])
    forced = teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep)
    assert 2 + 2 + 2 < forced.cache_capacity <= 2 + 15
    assert forced.peak_cache_entries.max() > 2 + 2 + 2
    assert max_diff(forced.logits, model(indices, labels, num_keep).logits) <= TOL


def test_compressed_cache_allocates_less_than_the_full_cache():
    model = tiny()
    compressed = model.new_cache(batch=4, compressed=True, max_unique=16)
    full = model.new_cache(batch=4, compressed=False, max_unique=16)
    assert compressed.capacity == 2 + 16 + 8 and full.capacity == 2 + 63
    assert compressed.nbytes() * full.capacity == full.nbytes() * compressed.capacity
