"""LFQ (mergevq.tokenizer.quantizer): index conventions, quantization, and the factorised /
split-GEMM entropy against a dense brute force over all 2^d codes.

Precision: the module computes its losses in ``promote_types(z.dtype, float32)``, so float64 inputs
are compared with a float64 brute force (agreement is ~1e-12; the asserted bound is 1e-5), and a
float32 input is checked against the same float64 reference at 1e-4.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from _distributed import run_ranks

from mergevq.errors import ConfigError
from mergevq.tokenizer.quantizer import (
    LFQ,
    Quantized,
    bits_to_indices,
    codes_to_indices,
    indices_to_bits,
    indices_to_codes,
    indices_to_subtokens,
    mean_code_probs,
    subtokens_to_indices,
)

# --------------------------------------------------------------------------------------------------
# index conventions


def test_little_endian_hand_examples():
    bits = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    assert bits_to_indices(bits).tolist() == [1, 2, 3, 8, 15]
    assert bits_to_indices(bits.bool()).tolist() == [1, 2, 3, 8, 15]
    assert indices_to_bits(torch.tensor([1, 2, 6]), 4).int().tolist() == [
        [1, 0, 0, 0],
        [0, 1, 0, 0],
        [0, 1, 1, 0],
    ]
    assert indices_to_codes(torch.tensor([1]), 3).tolist() == [[1.0, -1.0, -1.0]]
    # default split (6, 12): sub-token 0 = bits 0..5, sub-token 1 = bits 6..17
    assert indices_to_subtokens(torch.tensor([1, 64, 64 * 5 + 7])).tolist() == [
        [1, 0],
        [0, 1],
        [7, 5],
    ]


@pytest.mark.parametrize("split", [(6, 12), (9, 9), (2, 4, 12), (18,), (1,) * 18])
def test_round_trips_d18(split):
    d = 18
    idx = torch.randint(0, 1 << d, (4, 1000))
    idx[0, 0], idx[0, 1] = 0, (1 << d) - 1
    bits = indices_to_bits(idx, d)
    assert bits.shape == (4, 1000, d) and bits.dtype == torch.bool
    assert torch.equal(bits_to_indices(bits), idx)
    codes = indices_to_codes(idx, d)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(codes_to_indices(codes), idx)
    assert torch.equal(codes > 0, bits)
    sub = indices_to_subtokens(idx, split)
    assert sub.shape == (4, 1000, len(split)) and sub.dtype == torch.int64
    for k, s in enumerate(split):
        assert int(sub[..., k].min()) >= 0 and int(sub[..., k].max()) < (1 << s)
    assert torch.equal(subtokens_to_indices(sub, split), idx)
    # sub-token k is exactly the integer formed by its bit range (low bits first)
    offset = 0
    for k, s in enumerate(split):
        assert torch.equal(sub[..., k], bits_to_indices(bits[..., offset : offset + s]))
        offset += s


def test_every_index_round_trips_small_d():
    d = 10
    idx = torch.arange(1 << d)
    assert torch.equal(codes_to_indices(indices_to_codes(idx, d)), idx)
    assert torch.equal(subtokens_to_indices(indices_to_subtokens(idx, (3, 7)), (3, 7)), idx)


def test_conversion_errors():
    with pytest.raises(ValueError, match="positive ints"):
        indices_to_subtokens(torch.tensor([1]), (6, 0))
    with pytest.raises(ValueError, match="trailing dimension of 2"):
        subtokens_to_indices(torch.zeros(5, 3, dtype=torch.long), (6, 12))
    with pytest.raises(ValueError, match="integer tensor"):
        indices_to_bits(torch.tensor([1.0]), 4)
    with pytest.raises(ValueError, match=r"\[1, 62\]"):
        indices_to_bits(torch.tensor([1]), 0)


def test_constructor_validation():
    with pytest.raises(TypeError):
        LFQ(18)  # keyword-only
    with pytest.raises(ConfigError, match="sub_token_bits"):
        LFQ(sub_token_bits=(6, 11))
    with pytest.raises(ConfigError, match="entropy_temperature"):
        LFQ(entropy_temperature=0.0)
    with pytest.raises(ConfigError, match="entropy_split"):
        LFQ(dim=8, sub_token_bits=(8,), entropy_split=9)
    with pytest.raises(ConfigError, match="dim"):
        LFQ(dim=0)
    lfq = LFQ()
    assert lfq.codebook_size == 1 << 18 and lfq.entropy_split == 9
    assert list(lfq.parameters()) == [] and lfq.state_dict() == {}
    with pytest.raises(ValueError, match=r"\(\.\.\., 18\)"):
        lfq(torch.randn(2, 3, 16))


# --------------------------------------------------------------------------------------------------
# quantization


def test_quantize_sign_and_zero_convention():
    z = torch.randn(2, 7, 8)
    z[0, 0, :3] = 0.0  # zero -> bit 0 -> code -1
    z[0, 1, 0] = -0.0
    out = LFQ(dim=8, sub_token_bits=(3, 5))(z)
    assert isinstance(out, Quantized)
    expected = torch.where(z > 0, 1.0, -1.0)
    assert torch.equal(out.codes, expected)  # exactly ±1, not merely close
    assert out.indices.shape == (2, 7) and out.indices.dtype == torch.int64
    assert torch.equal(out.indices, bits_to_indices(z > 0))
    assert torch.equal(out.indices, codes_to_indices(out.codes))
    assert torch.equal(indices_to_codes(out.indices, 8), out.codes)
    assert out.codes[0, 0, :3].tolist() == [-1.0, -1.0, -1.0] and out.codes[0, 1, 0].item() == -1.0


def test_straight_through_gradient_and_commit_loss():
    z = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    out = LFQ(dim=6, sub_token_bits=(6,))(z)
    g = torch.randn_like(z)
    (grad,) = torch.autograd.grad(out.codes, z, g)
    assert torch.equal(grad, g)  # d codes / d z = identity
    q = torch.where(z > 0, 1.0, -1.0).detach()
    torch.testing.assert_close(out.commit_loss, ((z - q) ** 2).mean())
    (grad,) = torch.autograd.grad(out.commit_loss, z)
    torch.testing.assert_close(grad, 2 * (z - q) / z.numel())


# --------------------------------------------------------------------------------------------------
# entropy vs. dense brute force


def _dense(z: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense reference: softmax over all 2^d codes, codebook in code-index order."""
    d = z.shape[-1]
    codebook = indices_to_codes(torch.arange(1 << d), d, dtype=z.dtype)  # (2^d, d)
    logits = 2.0 * z.reshape(-1, d) @ codebook.t() / tau  # (M, 2^d)
    logp = logits.log_softmax(dim=-1)
    p = logp.exp()
    sample_entropy = -(p * logp).sum(dim=-1).mean()
    p_mean = p.mean(dim=0)  # (2^d,)
    codebook_entropy = -(p_mean * p_mean.clamp_min(torch.finfo(z.dtype).tiny).log()).sum()
    return sample_entropy, codebook_entropy, p_mean


def _grads(scalars, z):
    return [torch.autograd.grad(s, z, retain_graph=True)[0] for s in scalars]


@pytest.mark.parametrize("d", [6, 8, 10])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("scale", [0.25, 1.0])  # bit logits 4z/τ ~ N(0, 1) and N(0, 16)
def test_entropy_matches_brute_force(d, tau, scale):
    z = (tau * scale * torch.randn(3, 7, d, dtype=torch.float64)).requires_grad_(True)
    out = LFQ(dim=d, entropy_temperature=tau, sub_token_bits=(d,))(z)
    ref_sample, ref_codebook, _ = _dense(z, tau)
    ours = [out.per_sample_entropy, out.codebook_entropy, out.entropy_loss]
    refs = [ref_sample, ref_codebook, ref_sample - ref_codebook]
    for a, b in zip(ours, refs, strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(ours, z), _grads(refs, z), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("entropy_split", [0, 1, 3, 5, 8])
def test_uneven_entropy_split(entropy_split):
    d, tau = 8, 0.05
    z = (0.5 * tau * torch.randn(2, 9, d, dtype=torch.float64)).requires_grad_(True)
    out = LFQ(dim=d, entropy_temperature=tau, sub_token_bits=(8,), entropy_split=entropy_split)(z)
    ref_sample, ref_codebook, _ = _dense(z, tau)
    torch.testing.assert_close(out.codebook_entropy, ref_codebook, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy_loss, ref_sample - ref_codebook, atol=1e-5, rtol=1e-5)
    (ours,) = _grads([out.entropy_loss], z)
    (ref,) = _grads([ref_sample - ref_codebook], z)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_float32_input_matches_float64_reference():
    d, tau = 10, 0.01
    z64 = 0.5 * tau * torch.randn(4, 16, d, dtype=torch.float64)
    out = LFQ(dim=d, entropy_temperature=tau, sub_token_bits=(4, 6))(z64.float())
    assert out.entropy_loss.dtype == torch.float32
    ref_sample, ref_codebook, _ = _dense(z64, tau)
    torch.testing.assert_close(out.per_sample_entropy.double(), ref_sample, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.codebook_entropy.double(), ref_codebook, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("d", "entropy_split"), [(8, 4), (8, 3), (10, 7)])
def test_mean_code_probs_in_index_order(d, entropy_split):
    tau = 0.1
    z = 0.5 * tau * torch.randn(5, 6, d, dtype=torch.float64)
    ours = mean_code_probs(z, temperature=tau, entropy_split=entropy_split)
    _, _, ref = _dense(z, tau)
    assert ours.shape == (1 << d,)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(ours.sum(), torch.tensor(1.0, dtype=torch.float64))
    # independent of the dense codebook: a sharply peaked token puts its mass on its own index
    sharp = torch.randn(1, d, dtype=torch.float64)
    probs = mean_code_probs(sharp, temperature=1e-3, entropy_split=entropy_split)
    assert int(probs.argmax()) == int(codes_to_indices(sharp)[0]) and probs.max() > 0.999


def test_peaked_limit_is_stable():
    """τ = 0.01 with unit-scale z (bit logits ~ ±400): finite values and gradients, per-sample
    entropy ≈ 0 and codebook entropy ≈ log(#distinct codes)."""
    lfq = LFQ()
    idx = torch.randperm(1 << 18)[:300]
    z = (indices_to_codes(idx, 18) * (0.5 + torch.rand(300, 18))).reshape(3, 100, 18)
    z.requires_grad_(True)
    out = lfq(z)
    assert out.per_sample_entropy.item() < 1e-6
    assert abs(out.codebook_entropy.item() - math.log(300)) < 1e-4
    out.entropy_loss.backward()
    assert torch.isfinite(z.grad).all()


def test_bf16_autocast_gives_fp32_losses():
    lfq = LFQ()
    proj = torch.nn.Linear(32, 18)
    x = torch.randn(2, 16, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = 0.01 * proj(x)
        assert z.dtype == torch.bfloat16
        out = lfq(z)
    for loss in (out.commit_loss, out.entropy_loss, out.per_sample_entropy, out.codebook_entropy):
        assert loss.dtype == torch.float32 and loss.ndim == 0
    assert out.codes.dtype == torch.bfloat16
    ref = lfq(z.detach().float())  # same values, upcast: the losses are computed from exactly these
    torch.testing.assert_close(out.entropy_loss, ref.entropy_loss)
    torch.testing.assert_close(out.commit_loss, ref.commit_loss)
    out.entropy_loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


# --------------------------------------------------------------------------------------------------
# distributed: 2 gloo ranks with half a batch each == 1 process with the whole batch

_WORLD = 2
_DIST_KW = {"dim": 8, "entropy_temperature": 0.05, "sub_token_bits": (3, 5)}


def _dist_batch() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    return 0.03 * torch.randn(4, 10, 8, generator=gen, dtype=torch.float64)  # (B, N, d)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        z = _dist_batch().chunk(world)[rank].clone().requires_grad_(True)
        out = LFQ(**_DIST_KW)(z)
        out.entropy_loss.backward()
        local = LFQ(**_DIST_KW, distributed=False)(z.detach())
        torch.save(
            {
                "entropy_loss": out.entropy_loss.detach(),
                "per_sample_entropy": out.per_sample_entropy.detach(),
                "codebook_entropy": out.codebook_entropy.detach(),
                "grad": z.grad,
                "local_entropy_loss": local.entropy_loss,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_ranks_equal_one_process(tmp_path: Path):
    run_ranks(_dist_worker, world=_WORLD, tmp_path=tmp_path, what="2-process gloo LFQ test")

    z = _dist_batch().requires_grad_(True)
    full = LFQ(**_DIST_KW)(z)  # no process group in this process: plain local statistics
    full.entropy_loss.backward()
    halves = z.detach().chunk(_WORLD)
    for rank in range(_WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key in ("entropy_loss", "per_sample_entropy", "codebook_entropy"):
            torch.testing.assert_close(
                got[key], getattr(full, key).detach(), atol=1e-12, rtol=1e-10
            )
        # the all-reduce backward sums over ranks: local grad = world × d(global loss)/d(local z);
        # DDP's averaging over ranks turns it into exactly the single-process gradient
        grad_slice = z.grad.chunk(_WORLD)[rank]
        torch.testing.assert_close(got["grad"] / _WORLD, grad_slice, atol=1e-12, rtol=1e-10)
        # distributed=False ignores the process group: the rank's own half only
        local = LFQ(**_DIST_KW, distributed=False)(halves[rank])
        torch.testing.assert_close(got["local_entropy_loss"], local.entropy_loss)
        assert not torch.allclose(local.entropy_loss, full.entropy_loss)
