"""Losses (taming.modules.losses): GAN, LeCAM, alignment KL and the frozen LPIPS wrapper.

LPIPS uses ``pnet_rand=True`` (random AlexNet trunk: torchvision builds it with ``weights=None``, so
nothing is downloaded) and ``pretrained=True`` (the linear heads shipped inside the lpips package).
The distances mean nothing; the tests check the wrapper's plumbing and invariants.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from pathlib import Path

import pytest
from _distributed import run_ranks
import torch
import torch.distributed as dist
from torch import nn

from taming.modules.frozen import FrozenHolder
from taming.modules.losses import (
    LeCAMRegularizer,
    PerceptualLoss,
    alignment_kl,
    hinge_d_loss,
    non_saturating_g_loss,
    vanilla_d_loss,
)

# --------------------------------------------------------------------------------------------------
# GAN losses


def test_hinge_d_loss_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - r) = [0, 0.5, 2]   -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + f) = [0, 1, 2]     -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1.0))
    # beyond the margins: zero loss and zero gradient
    r = torch.tensor([1.5, 3.0], requires_grad=True)
    f = torch.tensor([-1.5, -3.0], requires_grad=True)
    loss = hinge_d_loss(r, f)
    loss.backward()
    assert loss.item() == 0.0 and (r.grad == 0).all() and (f.grad == 0).all()


def test_non_saturating_g_loss_hand_values():
    fake = torch.tensor([0.0, math.log(3.0)])
    # softplus(-0) = log 2; softplus(-log 3) = log(1 + 1/3)
    assert non_saturating_g_loss(fake).item() == pytest.approx(0.5 * (math.log(2) + math.log(4 / 3)))
    # = -log sigmoid, and stays finite and non-saturating for very negative logits
    x = torch.tensor([-200.0], requires_grad=True)
    loss = non_saturating_g_loss(x)
    loss.backward()
    assert loss.item() == pytest.approx(200.0) and x.grad.item() == pytest.approx(-1.0)


def test_vanilla_d_loss_hand_values():
    real, fake = torch.tensor([0.0]), torch.tensor([math.log(3.0)])
    # softplus(-0) = log 2; softplus(log 3) = log 4
    assert vanilla_d_loss(real, fake).item() == pytest.approx(0.5 * (math.log(2) + math.log(4)))


def test_gan_losses_compute_in_fp32():
    real = torch.randn(2, 1, 4, 4).bfloat16()
    fake = torch.randn(2, 1, 4, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for out in (hinge_d_loss(real, fake), vanilla_d_loss(real, fake), non_saturating_g_loss(fake)):
            assert out.dtype == torch.float32 and out.dim() == 0
    assert hinge_d_loss(real.double(), fake.double()).dtype == torch.float64


# --------------------------------------------------------------------------------------------------
# LeCAM


def test_lecam_hand_example():
    reg = LeCAMRegularizer(decay=0.9).train()
    # first call: the EMAs start at the first batch means (1, -1)
    out0 = reg(torch.tensor([0.0, 2.0]), torch.tensor([-2.0, 0.0]))
    assert reg.ema_real.item() == pytest.approx(1.0) and reg.ema_fake.item() == pytest.approx(-1.0)
    # relu(real - (-1))² = [1, 9] -> 5; relu(1 - fake)² = [9, 1] -> 5
    assert out0.item() == pytest.approx(10.0)
    # second call: batch means (3, 1); ema_real = 0.9·1 + 0.1·3 = 1.2, ema_fake = 0.9·(−1) + 0.1·1 = −0.8
    real = torch.tensor([2.0, 4.0], requires_grad=True)
    fake = torch.tensor([0.0, 2.0], requires_grad=True)
    out1 = reg(real, fake)
    assert reg.ema_real.item() == pytest.approx(1.2) and reg.ema_fake.item() == pytest.approx(-0.8)
    # penalty against the updated anchors: relu(real + 0.8)² = [7.84, 23.04] -> 15.44;
    # relu(1.2 - fake)² = [1.44, 0] -> 0.72
    assert out1.item() == pytest.approx(16.16)
    out1.backward()
    torch.testing.assert_close(real.grad, torch.tensor([2.8, 4.8]))  # d/dr mean(.)² = (r + 0.8)
    torch.testing.assert_close(fake.grad, torch.tensor([-1.2, 0.0]))
    assert not reg.ema_real.requires_grad and not reg.ema_fake.requires_grad


def test_lecam_eval_does_not_update():
    reg = LeCAMRegularizer(decay=0.5).train()
    reg(torch.tensor([1.0]), torch.tensor([-1.0]))
    reg.eval()
    out = reg(torch.tensor([5.0]), torch.tensor([-5.0]))
    assert reg.ema_real.item() == 1.0 and reg.ema_fake.item() == -1.0
    # against the stored anchors (1, -1): relu(5 - (-1))² = 36; relu(1 - (-5))² = 36
    assert out.item() == pytest.approx(72.0)


def test_lecam_eval_before_any_update_uses_batch_means_and_stores_nothing():
    reg = LeCAMRegularizer().eval()
    out = reg(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 1.0]))
    # anchors (2, 0): relu(r - 0)² = [1, 9] -> 5; relu(2 - f)² = [9, 1] -> 5
    assert out.item() == pytest.approx(10.0)
    assert not bool(reg.initialized) and reg.ema_real.item() == 0.0


def test_lecam_state_dict_resumes_exactly():
    torch.manual_seed(0)
    batches = [(torch.randn(8), torch.randn(8)) for _ in range(6)]
    a = LeCAMRegularizer(decay=0.7)
    for r, f in batches[:3]:
        a(r, f)
    sd = a.state_dict()
    assert set(sd) == {"ema_real", "ema_fake", "initialized"}
    b = LeCAMRegularizer(decay=0.7)
    b.load_state_dict(sd, strict=True)
    for r, f in batches[3:]:
        assert a(r, f).item() == b(r, f).item()
    assert a.ema_real.item() == b.ema_real.item() and a.ema_fake.item() == b.ema_fake.item()


def test_lecam_bad_decay_and_keyword_only():
    with pytest.raises(ValueError, match="decay"):
        LeCAMRegularizer(decay=1.0)
    with pytest.raises(TypeError):
        LeCAMRegularizer(0.9)


_WORLD = 2


def _lecam_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        reg = LeCAMRegularizer(decay=0.5)
        # rank 0: means (0, 0) then (2, -2); rank 1: means (2, -2) then (4, -4)
        reg(torch.full((3,), 2.0 * rank), torch.full((3,), -2.0 * rank))
        reg(torch.full((3,), 2.0 + 2.0 * rank), torch.full((3,), -2.0 - 2.0 * rank))
        torch.save({"ema_real": reg.ema_real, "ema_fake": reg.ema_fake}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # all ranks done before any tears the group down (gloo aborts a rank whose peer left)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_lecam_ranks_agree(tmp_path: Path):
    run_ranks(_lecam_worker, world=_WORLD, tmp_path=tmp_path, what="2-process gloo LeCAM test")
    # global means: (1, -1) then (3, -3); EMA: 1 -> 0.5·1 + 0.5·3 = 2
    for rank in range(_WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["ema_real"].item() == pytest.approx(2.0)
        assert got["ema_fake"].item() == pytest.approx(-2.0)


# --------------------------------------------------------------------------------------------------
# alignment KL


def test_alignment_kl_zero_for_identical():
    t = torch.randn(4, 16)
    assert alignment_kl(t.clone(), t).abs().item() < 1e-6


def test_alignment_kl_hand_value_and_t2_scale():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    t = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.0, 2.0]], dtype=torch.float64)

    def by_hand(temp: float) -> float:
        total = 0.0
        for srow, trow in zip(s.tolist(), t.tolist()):
            ps = [math.exp(v / temp) for v in srow]
            pt = [math.exp(v / temp) for v in trow]
            ps = [v / sum(ps) for v in ps]
            pt = [v / sum(pt) for v in pt]
            total += sum(p * (math.log(p) - math.log(q)) for p, q in zip(pt, ps))
        return temp**2 * total / len(s)

    for temp in (1.0, 4.0):
        assert alignment_kl(s, t, temperature=temp).item() == pytest.approx(by_hand(temp), rel=1e-12)
    # T² factor: the result is exactly T² times the plain KL of the softened distributions
    plain = alignment_kl(s / 4.0, t / 4.0, temperature=1.0)
    torch.testing.assert_close(alignment_kl(s, t, temperature=4.0), 16.0 * plain)


def test_alignment_kl_gradient_only_to_student():
    s = torch.randn(3, 8, requires_grad=True)
    t = torch.randn(3, 8, requires_grad=True)
    alignment_kl(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_alignment_kl_fp32_under_autocast_and_shape_check():
    s, t = torch.randn(2, 8).bfloat16(), torch.randn(2, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert alignment_kl(s, t).dtype == torch.float32
    with pytest.raises(ValueError, match="matching"):
        alignment_kl(torch.randn(2, 8), torch.randn(2, 7))
    with pytest.raises(ValueError, match="temperature"):
        alignment_kl(s, t, temperature=0.0)


# --------------------------------------------------------------------------------------------------
# LPIPS wrapper


@pytest.fixture(scope="module")
def lpips_net():
    import lpips

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's deprecated ``pretrained=False`` inside lpips
        warnings.simplefilter("ignore", UserWarning)
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)


class Parent(nn.Module):
    """What the training loss module does: own trainable parts (saved) and the LPIPS loss (not saved)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.perceptual = PerceptualLoss(model=net)


def _images(b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32) * 2 - 1


def test_lpips_self_distance_zero_and_grad_reaches_x(lpips_net):
    loss = PerceptualLoss(model=copy.deepcopy(lpips_net))
    y = _images()
    assert loss(y.clone(), y).abs().item() < 1e-7
    x = _images().requires_grad_(True)
    d = loss(x, y)
    assert d.dim() == 0 and d.item() > 0
    d.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.module.parameters())


def test_lpips_reduction_none(lpips_net):
    per = PerceptualLoss(model=copy.deepcopy(lpips_net), reduction="none")
    x, y = _images(3), _images(3)
    d = per(x, y)
    assert d.shape == (3,)
    torch.testing.assert_close(PerceptualLoss(model=copy.deepcopy(lpips_net))(x, y), d.mean())
    with pytest.raises(ValueError, match="reduction"):
        PerceptualLoss(model=lpips_net, reduction="sum")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        per(x, y[:2])


def test_lpips_not_in_parent_state_dict_or_parameters(lpips_net):
    parent = Parent(copy.deepcopy(lpips_net))
    keys = set(parent.state_dict())
    assert keys == {"head.weight", "head.bias"}
    assert sum(p.numel() for p in parent.parameters()) == 4 * 4 + 4
    fresh = Parent(copy.deepcopy(lpips_net))
    fresh.load_state_dict(parent.state_dict(), strict=True)
    # apply() (weight init) does not reach the held network
    before = [p.clone() for p in parent.perceptual.module.parameters()]
    parent.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, (nn.Conv2d, nn.Linear)) else None)
    assert all(torch.equal(a, b) for a, b in zip(before, parent.perceptual.module.parameters()))
    # requires_grad_ toggling (GAN steps) cannot unfreeze it
    parent.requires_grad_(True)
    assert not any(p.requires_grad for p in parent.perceptual.module.parameters())


def test_lpips_moves_with_parent_and_stays_eval(lpips_net):
    parent = Parent(copy.deepcopy(lpips_net))
    parent.double()
    assert all(p.dtype == torch.float64 for p in parent.perceptual.module.parameters())
    x, y = _images().double(), _images().double()
    assert parent.perceptual(x, y).dtype == torch.float64
    parent.train()
    assert parent.training and parent.perceptual.training
    assert not any(m.training for m in parent.perceptual.module.modules())
    parent.perceptual.module.train()  # even a direct call is undone at the next forward
    parent.perceptual(x, y)
    assert not parent.perceptual.module.training


def test_lpips_fp32_under_autocast(lpips_net):
    loss = PerceptualLoss(model=copy.deepcopy(lpips_net))
    x, y = _images(), _images()
    ref = loss(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(x.bfloat16(), y)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, loss(x.bfloat16().float(), y))
    assert abs(got.item() - ref.item()) < 1e-2


def test_frozen_holder_generic():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    holder = FrozenHolder(module=net)
    assert holder.state_dict() == {} and list(holder.parameters()) == []
    holder.train()
    assert not net.training and not net[0].weight.requires_grad
    holder.to(torch.float64)
    assert net[0].weight.dtype == torch.float64
    clone = copy.deepcopy(holder)  # EMA copies of a model deep-copy its losses too
    assert clone.module is not net and torch.equal(clone.module[0].weight, net[0].weight)
    with pytest.raises(TypeError):
        FrozenHolder(module="not a module")
