"""Merging encoder: stems, timm-compatible blocks, exact K and assignment, K = L equals no merging."""

import pytest
import torch

from mergevq.errors import ConfigError
from mergevq.layers.conv import ResBlock
from mergevq.tokenizer.encoder import CNNStem, MergeBlock, MergingEncoder, PatchStem
from mergevq.tokenizer.merge import K_CANDIDATES


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


def _check_output(out, *, bsz, num_keep, num_tokens):
    assert out.z.shape == (bsz, num_keep, 6)
    assert out.tokens.shape == (bsz, num_keep, 32) and out.cls.shape == (bsz, 32)
    assert out.assign.shape == (bsz, num_tokens) and out.assign.dtype == torch.int64
    for b in range(bsz):
        counts = torch.bincount(out.assign[b], minlength=num_keep)
        assert len(counts) == num_keep and (counts > 0).all()  # each position in one kept token
        assert torch.equal(counts.float(), out.sizes[b])
        first = torch.stack([(out.assign[b] == k).nonzero()[0, 0] for k in range(num_keep)])
        assert (first.diff() > 0).all() and out.assign[b, 0] == 0  # canonical raster order
    # [CLS] neither absorbed nor absorbing: the kept tokens hold exactly the L positions
    assert (out.sizes.sum(1) == num_tokens).all()


def test_resblock_and_cnn_stem_shapes():
    assert ResBlock(in_channels=32, out_channels=64)(torch.randn(2, 32, 8, 8)).shape == (2, 64, 8, 8)
    block = ResBlock(in_channels=32, out_channels=32)
    assert isinstance(block.shortcut, torch.nn.Identity)
    stem = CNNStem(ch=32, ch_mult=(1, 2, 2), num_res_blocks=(1, 0, 2), out_dim=48)
    assert stem.downsample_factor == 4
    assert stem(torch.randn(2, 3, 32, 24)).shape == (2, (32 // 4) * (24 // 4), 48)
    stem5 = CNNStem(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, out_dim=16)
    assert stem5(torch.randn(1, 3, 32, 32)).shape == (1, 4, 16)  # f = 16
    assert PatchStem(patch_size=16, dim=24)(torch.randn(2, 3, 64, 32)).shape == (2, 8, 24)
    with pytest.raises(ConfigError):
        CNNStem(ch=8, ch_mult=(1, 2), num_res_blocks=(1, 1, 1), out_dim=8)


def test_cnn_stem_is_raster_ordered():
    stem = CNNStem(ch=32, ch_mult=(1, 2), num_res_blocks=1, out_dim=16)
    x = torch.randn(1, 3, 16, 16)
    tokens = stem(x)  # (1, 64, 16)
    grid = stem.proj(stem.act(stem.norm_out(stem.levels[1].blocks[0](stem.levels[0].downsample(
        stem.levels[0].blocks[0](stem.conv_in(x)))))))  # (1, 16, 8, 8)
    torch.testing.assert_close(tokens[0, 8 * 3 + 5], grid[0, :, 3, 5])


def test_block_state_dict_and_output_equal_timm_block():
    # imported here, after mergevq, whose import applies the torchvision shim timm needs on CPU
    from timm.models.vision_transformer import Block

    ours = MergeBlock(dim=32, num_heads=2, init_values=1e-5)
    theirs = Block(32, 2, qkv_bias=True, init_values=1e-5)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-6, rtol=0)


def test_keep_all_equals_blocks_without_merging():
    enc = _encoder().eval()
    x = torch.randn(2, 3, 64, 64)
    out = enc(x, num_keep=64)
    h = torch.cat([enc.cls_token.expand(2, -1, -1), enc.stem(x)], 1) + enc.pos_embed
    for block in enc.blocks:
        h = block(h)
    h = enc.norm(h)
    torch.testing.assert_close(out.tokens, h[:, 1:], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.cls, h[:, 0], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.z, enc.pre_quant(h[:, 1:]), atol=1e-6, rtol=0)
    assert torch.equal(out.assign, torch.arange(64).expand(2, -1))
    assert (out.sizes == 1).all()


def test_exact_k_and_assignment_for_every_k():
    enc = _encoder(patch_size=16).eval()  # L = 16
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for num_keep in range(1, 17):
            _check_output(enc(x, num_keep=num_keep), bsz=2, num_keep=num_keep, num_tokens=16)
    enc = _encoder(patch_size=8).eval()  # L = 64
    with torch.no_grad():
        for num_keep in range(1, 65, 3):
            _check_output(enc(x, num_keep=num_keep), bsz=2, num_keep=num_keep, num_tokens=64)


def test_exact_k_for_the_gr_candidates():
    enc = _encoder(patch_size=4).eval()  # L = 256
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for num_keep in K_CANDIDATES["GR"]:
            _check_output(enc(x, num_keep=num_keep), bsz=2, num_keep=num_keep, num_tokens=256)


def test_samples_do_not_interact():
    enc = _encoder().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batch = enc(x, num_keep=20)
        single = enc(x[1:2], num_keep=20)
    assert torch.equal(batch.assign[1:2], single.assign)
    torch.testing.assert_close(batch.z[1:2], single.z, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.cls[1:2], single.cls, atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient_when_merging():
    enc = _encoder(drop_path=0.1).train()
    out = enc(torch.randn(2, 3, 64, 64), num_keep=9)
    (out.z.sum() + out.cls.sum()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_cnn_stem_encoder_gradients():
    stem = CNNStem(ch=32, ch_mult=(1, 2), num_res_blocks=1, out_dim=32)
    enc = MergingEncoder(stem=stem, dim=32, depth=3, num_heads=2, num_tokens=64, code_dim=6)
    out = enc(torch.randn(1, 3, 16, 16), num_keep=20)
    (out.z.sum() + out.cls.sum()).backward()
    assert all(p.grad is not None for p in enc.parameters())


@pytest.mark.parametrize("num_keep", [0, 65, -1])
def test_bad_num_keep_is_a_one_line_error(num_keep):
    enc = _encoder()
    with pytest.raises(ConfigError) as info:
        enc(torch.randn(1, 3, 64, 64), num_keep=num_keep)
    assert "\n" not in str(info.value) and str(num_keep) in str(info.value)


def test_unreachable_k_and_wrong_image_size_are_errors():
    with pytest.raises(ConfigError, match="unreachable"):
        _encoder(depth=2)(torch.randn(1, 3, 64, 64), num_keep=10)  # 64 -> >= 16 in 2 layers
    with pytest.raises(ConfigError, match="multiple of the stem"):
        _encoder()(torch.randn(1, 3, 60, 64), num_keep=8)


def test_other_input_size_resizes_the_position_embedding():
    """The 224 px student view of a 256 px model: its own L, a resized position embedding."""
    enc = _encoder()  # 8x8 grid at 64 px
    out = enc(torch.randn(2, 3, 48, 40), num_keep=10)  # 6x5 grid
    _check_output(out, bsz=2, num_keep=10, num_tokens=30)
    pos = enc.position_embedding((8, 8))
    assert pos is enc.pos_embed  # the training grid uses the parameter itself
    resized = enc.position_embedding((6, 5))
    assert resized.shape == (1, 31, 32) and torch.equal(resized[:, 0], enc.pos_embed[:, 0])
