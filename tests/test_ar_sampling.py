"""Sampling: greedy determinism and batch independence, per-sample seeds, CFG, top-k / top-p, the
inverse-CDF draw, and the Generated statistics."""

import pytest
import torch

from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import SamplingSettings, generate, per_sample_uniforms, pick

GREEDY = SamplingSettings(temperature=0.0)


@pytest.fixture(scope="module")
def model() -> MergeAR:
    torch.manual_seed(0)
    # a 4x4 grid (16 steps) keeps the file fast; sharpened heads so that sampling has structure
    m = MergeAR(config=build_config(preset="tiny", changes={"grid": (4, 4), "window": 2})).eval()
    with torch.no_grad():
        for head in m.heads:
            head.weight.mul_(20)
    return m


def test_greedy_is_deterministic_and_independent_of_the_batch(model):
    labels, num_keep = torch.tensor([3, 0, 7, 1, 9, 10, 2, 5]), torch.tensor([4, 16, 8, 2, 6, 9, 12, 3])
    seeds = torch.arange(8)
    big = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=GREEDY)
    assert torch.equal(big.indices, generate(model, labels=labels, num_keep=num_keep, seeds=seeds + 100,
                                             settings=GREEDY).indices)  # greedy ignores the seeds
    for b in (0, 5):  # batch 1 vs its row in batch 8
        one = generate(model, labels=labels[b:b + 1], num_keep=num_keep[b:b + 1], seeds=seeds[b:b + 1],
                       settings=GREEDY)
        assert torch.equal(one.indices[0], big.indices[b])
        assert one.peak_cache_entries[0] == big.peak_cache_entries[b]


def test_a_sample_depends_only_on_its_seed_label_and_k(model):
    settings = SamplingSettings(temperature=1.0, top_k=50, cfg_scale=(2.0, 1.5))
    labels, num_keep, seeds = torch.tensor([1, 2, 3]), torch.tensor([4, 8, 12]), torch.tensor([11, 22, 33])
    first = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=settings)
    order = torch.tensor([2, 0])  # another batch size, other positions
    second = generate(model, labels=labels[order], num_keep=num_keep[order], seeds=seeds[order], settings=settings)
    assert torch.equal(second.indices, first.indices[order])
    other = generate(model, labels=labels, num_keep=num_keep, seeds=seeds + 1, settings=settings)
    assert not torch.equal(other.indices, first.indices)


def test_compressed_and_full_cache_sample_the_same_grids(model):
    settings = SamplingSettings(temperature=1.0, cfg_scale=(3.0, 3.0), cfg_schedule="linear", top_p=0.9)
    labels, num_keep, seeds = torch.tensor([4, 5]), torch.tensor([3, 10]), torch.tensor([0, 1])
    compressed = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=settings)
    full = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=settings, compressed_cache=False)
    assert torch.equal(compressed.indices, full.indices)
    assert full.cache_capacity == 2 + 15 and full.peak_cache_entries.tolist() == [17, 17]
    for b in range(2):
        row = compressed.indices[b]
        assert compressed.unique_tokens[b] == row.unique().numel()
        assert compressed.peak_cache_entries[b] <= 2 + len(set(row[:-1].tolist())) + 2  # P + U + w
    assert compressed.indices.shape == (2, 16) and int(compressed.indices.max()) < 2**18


def test_guidance_scale_one_is_unguided_and_guidance_changes_samples(model):
    labels, num_keep, seeds = torch.tensor([6, 7]), torch.tensor([5, 5]), torch.tensor([3, 4])
    plain = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=SamplingSettings())
    linear_one = SamplingSettings(cfg_scale=(1.0, 1.0), cfg_schedule="linear")
    assert torch.equal(plain.indices, generate(model, labels=labels, num_keep=num_keep, seeds=seeds,
                                               settings=linear_one).indices)
    guided = generate(model, labels=labels, num_keep=num_keep, seeds=seeds,
                      settings=SamplingSettings(cfg_scale=(4.0, 4.0)))
    assert not torch.equal(plain.indices, guided.indices)


def test_linear_schedule_ramps_from_one_to_the_scale():
    s = SamplingSettings(cfg_scale=(3.0, 5.0), cfg_schedule="linear")
    assert s.scale(0, step=1, length=16) == 1.0 and s.scale(1, step=16, length=16) == 5.0
    assert s.scale(0, step=6, length=11) == 2.0
    assert SamplingSettings(cfg_scale=(3.0, 5.0)).scale(1, step=1, length=16) == 5.0


def test_inverse_cdf_draw_follows_the_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    probs = logits.softmax(-1)[0]
    u = (torch.arange(10000, dtype=torch.float64) + 0.5) / 10000  # evenly spread uniforms
    ids = pick(logits.expand(10000, -1), u, temperature=1.0, top_k=0, top_p=1.0)
    assert torch.allclose(torch.bincount(ids, minlength=4) / 10000, probs, atol=2e-4)
    # probs 0.087, 0.237, 0.644, 0.032: top-k = 2 and top-p = 0.7 keep {2, 1}; top-p = 0.6 keeps {2}
    assert set(pick(logits.expand(10000, -1), u, temperature=1.0, top_k=2, top_p=1.0).tolist()) == {1, 2}
    assert set(pick(logits.expand(10000, -1), u, temperature=1.0, top_k=0, top_p=0.7).tolist()) == {1, 2}
    assert set(pick(logits.expand(10000, -1), u, temperature=1.0, top_k=0, top_p=0.6).tolist()) == {2}
    assert pick(logits, u[:1], temperature=0.0, top_k=0, top_p=1.0).item() == 2
    cold = pick(logits.expand(10000, -1), u, temperature=0.05, top_k=0, top_p=1.0)
    assert (cold == 2).float().mean() > 0.99


def test_per_sample_uniforms_depend_only_on_the_seed():
    a = per_sample_uniforms(torch.tensor([5, 9]), steps=4, draws=2)
    b = per_sample_uniforms(torch.tensor([9]), steps=4, draws=2)
    assert torch.equal(a[1], b[0]) and not torch.equal(a[0], a[1])


def test_bad_settings_are_rejected(model):
    with pytest.raises(ValueError, match="cfg_schedule"):
        SamplingSettings(cfg_schedule="cosine")
    with pytest.raises(ValueError, match="top_p"):
        SamplingSettings(top_p=0.0)
    with pytest.raises(ValueError, match="cfg_scale has 3 values .* 2 sub-tokens: give one value, or one value per"):
        generate(model, labels=torch.tensor([1]), num_keep=4, seeds=torch.tensor([0]),
                 settings=SamplingSettings(cfg_scale=(2.0, 2.0, 2.0)))
