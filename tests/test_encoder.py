"""Merging encoder (the authors' layout): bias-free CNN stem or per-channel-normalised patch stem, timm
blocks without position embedding or final norm, the pre-quantisation GroupNorm head, exact K and
assignment, K = L equals no merging, and the merge-count (student view) mode."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from mergevq.errors import ConfigError
from mergevq.layers.conv import ResBlock
from mergevq.tokenizer.encoder import (
    CNNStem,
    MergeBlock,
    MergingEncoder,
    PatchStem,
    PreQuant,
)
from mergevq.tokenizer.merge import K_CANDIDATES, plan_merges, reachable_counts


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder(*, patch_size=8, image=64, depth=12, drop_path=0.0):
    num_tokens = (image // patch_size) ** 2
    return MergingEncoder(
        stem=PatchStem(patch_size=patch_size, dim=32),
        dim=32,
        depth=depth,
        num_heads=2,
        num_tokens=num_tokens,
        code_dim=6,
        drop_path=drop_path,
    )


def _cnn_encoder(*, num_tokens, depth=2):
    stem = CNNStem(ch=8, ch_mult=(1, 2), num_res_blocks=1)  # width 16, f = 2
    return MergingEncoder(stem=stem, dim=16, depth=depth, num_heads=2, num_tokens=num_tokens, code_dim=6)


def _check_output(out, *, bsz, num_keep, num_tokens, dim=32):
    assert out.z.shape == (bsz, num_keep, 6)
    assert out.tokens.shape == (bsz, num_keep, dim) and out.cls.shape == (bsz, dim)
    assert out.assign.shape == (bsz, num_tokens) and out.assign.dtype == torch.int64
    for b in range(bsz):
        counts = torch.bincount(out.assign[b], minlength=num_keep)
        assert len(counts) == num_keep and (counts > 0).all()  # each position in one kept token
        assert torch.equal(counts.float(), out.sizes[b])
        first = torch.full((num_keep,), num_tokens).scatter_reduce(
            0, out.assign[b], torch.arange(num_tokens), reduce="amin"
        )  # first raster position of every kept token
        assert (first.diff() > 0).all() and out.assign[b, 0] == 0  # canonical raster order
    # [CLS] neither absorbed nor absorbing: the kept tokens hold exactly the L positions
    assert (out.sizes.sum(1) == num_tokens).all()


# --------------------------------------------------------------------------------------------------
# stems
# --------------------------------------------------------------------------------------------------


def test_resblock_and_cnn_stem_layout():
    assert ResBlock(in_channels=32, out_channels=64)(torch.randn(2, 32, 8, 8)).shape == (2, 64, 8, 8)
    assert isinstance(ResBlock(in_channels=32, out_channels=32).shortcut, nn.Identity)
    stem = CNNStem(ch=32, ch_mult=(1, 2, 2), num_res_blocks=(1, 1, 2))
    assert stem.downsample_factor == 4 and stem.out_dim == 64  # width ch * ch_mult[-1], no projection
    assert stem(torch.randn(2, 3, 32, 24)).shape == (2, (32 // 4) * (24 // 4), 64)
    assert [len(level.blocks) for level in stem.levels] == [1, 1, 2]
    # the first block of a level changes the width (1x1 bias-free shortcut), later ones keep it
    assert isinstance(stem.levels[0].blocks[0].shortcut, nn.Identity)
    assert stem.levels[1].blocks[0].shortcut.weight.shape == (64, 32, 1, 1)
    assert stem.levels[1].blocks[0].shortcut.bias is None
    assert isinstance(stem.levels[2].blocks[1].shortcut, nn.Identity)
    # bias-free convs everywhere except the down-sampling convs, which are plain stride-2 pad-1 3x3
    for name, module in stem.named_modules():
        if isinstance(module, nn.Conv2d) and "downsample" not in name:
            assert module.bias is None, name
    for i, level in enumerate(stem.levels):
        if i == len(stem.levels) - 1:
            assert not hasattr(level, "downsample")
        else:
            down = level.downsample
            assert isinstance(down, nn.Conv2d) and down.bias is not None
            assert (down.kernel_size, down.stride, down.padding) == ((3, 3), (2, 2), (1, 1))
    # nothing after the last level: no output norm, activation or projection
    assert {name for name, _ in stem.named_children()} == {"conv_in", "levels"}
    stem5 = CNNStem(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1)
    assert stem5(torch.randn(1, 3, 32, 32)).shape == (1, 4, 32)  # f = 16
    for bad in ((1, 1, 1), (1, 0)):
        with pytest.raises(ConfigError):
            CNNStem(ch=8, ch_mult=(1, 2), num_res_blocks=bad)


def test_cnn_stem_is_raster_ordered():
    stem = CNNStem(ch=8, ch_mult=(1, 2), num_res_blocks=1)
    x = torch.randn(1, 3, 16, 16)
    tokens = stem(x)  # (1, 64, 16)
    grid = stem.levels[1].blocks[0](stem.levels[0].downsample(stem.levels[0].blocks[0](stem.conv_in(x))))
    assert grid.shape == (1, 16, 8, 8)
    torch.testing.assert_close(tokens[0], grid[0].flatten(1).T)
    torch.testing.assert_close(tokens[0, 8 * 3 + 5], grid[0, :, 3, 5])


def test_patch_stem_normalises_every_channel_over_the_grid():
    stem = PatchStem(patch_size=16, dim=24)
    assert stem.norm.num_groups == 24  # one channel per group
    x = torch.randn(2, 3, 64, 32) * 5 + 3
    tokens = stem(x)  # (2, 8, 24)
    assert tokens.shape == (2, 8, 24)
    torch.testing.assert_close(tokens.mean(dim=1), torch.zeros(2, 24), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(dim=1, unbiased=False), torch.ones(2, 24), atol=1e-3, rtol=0)
    conv = F.conv2d(x, stem.proj.weight, stem.proj.bias, stride=16)
    torch.testing.assert_close(tokens, rearrange(F.group_norm(conv, 24, eps=1e-6), "b d h w -> b (h w) d"))


# --------------------------------------------------------------------------------------------------
# blocks and heads
# --------------------------------------------------------------------------------------------------


def test_block_state_dict_and_output_equal_timm_block():
    # imported here, after mergevq, whose import applies the torchvision shim timm needs on CPU
    from timm.models.vision_transformer import Block

    ours = MergeBlock(dim=32, num_heads=2, init_values=1e-5)
    theirs = Block(32, 2, qkv_bias=True, init_values=1e-5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)


def test_no_position_embedding_and_no_final_norm():
    enc = _encoder(depth=3)
    names = [n for n, _ in enc.named_parameters()] + [n for n, _ in enc.named_buffers()]
    assert not [n for n in names if "pos" in n]
    layer_norms = [m for m in enc.modules() if isinstance(m, nn.LayerNorm)]
    assert len(layer_norms) == 2 * 3  # norm1 and norm2 of each block, nothing after the last block
    assert all(m.eps == 1e-5 for m in layer_norms)


def test_pre_quant_is_a_group_norm_over_all_kept_tokens():
    head = PreQuant(dim=64, code_dim=6)
    assert head.norm.num_groups == 32 and head.norm.eps == 1e-6
    with torch.no_grad():
        head.norm.weight.normal_()
        head.norm.bias.normal_()
    tokens = torch.randn(2, 5, 64) * 3 + 1
    g = tokens.reshape(2, 5, 32, 2)  # (B, K, groups, channels per group)
    mean = g.mean(dim=(1, 3), keepdim=True)
    var = g.var(dim=(1, 3), unbiased=False, keepdim=True)  # statistics over all K tokens together
    normed = ((g - mean) / (var + 1e-6).sqrt()).reshape(2, 5, 64) * head.norm.weight + head.norm.bias
    reference = F.linear(F.silu(normed), head.proj.weight, head.proj.bias)
    out = head(tokens)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    perm = torch.randperm(5)
    torch.testing.assert_close(head(tokens[:, perm]), out[:, perm])  # order-free
    other = tokens.clone()
    other[:, 4] += 10.0  # one token moves the shared statistics, so the others' outputs change too
    assert (head(other)[:, :4] - out[:, :4]).abs().max() > 1e-2


def test_keep_all_equals_blocks_without_merging():
    enc = _encoder().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = enc(x, num_keep=64)
        h = torch.cat([enc.cls_token.expand(2, -1, -1), enc.stem(x)], 1)  # no position embedding
        for block in enc.blocks:
            h = block(h)  # no final norm after the last block
    torch.testing.assert_close(out.tokens, h[:, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.cls, h[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.z, enc.pre_quant(h[:, 1:]), atol=1e-6, rtol=0)
    assert torch.equal(out.assign, torch.arange(64).expand(2, -1))
    assert (out.sizes == 1).all()


# --------------------------------------------------------------------------------------------------
# position information
# --------------------------------------------------------------------------------------------------


def test_patch_stem_encoder_is_permutation_equivariant_at_keep_all():
    """No position embedding: with a patch stem and no merging, permuting the image's patches
    permutes z and the tokens and leaves [CLS] unchanged."""
    enc = _encoder(depth=3).eval()
    x = torch.randn(2, 3, 64, 64)
    perm = torch.randperm(64)
    patches = rearrange(x, "b c (h p) (w q) -> b (h w) c p q", p=8, q=8)
    shuffled = rearrange(patches[:, perm], "b (h w) c p q -> b c (h p) (w q)", h=8)
    with torch.no_grad():
        out, out_perm = enc(x, num_keep=64), enc(shuffled, num_keep=64)
    torch.testing.assert_close(out_perm.tokens, out.tokens[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_perm.z, out.z[:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_perm.cls, out.cls, atol=1e-5, rtol=1e-5)


def test_position_reaches_the_vit_only_through_the_cnn_zero_padding():
    """A constant image: the CNN stem's tokens (and hence the ViT's) are identical away from the border
    and differ near it; a patch-periodic image through the patch stem gives identical tokens."""
    enc = _cnn_encoder(num_tokens=400).eval()
    with torch.no_grad():
        stem_grid = enc.stem(torch.full((1, 3, 40, 40), 0.3)).reshape(20, 20, 16)
        out = enc(torch.full((1, 3, 40, 40), 0.3), num_keep=400)
    vit_grid = out.tokens.reshape(20, 20, 16)
    for grid in (stem_grid, vit_grid):
        interior = grid[5:15, 5:15].reshape(-1, 16)
        torch.testing.assert_close(interior, interior[:1].expand_as(interior), atol=1e-5, rtol=1e-5)
        assert (grid[0, 0] - grid[10, 10]).abs().max() > 1e-3  # the corner knows it is a corner
        assert (grid[0, 10] - grid[10, 10]).abs().max() > 1e-3
    patch_enc = _encoder(depth=2).eval()
    periodic = torch.randn(1, 3, 8, 8).repeat(1, 1, 8, 8)  # every 8x8 patch the same
    with torch.no_grad():
        tokens = patch_enc(periodic, num_keep=64).tokens[0]
    torch.testing.assert_close(tokens, tokens[:1].expand_as(tokens), atol=1e-5, rtol=1e-5)


def test_other_input_size_works_without_a_position_embedding():
    """The 224 px student view of a 256 px model: its own L, nothing to resize."""
    enc = _encoder().eval()  # built for an 8x8 grid at 64 px
    x = torch.randn(2, 3, 48, 40)  # 6x5 grid
    with torch.no_grad():
        _check_output(enc(x, num_keep=10), bsz=2, num_keep=10, num_tokens=30)
        # no merging: exactly the blocks on [CLS] + the 30 stem tokens, nothing added for position
        full = enc(x, num_keep=30)
        h = torch.cat([enc.cls_token.expand(2, -1, -1), enc.stem(x)], 1)
        for block in enc.blocks:
            h = block(h)
    torch.testing.assert_close(full.tokens, h[:, 1:], atol=1e-6, rtol=0)
    cnn = _cnn_encoder(num_tokens=64)
    _check_output(cnn(torch.randn(1, 3, 12, 20), num_keep=24), bsz=1, num_keep=24, num_tokens=60, dim=16)


# --------------------------------------------------------------------------------------------------
# merging: exact K, merge-count mode, errors
# --------------------------------------------------------------------------------------------------


def test_exact_k_and_assignment_for_every_reachable_k():
    enc = _encoder(patch_size=16).eval()  # L = 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for num_keep in reachable_counts(num_tokens=16, depth=12):
            _check_output(enc(x, num_keep=num_keep), bsz=2, num_keep=num_keep, num_tokens=16)
    enc = _encoder(patch_size=8).eval()  # L = 64
    with torch.no_grad():
        for num_keep in reachable_counts(num_tokens=64, depth=12)[::2]:
            _check_output(enc(x, num_keep=num_keep), bsz=2, num_keep=num_keep, num_tokens=64)


def test_exact_k_for_the_gr_candidates():
    enc = _encoder(patch_size=4).eval()  # L = 256
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for num_keep in K_CANDIDATES["GR"]:
            _check_output(enc(x, num_keep=num_keep), bsz=2, num_keep=num_keep, num_tokens=256)


def test_num_merge_follows_the_schedule_and_equals_num_keep_where_reachable():
    enc = _encoder().eval()  # L = 64, depth 12
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        by_keep, by_merge = enc(x, num_keep=20), enc(x, num_merge=44)
        assert torch.equal(by_keep.assign, by_merge.assign)
        torch.testing.assert_close(by_keep.z, by_merge.z, atol=0, rtol=0)
        # K = 38 is unreachable, but merging 26 tokens is fine: the schedule keeps what it keeps
        expected = plan_merges(num_tokens=64, num_merge=26, depth=12).num_keep
        assert expected != 38
        _check_output(enc(x, num_merge=26), bsz=2, num_keep=expected, num_tokens=64)
        # on a smaller view, layers that cannot merge their share merge fewer (no error)
        small = enc(x[:, :, :24, :24], num_merge=44)  # 9 tokens
        _check_output(small, bsz=2, num_keep=small.z.shape[1], num_tokens=9)
        assert small.z.shape[1] == plan_merges(num_tokens=9, num_merge=8, depth=12).num_keep
    for kwargs in ({}, {"num_keep": 20, "num_merge": 44}):
        with pytest.raises(ValueError, match="exactly one"):
            enc(x, **kwargs)


def test_samples_do_not_interact():
    enc = _encoder().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batch = enc(x, num_keep=20)
        single = enc(x[1:2], num_keep=20)
    assert torch.equal(batch.assign[1:2], single.assign)
    torch.testing.assert_close(batch.tokens[1:2], single.tokens, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.cls[1:2], single.cls, atol=1e-5, rtol=0)
    # z's GroupNorm pools over the K tokens of one image, never across the batch
    torch.testing.assert_close(batch.z[1:2], single.z, atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient_when_merging():
    enc = _encoder(drop_path=0.1).train()
    out = enc(torch.randn(2, 3, 64, 64), num_keep=9)
    (out.z.sum() + out.cls.sum()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_cnn_stem_encoder_gradients_and_width_check():
    enc = _cnn_encoder(num_tokens=64, depth=3)
    out = enc(torch.randn(1, 3, 16, 16), num_keep=20)
    (out.z.square().sum() + out.cls.sum()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    with pytest.raises(ConfigError, match="width 16"):
        MergingEncoder(stem=CNNStem(ch=8, ch_mult=(1, 2), num_res_blocks=1), dim=32, num_heads=2, num_tokens=64)


@pytest.mark.parametrize("num_keep", [0, 65, -1])
def test_bad_num_keep_is_a_one_line_error(num_keep):
    enc = _encoder()
    with pytest.raises(ConfigError) as info:
        enc(torch.randn(1, 3, 64, 64), num_keep=num_keep)
    assert "\n" not in str(info.value) and str(num_keep) in str(info.value)


def test_unreachable_k_names_its_neighbours_and_wrong_image_size_is_an_error():
    reachable = reachable_counts(num_tokens=64, depth=12)
    assert 38 not in reachable
    with pytest.raises(ConfigError, match="unreachable") as info:
        _encoder()(torch.randn(1, 3, 64, 64), num_keep=38)
    message = str(info.value)
    assert "\n" not in message
    neighbours = [k for k in reachable if k < 38][-3:] + [k for k in reachable if k > 38][:3]
    assert str(neighbours) in message  # [35, 36, 37, 39, 40, 41]
    with pytest.raises(ConfigError, match="unreachable"):
        _encoder(depth=2)(torch.randn(1, 3, 64, 64), num_keep=10)  # 64 -> >= 21 in 2 layers
    with pytest.raises(ConfigError, match="multiple of the stem"):
        _encoder()(torch.randn(1, 3, 60, 64), num_keep=8)
