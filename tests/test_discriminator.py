"""PatchGAN discriminator (taming.modules.discriminator): layout, sizes, init, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from taming.modules.discriminator import PatchGANDiscriminator, min_input_size


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_parameter_count_matches_vqgan_layout():
    # VQGAN NLayerDiscriminator(3, ndf=64, n_layers=3) with BatchNorm: convs before a norm have no bias.
    k = 4 * 4
    by_hand = (
        (3 * 64 * k + 64)  # conv1 (bias, no norm)
        + (64 * 128 * k + 2 * 128)  # conv2 + BN(128) weight/bias
        + (128 * 256 * k + 2 * 256)  # conv3 + BN(256)
        + (256 * 512 * k + 2 * 512)  # conv4 (stride 1) + BN(512)
        + (512 * 1 * k + 1)  # final conv
    )
    assert by_hand == 2_765_633
    assert _count(PatchGANDiscriminator()) == by_hand
    # pix2pix's default (non-affine InstanceNorm, biased convs) is the other often-quoted figure
    assert by_hand - 2 * (128 + 256 + 512) + (128 + 256 + 512) == 2_764_737
    # GroupNorm has the same affine parameters as BatchNorm
    assert _count(PatchGANDiscriminator(norm="group")) == by_hand


@pytest.mark.parametrize("size, side", [(256, 30), (32, 2), (24, 1), (25, 1), (64, 6)])
def test_output_shape(size, side):
    d = PatchGANDiscriminator(ndf=8).eval()
    assert d(torch.randn(2, 3, size, size)).shape == (2, 1, side, side)
    assert side == size // 2**3 - 2


def test_default_width_shapes():
    d = PatchGANDiscriminator().eval()
    assert d(torch.randn(1, 3, 256, 256)).shape == (1, 1, 30, 30)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)


def test_too_small_input_is_a_clear_error():
    assert min_input_size(3) == 24
    d = PatchGANDiscriminator(ndf=8)
    with pytest.raises(ValueError, match="at least 24"):
        d(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        d(torch.randn(1, 1, 32, 32))


def test_layout_and_widths_cap():
    d = PatchGANDiscriminator(ndf=4, n_layers=5)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32, 32, 1]  # capped at 8·ndf
    assert [c.stride[0] for c in convs] == [2, 2, 2, 2, 2, 1, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert [c.bias is not None for c in convs] == [True, False, False, False, False, False, True]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown norm 'instance'"):
        PatchGANDiscriminator(norm="instance")
    with pytest.raises(ValueError, match="n_layers"):
        PatchGANDiscriminator(n_layers=0)
    with pytest.raises(TypeError):
        PatchGANDiscriminator(3)  # keyword-only


def test_dcgan_init():
    torch.manual_seed(0)
    d = PatchGANDiscriminator()
    w = torch.cat([m.weight.flatten() for m in d.modules() if isinstance(m, nn.Conv2d)])
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    norms = [m for m in d.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.cat([m.weight for m in norms])
    assert abs(g.mean().item() - 1.0) < 5e-3 and abs(g.std().item() - 0.02) < 5e-3
    assert all((m.bias == 0).all() for m in norms)
    assert all((m.bias == 0).all() for m in d.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_every_parameter_gets_a_gradient(norm):
    d = PatchGANDiscriminator(ndf=8, norm=norm).train()
    d(torch.randn(2, 3, 32, 32)).mean().backward()
    for name, p in d.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_group_norm_is_batch_independent():
    """Why ``norm="group"`` exists: a sample's logits do not depend on its batch-mates in training."""
    x = torch.randn(4, 3, 32, 32)
    group = PatchGANDiscriminator(ndf=8, norm="group").train()
    torch.testing.assert_close(group(x)[:2], group(x[:2]))
    batch = PatchGANDiscriminator(ndf=8, norm="batch").train()
    assert not torch.allclose(batch(x)[:2], batch(x[:2]))
