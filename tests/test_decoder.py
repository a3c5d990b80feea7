"""MergeVQ decoder (DESIGN §4 step 6): shapes, adaptive GroupNorm, gradients, positional information."""

import pytest
import torch

from mergevq.tokenizer.decoder import AdaptiveGroupNorm, Decoder


def tiny_decoder(
    *, grid: tuple[int, int], ch_mult: tuple[int, ...], num_res_blocks: int | tuple[int, ...] = 1
) -> Decoder:
    return Decoder(
        code_dim=18,
        dim=32,
        depth=2,
        num_heads=2,
        grid=grid,
        ch=8,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        num_groups=4,
    )


def random_codes(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 2, (batch, length, 18)).float() * 2 - 1


@pytest.mark.parametrize(
    ("grid", "ch_mult", "num_res_blocks", "factor"),
    [((2, 3), (1, 2, 2, 4), 1, 8), ((2, 2), (1, 1, 2, 2, 4), (1, 1, 2, 1, 2), 16)],
)
def test_decoder_output_shape(grid, ch_mult, num_res_blocks, factor):
    dec = tiny_decoder(grid=grid, ch_mult=ch_mult, num_res_blocks=num_res_blocks)
    out = dec(random_codes(2, grid[0] * grid[1]))
    assert out.shape == (2, 3, grid[0] * factor, grid[1] * factor)
    assert dec.output_size == (grid[0] * factor, grid[1] * factor)
    assert torch.isfinite(out).all()


def test_decoder_rejects_bad_inputs():
    with pytest.raises(ValueError):
        tiny_decoder(grid=(2, 2), ch_mult=(1, 2), num_res_blocks=(1, 1, 1))
    dec = tiny_decoder(grid=(2, 2), ch_mult=(1, 2))
    with pytest.raises(ValueError):
        dec(random_codes(1, 5))


def test_adaptive_group_norm_reference_and_statistics_only():
    norm = AdaptiveGroupNorm(num_channels=8, cond_channels=3, num_groups=4)
    x = torch.randn(2, 8, 5, 5)
    cond = torch.randn(2, 3, 4, 4)
    stats = torch.cat([cond.mean((2, 3)), cond.std((2, 3), unbiased=False)], dim=1)
    scale, shift = norm.to_scale_shift(stats).chunk(2, dim=1)
    reference = (
        torch.nn.functional.group_norm(x, 4, eps=1e-6) * (1 + scale[..., None, None]) + shift[..., None, None]
    )
    torch.testing.assert_close(norm(x, cond), reference, atol=1e-4, rtol=1e-4)
    # Only the spatial statistics of the conditioning map matter: a spatial shuffle changes nothing.
    shuffled = cond.flatten(2)[:, :, torch.randperm(16)].reshape_as(cond)
    torch.testing.assert_close(norm(x, shuffled), norm(x, cond))


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


def test_position_information_comes_from_the_depthwise_convs():
    """Attention is permutation-equivariant over tokens; only the dw-convs tie a token to its grid cell.

    With both depth-wise convolutions zeroed, permuting the input tokens permutes the transformer
    features exactly. With the positional dw-conv on (MLP dw-convs still off) it no longer does.
    """
    dec = tiny_decoder(grid=(4, 4), ch_mult=(1, 2)).eval()
    z = random_codes(2, 16)
    perm = torch.randperm(16)
    with torch.no_grad():
        for block in dec.blocks:
            block.mlp.dwconv.weight.zero_()
        position_free = dec.transformer_features(z)[:, perm]
        assert (dec.transformer_features(z[:, perm]) - position_free).abs().max() > 1e-3
        dec.pos_conv.weight.zero_()
        dec.pos_conv.bias.zero_()
        torch.testing.assert_close(dec.transformer_features(z[:, perm]), dec.transformer_features(z)[:, perm])
