"""Token merging invariants: schedule, bipartite matching, size-weighted merge, assignment, K draws."""

from collections import Counter

import pytest
import torch

from mergevq.errors import ConfigError
from mergevq.layers.attention import Attention
from mergevq.tokenizer.merge import (
    K_CANDIDATES,
    K_NOMINAL,
    KSampler,
    bipartite_soft_matching,
    canonicalize,
    default_candidates,
    max_mergeable,
    merge_schedule,
    merge_tokens,
    plan_merges,
    proportional_bias,
    reachable_counts,
    track_assignment,
)

# --- schedule (the authors' rule) ------------------------------------------------------------


@pytest.mark.parametrize("num_tokens", [16, 64, 256, 1024])
def test_schedule_sums_and_respects_per_layer_max_for_every_reachable_k(num_tokens):
    reachable = reachable_counts(num_tokens=num_tokens, depth=12)
    assert num_tokens in reachable
    for num_keep in reachable:
        schedule = merge_schedule(num_tokens=num_tokens, num_keep=num_keep, depth=12)
        assert len(schedule) == 12
        assert sum(schedule) == num_tokens - num_keep
        n = num_tokens
        for r in schedule:
            # N non-CLS tokens + [CLS] protected: at most floor(N/2) merge
            assert 0 <= r <= max_mergeable(n + 1, protect_first=True) == n // 2
            n -= r
        assert n == num_keep


@pytest.mark.parametrize(
    "num_tokens,num_merge,depth,expected",
    [
        # the per-layer token counts of the reference tensors (tests/data/official_tokenizer)
        (64, 28, 3, (14, 9, 5)),
        (64, 48, 3, (24, 16, 8)),
        (64, 55, 3, (28, 18, 9)),
        # GR-d64 at K = 144 (the authors' encoder at 256 px)
        (256, 112, 12, (12, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 5)),
    ],
)
def test_schedule_equals_the_authors(num_tokens, num_merge, depth, expected):
    plan = plan_merges(num_tokens=num_tokens, num_merge=num_merge, depth=depth)
    assert plan.planned == plan.realized == expected
    assert plan.num_keep == num_tokens - num_merge


def test_every_preset_candidate_is_reachable_and_keep_all_is_zeros():
    for name, num_tokens in [("G", 1024), ("G-d32", 1024), ("GR", 256), ("R", 256)]:
        for k in K_CANDIDATES[name]:
            assert sum(merge_schedule(num_tokens=num_tokens, num_keep=k, depth=12)) == num_tokens - k
    assert merge_schedule(num_tokens=256, num_keep=256, depth=12) == (0,) * 12


def test_a_plan_too_steep_for_the_sequence_merges_fewer():
    # The authors' student view: a 224 px G view (784 tokens) asked for the 768 merges of K = 256.
    plan = plan_merges(num_tokens=784, num_merge=768, depth=12)
    assert sum(plan.planned) == 768
    assert all(0 <= r <= p or p <= 0 for r, p in zip(plan.realized, plan.planned))
    assert plan.num_keep == 784 - sum(plan.realized) > 784 - 768


@pytest.mark.parametrize(
    "num_tokens,num_keep,depth",
    [(64, 65, 12), (64, 0, 12), (64, -3, 12), (64, 8, 3), (64, 1, 1), (64, 8, 0)],
)
def test_schedule_rejects_bad_or_unreachable_k(num_tokens, num_keep, depth):
    with pytest.raises(ConfigError) as info:
        merge_schedule(num_tokens=num_tokens, num_keep=num_keep, depth=depth)
    assert "\n" not in str(info.value)


def test_unreachable_k_names_reachable_neighbours():
    with pytest.raises(ConfigError, match=r"nearest reachable: \[9, 10, 11\], smallest 9"):
        merge_schedule(num_tokens=64, num_keep=8, depth=3)


# --- one matching step ------------------------------------------------------------------------


def _brute_force_groups(metric, r):
    """Reference matching with Python loops: {A position merged: B position it joins}."""
    n = metric.shape[0]
    m = torch.nn.functional.normalize(metric.float(), dim=-1)
    best = {}
    for i in range(2, n, 2):  # A without [CLS]
        scores = [(float(m[i] @ m[j]), j) for j in range(1, n, 2)]
        score, partner = max(scores, key=lambda t: (t[0], -t[1]))
        best[i] = (score, partner)
    chosen = sorted(best, key=lambda i: -best[i][0])[:r]
    return {i: best[i][1] for i in chosen}


def test_matching_matches_a_brute_force_reference_and_protects_cls():
    bsz, n, r = 3, 11, 4
    metric = torch.randn(bsz, n, 6)
    plan = bipartite_soft_matching(metric, r=r)
    assert plan.num_out == n - r
    for b in range(bsz):
        o2n = plan.old_to_new[b]
        assert o2n[0] == 0 and (o2n[1:] != 0).all()  # [CLS] stays first and alone
        assert sorted(set(o2n.tolist())) == list(range(n - r))  # every output slot is used
        groups = _brute_force_groups(metric[b], r)
        for i in range(n):
            joins = [j for j in range(n) if j != i and o2n[j] == o2n[i]]
            if i in groups:
                assert o2n[i] == o2n[groups[i]]
            elif i % 2 == 0:  # unmerged A tokens stay alone
                assert joins == []


def test_merge_tokens_is_size_weighted_mean_and_conserves_mass():
    bsz, n, dim, r = 2, 13, 5, 5
    x = torch.randn(bsz, n, dim, dtype=torch.float64)
    sizes = torch.randint(1, 5, (bsz, n)).double()
    sizes[:, 0] = 1
    plan = bipartite_soft_matching(torch.randn(bsz, n, 4), r=r)
    merged, new_sizes = merge_tokens(x, sizes, plan)
    assert merged.shape == (bsz, n - r, dim) and new_sizes.shape == (bsz, n - r)
    torch.testing.assert_close((merged * new_sizes[..., None]).sum(1), (x * sizes[..., None]).sum(1))
    assert torch.equal(new_sizes.sum(1), sizes.sum(1))
    assert torch.equal(merged[:, 0], x[:, 0]) and (new_sizes[:, 0] == 1).all()
    for b in range(bsz):
        for k in range(n - r):
            members = [i for i in range(n) if plan.old_to_new[b, i] == k]
            weight = sum(sizes[b, i] for i in members)
            expect = sum(sizes[b, i] * x[b, i] for i in members) / weight
            torch.testing.assert_close(merged[b, k], expect)
            assert new_sizes[b, k] == weight


def test_rejects_too_many_merges():
    with pytest.raises(ValueError, match="r=5"):
        bipartite_soft_matching(torch.randn(1, 9, 4), r=5)  # A = 5 tokens, [CLS] protected
    bipartite_soft_matching(torch.randn(1, 9, 4), r=4)
    bipartite_soft_matching(torch.randn(1, 9, 4), r=5, protect_first=False)


def test_multi_level_merge_tracks_assignment_and_means_of_originals():
    bsz, length, dim = 3, 40, 4
    original = torch.randn(bsz, length, dim, dtype=torch.float64)
    cls = torch.randn(bsz, 1, dim, dtype=torch.float64)
    x = torch.cat([cls, original], 1)  # (B, 1 + L, D)
    sizes = torch.ones(bsz, 1 + length, dtype=torch.float64)
    assign = torch.arange(length).expand(bsz, -1)
    for r in merge_schedule(num_tokens=length, num_keep=7, depth=6):
        plan = bipartite_soft_matching(torch.randn(bsz, x.shape[1], 3), r=r)
        x, sizes = merge_tokens(x, sizes, plan)
        assign = track_assignment(assign, plan)
    assert x.shape[1] == 8
    assert torch.equal(x[:, 0], cls[:, 0]) and (sizes[:, 0] == 1).all()
    canon = canonicalize(x[:, 1:], sizes[:, 1:], assign)
    for tokens, sizes_k, asg in [(x[:, 1:], sizes[:, 1:], assign), (canon.tokens, canon.sizes, canon.assign)]:
        for b in range(bsz):
            counts = torch.bincount(asg[b], minlength=7)
            assert (counts > 0).all() and torch.equal(counts.double(), sizes_k[b])
            for k in range(7):
                torch.testing.assert_close(tokens[b, k], original[b][asg[b] == k].mean(0))
    _assert_canonical(canon.assign, 7)


def _assert_canonical(assign, num_keep):
    assert (assign[:, 0] == 0).all()
    for row in assign:
        first = [int((row == k).nonzero()[0]) for k in range(num_keep)]
        assert first == sorted(first) and len(set(first)) == num_keep


def test_canonicalize_permutes_consistently():
    bsz, num_keep = 2, 5
    assign = torch.tensor([[3, 3, 1, 0, 4, 2, 2, 1, 0, 0, 4, 3], [4, 0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4]])
    tokens = torch.arange(bsz * num_keep, dtype=torch.float32).view(bsz, num_keep, 1)
    sizes = torch.stack([torch.bincount(a, minlength=num_keep) for a in assign]).float()
    canon = canonicalize(tokens, sizes, assign)
    assert canon.assign.tolist() == [[0, 0, 1, 2, 3, 4, 4, 1, 2, 2, 3, 0], [0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0]]
    assert canon.tokens[..., 0].tolist() == [[3, 1, 0, 4, 2], [9, 5, 6, 7, 8]]
    for b in range(bsz):  # the token holding position l is unchanged
        torch.testing.assert_close(canon.tokens[b][canon.assign[b]], tokens[b][assign[b]])
        assert torch.equal(canon.sizes[b][canon.assign[b]], sizes[b][assign[b]])
    _assert_canonical(canon.assign, num_keep)


# --- proportional attention -------------------------------------------------------------------


def test_proportional_attention_equals_physically_repeated_tokens():
    attn = Attention(dim=8, num_heads=2).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    sizes = torch.tensor([[1, 3, 2, 1, 4], [1, 1, 5, 2, 2]])
    biased = attn(x, key_bias=proportional_bias(sizes).double())
    for b in range(2):
        repeated = x[b].repeat_interleave(sizes[b], dim=0)[None]  # (1, sum(sizes), 8)
        plain = attn(repeated)
        first = torch.cumsum(sizes[b], 0) - sizes[b]  # index of each token's first copy
        torch.testing.assert_close(plain.out[0, first], biased.out[b], atol=1e-5, rtol=0)
        torch.testing.assert_close(plain.metric[0, first], biased.metric[b])
    assert proportional_bias(torch.ones(1, 3)).abs().max() == 0


def test_attention_metric_is_mean_key_over_heads():
    attn = Attention(dim=8, num_heads=2)
    x = torch.randn(1, 4, 8)
    keys = attn.qkv(x)[..., 8:16].view(1, 4, 2, 4)  # (B, N, H, head_dim)
    torch.testing.assert_close(attn(x).metric, keys.mean(2))


# --- K sampling ---------------------------------------------------------------------------------


def test_ksampler_is_identical_across_ranks_and_peaks_at_nominal():
    rank0 = KSampler.from_preset("GR", seed=7)
    rank1 = KSampler(candidates=K_CANDIDATES["GR"], nominal=144, seed=7)
    draws = [rank0.sample(step) for step in range(2000)]
    assert draws == [rank1.sample(step) for step in range(2000)]
    assert set(draws) <= set(K_CANDIDATES["GR"]) and len(set(draws)) > 2
    counts = Counter(draws)
    assert set(draws) == set(K_CANDIDATES["GR"])  # the floor keeps every candidate in training
    assert counts.most_common(1)[0][0] == 144
    assert abs(counts[144] / 2000 - rank0.weights[1]) < 0.05
    other_seed = [KSampler.from_preset("GR", seed=8).sample(s) for s in range(200)]
    assert other_seed != draws[:200]
    assert abs(sum(rank0.weights) - 1) < 1e-12 and max(rank0.weights) == rank0.weights[1]


@pytest.mark.parametrize("name", ["G", "G-d32", "GR", "R"])
def test_presets_and_default_candidates(name):
    nominal = K_NOMINAL[name]
    above = len(K_CANDIDATES[name]) - 2
    num_tokens = 1024 if name in ("G", "G-d32") else 256
    assert default_candidates(num_tokens=num_tokens, nominal=nominal, above=above) == K_CANDIDATES[name]
    sampler = KSampler.from_preset(name)
    assert sampler.nominal == nominal and sampler.sample(0) in K_CANDIDATES[name]


def test_ksampler_rejects_bad_config():
    with pytest.raises(ConfigError):
        KSampler(candidates=(121, 144), nominal=100)
    with pytest.raises(ConfigError):
        KSampler(candidates=(144, 121), nominal=144)
    with pytest.raises(ConfigError):
        KSampler.from_preset("XL")
    with pytest.raises(ConfigError, match="std"):
        KSampler.from_preset("GR", std=0.0)
    with pytest.raises(ConfigError, match="floor"):
        KSampler.from_preset("GR", floor=-0.01)
    with pytest.raises(ConfigError):
        default_candidates(num_tokens=256, nominal=150)
