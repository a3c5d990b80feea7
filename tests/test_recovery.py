"""Source recovery: unmerge is a gather; the learned recovery can learn assignments (DESIGN §4 step 5)."""

import pytest
import torch
import torch.nn.functional as F

from mergevq.tokenizer.recovery import LearnedRecovery, assignment_accuracy, unmerge

pytestmark = pytest.mark.usefixtures("one_thread")


def random_canonical_assign(num_positions: int, num_keep: int, generator: torch.Generator) -> torch.Tensor:
    """A random valid assignment (L,) with values in [0, K), every value used, canonically numbered.

    Random merges: K positions seed the K groups, every other position joins a random group. Then
    renumber the groups by the first raster position they cover (the canonical order of DESIGN §4).
    """
    labels = torch.randint(0, num_keep, (num_positions,), generator=generator)
    seeds = torch.randperm(num_positions, generator=generator)[:num_keep]
    labels[seeds] = torch.arange(num_keep)
    first = torch.full((num_keep,), num_positions).scatter_reduce(
        0, labels, torch.arange(num_positions), reduce="amin"
    )
    rank = torch.empty(num_keep, dtype=torch.long)
    rank[first.argsort()] = torch.arange(num_keep)
    return rank[labels]


def test_canonical_helper_is_canonical():
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        assign = random_canonical_assign(16, 6, gen)
        first_seen = []
        for v in assign.tolist():
            if v not in first_seen:
                first_seen.append(v)
        assert first_seen == list(range(6))


def test_unmerge_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randn(3, 5, 7, generator=gen)
    assign = torch.stack([random_canonical_assign(12, 5, gen) for _ in range(3)])
    expected = torch.empty(3, 12, 7)
    for b in range(3):
        for pos in range(12):
            expected[b, pos] = tokens[b, assign[b, pos]]
    assert torch.equal(unmerge(tokens, assign), expected)


def test_unmerge_identity_when_nothing_merged():
    tokens = torch.randn(2, 9, 4)
    assign = torch.arange(9).expand(2, 9)
    assert torch.equal(unmerge(tokens, assign), tokens)


def test_unmerge_gradient_counts_positions():
    """The backward of a gather is a scatter-add: each kept token receives one unit per position it holds."""
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randn(2, 4, 3, requires_grad=True)
    assign = torch.stack([random_canonical_assign(10, 4, gen) for _ in range(2)])
    unmerge(tokens, assign).sum().backward()
    counts = torch.stack([torch.bincount(a, minlength=4) for a in assign]).float()
    assert torch.equal(tokens.grad, counts[:, :, None].expand(2, 4, 3))


def test_unmerge_validates_shapes():
    with pytest.raises(ValueError):
        unmerge(torch.randn(2, 4), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        unmerge(torch.randn(2, 4, 3), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError):
        unmerge(torch.randn(2, 4, 3), torch.zeros(2, 4))


def test_learned_recovery_handles_any_k():
    model = LearnedRecovery(code_dim=18, dim=32, num_positions=16, depth=2, num_heads=4)
    for k in (4, 9, 16):
        codes = torch.randn(2, k, 18).sign()
        logits = model(codes)
        assert logits.shape == (2, 16, k)
        assign = model.predict(codes)
        assert assign.shape == (2, 16) and assign.dtype == torch.int64
        assert int(assign.min()) >= 0 and int(assign.max()) < k
    with pytest.raises(ValueError):
        model(torch.randn(2, 17, 18))
    with pytest.raises(ValueError):
        model(torch.randn(2, 4, 12))



@pytest.mark.parametrize("query_self_attention", [False, True])
def test_learned_recovery_overfits_one_batch(one_thread, query_self_attention):
    gen = torch.Generator().manual_seed(0)
    batch, num_positions, num_keep = 8, 16, 6
    codes = (torch.randint(0, 2, (batch, num_keep, 18), generator=gen) * 2 - 1).float()
    assign = torch.stack([random_canonical_assign(num_positions, num_keep, gen) for _ in range(batch)])
    model = LearnedRecovery(code_dim=18, dim=32, num_positions=num_positions, depth=2, num_heads=4,
                            query_self_attention=query_self_attention)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    accuracy = 0.0
    for step in range(400):
        logits = model(codes)  # (B, L, K)
        loss = F.cross_entropy(logits.transpose(1, 2), assign)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            accuracy = float(assignment_accuracy(model(codes).detach(), assign))
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"accuracy {accuracy} after {step + 1} steps, loss {float(loss):.3f}"
    assert torch.equal(model.predict(codes), assign)
