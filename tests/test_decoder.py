"""MergeVQ decoder (DESIGN §4 step 6, the authors' layout): shapes and width constraint, adaptive
GroupNorm, DCR depth-to-space, level structure, gradients, positional information."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mergevq.layers.conv import ResBlock
from mergevq.tokenizer.decoder import (
    AdaptiveGroupNorm,
    Decoder,
    DepthToSpaceUpsample,
    depth_to_space,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_decoder(
    *, grid: tuple[int, int], ch_mult: tuple[int, ...], num_res_blocks: int | tuple[int, ...] = 1
) -> Decoder:
    return Decoder(
        code_dim=18,
        dim=8 * ch_mult[-1],  # the ViT output enters the CNN at its coarsest width
        depth=2,
        num_heads=2,
        grid=grid,
        ch=8,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
    )


def random_codes(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 2, (batch, length, 18)).float() * 2 - 1


@pytest.mark.parametrize(
    ("grid", "ch_mult", "num_res_blocks", "factor"),
    [((2, 3), (1, 2, 2, 4), 1, 8), ((2, 2), (1, 1, 2, 2, 4), (1, 1, 2, 1, 2), 16)],
)
def test_decoder_output_shape(grid, ch_mult, num_res_blocks, factor):
    dec = tiny_decoder(grid=grid, ch_mult=ch_mult, num_res_blocks=num_res_blocks)
    with torch.no_grad():
        out = dec(random_codes(2, grid[0] * grid[1]))
    assert out.shape == (2, 3, grid[0] * factor, grid[1] * factor)
    assert dec.output_size == (grid[0] * factor, grid[1] * factor)
    assert torch.isfinite(out).all()


def test_decoder_rejects_bad_inputs():
    with pytest.raises(ValueError, match="3 entries but ch_mult has 2"):
        tiny_decoder(grid=(2, 2), ch_mult=(1, 2), num_res_blocks=(1, 1, 1))
    with pytest.raises(ValueError, match=r"dim=48 must equal .* = 16"):  # 8 * ch_mult[-1]
        Decoder(dim=48, num_heads=2, depth=1, grid=(2, 2), ch=8, ch_mult=(1, 2), num_res_blocks=1)
    dec = tiny_decoder(grid=(2, 2), ch_mult=(1, 2))
    with pytest.raises(ValueError, match="L=4"):
        dec(random_codes(1, 5))


# --------------------------------------------------------------------------------------------------
# adaptive GroupNorm
# --------------------------------------------------------------------------------------------------


def _agn(num_channels=64, cond_channels=3) -> AdaptiveGroupNorm:
    norm = AdaptiveGroupNorm(num_channels=num_channels, cond_channels=cond_channels)
    with torch.no_grad():
        for p in norm.parameters():
            p.normal_()
    return norm


def test_adaptive_group_norm_reference():
    """out = gamma(std) · GN(x) + beta(mean), std from the UNBIASED spatial variance + 1e-6, no "1 +"."""
    norm = _agn()
    assert norm.norm.num_groups == 32 and norm.norm.eps == 1e-6 and norm.norm.weight is None  # no affine
    x = torch.randn(2, 64, 5, 5)
    cond = torch.randn(2, 3, 2, 2)  # 4 positions: biased and unbiased variance differ by 4/3
    flat = cond.flatten(2)
    mean = flat.sum(-1) / 4
    std = ((flat - mean[..., None]).square().sum(-1) / 3 + 1e-6).sqrt()
    scale = std @ norm.gamma.weight.T + norm.gamma.bias  # (B, C)
    shift = mean @ norm.beta.weight.T + norm.beta.bias  # (B, C)
    reference = scale[..., None, None] * F.group_norm(x, 32, eps=1e-6) + shift[..., None, None]
    out = norm(x, cond)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    biased = ((flat - mean[..., None]).square().mean(-1) + 1e-6).sqrt() @ norm.gamma.weight.T + norm.gamma.bias
    wrong = biased[..., None, None] * F.group_norm(x, 32, eps=1e-6) + shift[..., None, None]
    assert (wrong - out).abs().max() > 1e-2  # the reference above really pins the unbiased variance


def test_adaptive_group_norm_scale_reads_the_std_and_shift_reads_the_mean():
    norm = _agn()
    x = torch.randn(2, 64, 5, 5)
    cond = torch.randn(2, 3, 4, 4)
    out = norm(x, cond)
    # adding a constant moves only the mean: the output moves by beta's weights times it, uniformly
    moved = norm(x, cond + 5.0)
    expected = (5.0 * norm.beta.weight.sum(1))[None, :, None, None].expand_as(out)
    torch.testing.assert_close(moved - out, expected, atol=1e-4, rtol=1e-4)
    # with gamma zeroed the output is the shift alone (no "1 +" keeping GN(x) in)
    with torch.no_grad():
        norm.gamma.weight.zero_()
        norm.gamma.bias.zero_()
    shift = norm.beta(cond.mean((2, 3)))[..., None, None].expand_as(out)
    torch.testing.assert_close(norm(x, cond), shift)
    # only the spatial statistics of the conditioning map matter: a spatial shuffle changes nothing
    norm = _agn()
    shuffled = cond.flatten(2)[:, :, torch.randperm(16)].reshape_as(cond)
    torch.testing.assert_close(norm(x, shuffled), norm(x, cond))


def test_adaptive_group_norm_constant_condition_has_finite_gradient():
    norm = _agn()
    cond = torch.full((1, 3, 4, 4), 0.5, requires_grad=True)  # std 0: sqrt'(0) is infinite without eps
    norm(torch.randn(1, 64, 3, 3), cond).square().sum().backward()
    assert torch.isfinite(cond.grad).all()


# --------------------------------------------------------------------------------------------------
# depth-to-space (DCR)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [2, 3])
def test_depth_to_space_uses_dcr_channel_order(block):
    """Output channel c at sub-pixel (i, j) reads input channel (block·i + j)·C + c."""
    channels, h, w = 3, 2, 4
    x = torch.arange(2 * block * block * channels * h * w, dtype=torch.float32).reshape(
        2, block * block * channels, h, w
    )
    out = depth_to_space(x, block)
    assert out.shape == (2, channels, block * h, block * w)
    for i in range(block):
        for j in range(block):
            for c in range(channels):
                assert torch.equal(out[:, c, i::block, j::block], x[:, (block * i + j) * channels + c])
    # not PixelShuffle's order (c·block² + block·i + j) ... but that order after a channel permutation
    assert not torch.equal(out, F.pixel_shuffle(x, block))
    perm = torch.tensor(
        [(block * i + j) * channels + c for c in range(channels) for i in range(block) for j in range(block)]
    )
    assert torch.equal(out, F.pixel_shuffle(x[:, perm], block))


def test_depth_to_space_upsample_is_a_conv_then_dcr():
    up = DepthToSpaceUpsample(channels=4)
    assert up.conv.weight.shape == (16, 4, 3, 3) and up.conv.padding == (1, 1)
    x = torch.randn(2, 4, 3, 5)
    out = up(x)
    assert out.shape == (2, 4, 6, 10)
    conv = up.conv(x)
    torch.testing.assert_close(out[:, 2, 1::2, 0::2], conv[:, (2 * 1 + 0) * 4 + 2])


# --------------------------------------------------------------------------------------------------
# structure
# --------------------------------------------------------------------------------------------------


def test_levels_run_coarse_to_fine_with_one_adaptive_norm_and_plain_resblocks():
    dec = tiny_decoder(grid=(2, 2), ch_mult=(1, 2, 4), num_res_blocks=(1, 2, 3))  # widths 8, 16, 32
    assert [len(level.blocks) for level in dec.levels] == [3, 2, 1]  # coarse -> fine
    assert [level.adagn.norm.num_channels for level in dec.levels] == [32, 32, 16]  # before the width change
    assert all(level.adagn.gamma.in_features == 18 for level in dec.levels)
    assert all(isinstance(b, ResBlock) for level in dec.levels for b in level.blocks)
    assert sum(isinstance(m, AdaptiveGroupNorm) for m in dec.modules()) == 3  # once per level
    # the first ResBlock of a level changes the width, the others keep it
    assert isinstance(dec.levels[0].blocks[0].shortcut, nn.Identity)
    assert dec.levels[1].blocks[0].shortcut.weight.shape == (16, 32, 1, 1)
    assert isinstance(dec.levels[1].blocks[1].shortcut, nn.Identity)
    assert dec.levels[2].blocks[0].shortcut.weight.shape == (8, 16, 1, 1)
    assert [lv.upsample is None for lv in dec.levels] == [False, False, True]
    assert dec.levels[1].upsample.conv.out_channels == 4 * 16
    # ViT: 3x3 conv_in, LayerScale in every block (init 1e-5), no final norm
    assert dec.conv_in.kernel_size == (3, 3) and dec.conv_in.padding == (1, 1)
    for block in dec.blocks:
        assert torch.allclose(block.ls1.gamma, torch.full((32,), 1e-5))
        assert torch.allclose(block.ls2.gamma, torch.full((32,), 1e-5))
    assert [n for n, m in dec.named_modules() if isinstance(m, nn.LayerNorm) and not n.startswith("blocks.")] == []


def test_decoder_is_the_composition_of_its_parts():
    """transformer: conv_in, + CPE, blocks, nothing after; CNN: per level adaGN → ResBlocks → conv +
    DCR; then GroupNorm → SiLU → conv_out."""
    dec = tiny_decoder(grid=(2, 3), ch_mult=(1, 2, 4)).eval()
    z = random_codes(2, 6)
    with torch.no_grad():
        grid = z.transpose(1, 2).reshape(2, 18, 2, 3)
        h = dec.conv_in(grid)
        h = (h + dec.pos_conv(h)).flatten(2).transpose(1, 2)
        for block in dec.blocks:
            h = block(h)
        torch.testing.assert_close(dec.transformer_features(z), h)
        x = h.transpose(1, 2).reshape(2, 32, 2, 3)
        for level in dec.levels:
            x = level.adagn(x, grid)
            for block in level.blocks:
                x = block(x)
            if level.upsample is not None:
                x = depth_to_space(level.upsample.conv(x), 2)
        image = dec.conv_out(F.silu(dec.norm_out(x)))
        torch.testing.assert_close(dec(z), image)
    assert image.shape == (2, 3, 8, 12)


def test_decoder_conditioning_statistics_change_output():
    """Same transformer features, conditioning map with other statistics -> another image."""
    dec = tiny_decoder(grid=(2, 2), ch_mult=(1, 2, 2)).eval()
    z = random_codes(2, 4)
    cond = z.transpose(1, 2).reshape(2, 18, 2, 2)
    with torch.no_grad():
        feats = dec.transformer_features(z)
        base = dec.upsample_features(feats, cond)
        shuffled = cond.flatten(2)[:, :, torch.tensor([3, 1, 0, 2])].reshape_as(cond)
        same_stats = dec.upsample_features(feats, shuffled)
        rescaled = dec.upsample_features(feats, 2.0 * cond + 0.5)  # mean and std both change
        assert torch.allclose(base, dec(z))
    torch.testing.assert_close(same_stats, base)
    assert (rescaled - base).abs().max() > 1e-3


def test_every_decoder_parameter_gets_a_gradient():
    dec = tiny_decoder(grid=(2, 3), ch_mult=(1, 2, 2, 4))
    z = random_codes(2, 6)
    dec(z).square().mean().backward()
    missing = [n for n, p in dec.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_position_information_comes_from_the_3x3_convs():
    """Attention is permutation-equivariant over tokens; only the 3x3 convs (conv_in, the CPE and the
    MLPs' depth-wise convs, all zero-padded) tie a token to its grid cell.

    With conv_in cut to its centre tap (a 1x1 conv) and the other two zeroed, permuting the input tokens
    permutes the transformer features exactly; restoring any one of them breaks that.
    """
    dec = tiny_decoder(grid=(4, 4), ch_mult=(1, 2)).eval()
    z = random_codes(2, 16)
    perm = torch.randperm(16)
    with torch.no_grad():
        for block in dec.blocks:  # LayerScale 1 instead of 1e-5, so the MLP's dw-conv is visible
            block.ls1.gamma.fill_(1.0)
            block.ls2.gamma.fill_(1.0)
        full = {k: v.clone() for k, v in dec.state_dict().items()}
        centre = torch.zeros(3, 3)
        centre[1, 1] = 1.0
        dec.conv_in.weight.mul_(centre)
        dec.pos_conv.weight.zero_()
        dec.pos_conv.bias.zero_()
        for block in dec.blocks:
            block.mlp.dwconv.weight.zero_()
        position_free = {k: v.clone() for k, v in dec.state_dict().items()}
        torch.testing.assert_close(dec.transformer_features(z[:, perm]), dec.transformer_features(z)[:, perm])
        for prefix in ("conv_in.", "pos_conv.", "blocks.0.mlp.dwconv."):
            dec.load_state_dict({k: full[k] if k.startswith(prefix) else v for k, v in position_free.items()})
            gap = dec.transformer_features(z[:, perm]) - dec.transformer_features(z)[:, perm]
            assert gap.abs().max() > 1e-4, prefix
