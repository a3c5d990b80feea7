"""Encoder initialisation from DINOv2 by uniform element selection (DESIGN §4 step 8)."""

import pytest
import torch
from torch import nn

import mergevq  # noqa: F401 - installs the torchvision shim before transformers/timm import it
from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.init import (
    init_encoder_from_dinov2,
    load_state_dict_file,
    selection_indices,
    uniform_select,
)


class StandInEncoder(nn.Module):
    """The encoder's parameter names: timm Blocks under ``blocks``, ``cls_token``, ``norm``."""

    def __init__(self, *, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.extra = nn.Linear(dim, 3)  # something DINOv2 has nothing for

    def forward(self, tokens):
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


# --------------------------------------------------------------------------------------------------
# uniform_select


def test_uniform_select_rule():
    assert selection_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert selection_indices(12, 6).tolist() == [0, 2, 4, 7, 9, 11]
    assert selection_indices(7, 1).tolist() == [0]
    assert selection_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert uniform_select(torch.arange(10), (4,)).tolist() == [0, 3, 6, 9]


def test_uniform_select_identity_and_copy():
    x = torch.randn(3, 5, 2)
    y = uniform_select(x, x.shape)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_uniform_select_2d():
    x = torch.arange(60).reshape(6, 10)
    y = uniform_select(x, (3, 4))
    rows, cols = [0, 3, 5], [0, 3, 6, 9]  # 6 -> 3: 0, 2.5 (rounded half up) -> 3, 5
    assert selection_indices(6, 3).tolist() == rows
    assert y.tolist() == [[x[r, c].item() for c in cols] for r in rows]


def test_uniform_select_errors():
    with pytest.raises(ConfigError, match="larger"):
        uniform_select(torch.zeros(3, 4), (3, 5))
    with pytest.raises(ConfigError, match="ranks differ"):
        uniform_select(torch.zeros(3, 4), (3,))


# --------------------------------------------------------------------------------------------------
# init_encoder_from_dinov2


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(2)
    config = Dinov2Config(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=192,
                          image_size=28, patch_size=14, layerscale_value=0.5)
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # make biases / norms non-trivial so every mapping is checked
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _hf_tensors(model, layer: int) -> dict:
    """One transformers layer's tensors by role (independent of the implementation's tables)."""
    att = model.encoder.layer[layer]
    return {
        "norm1.weight": att.norm1.weight, "norm1.bias": att.norm1.bias,
        "q.weight": att.attention.q_proj.weight, "k.weight": att.attention.k_proj.weight,
        "v.weight": att.attention.v_proj.weight, "q.bias": att.attention.q_proj.bias,
        "k.bias": att.attention.k_proj.bias, "v.bias": att.attention.v_proj.bias,
        "attn.proj.weight": att.attention.o_proj.weight, "attn.proj.bias": att.attention.o_proj.bias,
        "ls1.gamma": att.layer_scale1.lambda1, "ls2.gamma": att.layer_scale2.lambda1,
        "norm2.weight": att.norm2.weight, "norm2.bias": att.norm2.bias,
        "mlp.fc1.weight": att.mlp.fc1.weight, "mlp.fc1.bias": att.mlp.fc1.bias,
        "mlp.fc2.weight": att.mlp.fc2.weight, "mlp.fc2.bias": att.mlp.fc2.bias,
    }


def _check_selected(encoder, model, block_map, d_src, d_dst):
    c = selection_indices(d_src, d_dst)            # residual / q / k / v channels
    h = selection_indices(4 * d_src, 4 * d_dst)    # MLP hidden channels
    for i, j in enumerate(block_map):
        src, blk = _hf_tensors(model, j), encoder.blocks[i]
        qkv = torch.cat([src[f"{r}.weight"][c][:, c] for r in "qkv"])
        torch.testing.assert_close(blk.attn.qkv.weight, qkv, rtol=0, atol=0)
        torch.testing.assert_close(blk.attn.qkv.bias, torch.cat([src[f"{r}.bias"][c] for r in "qkv"]), rtol=0, atol=0)
        torch.testing.assert_close(blk.attn.proj.weight, src["attn.proj.weight"][c][:, c], rtol=0, atol=0)
        torch.testing.assert_close(blk.mlp.fc1.weight, src["mlp.fc1.weight"][h][:, c], rtol=0, atol=0)
        torch.testing.assert_close(blk.mlp.fc1.bias, src["mlp.fc1.bias"][h], rtol=0, atol=0)
        torch.testing.assert_close(blk.mlp.fc2.weight, src["mlp.fc2.weight"][c][:, h], rtol=0, atol=0)
        for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.proj.bias",
                     "mlp.fc2.bias", "ls1.gamma", "ls2.gamma"):
            torch.testing.assert_close(blk.get_parameter(name), src[name][c], rtol=0, atol=0)
    torch.testing.assert_close(encoder.cls_token, model.embeddings.cls_token[..., c], rtol=0, atol=0)
    torch.testing.assert_close(encoder.norm.weight, model.layernorm.weight[c], rtol=0, atol=0)


def test_init_from_transformers_state_dicts(hf_model, tmp_path):
    hf_model.save_pretrained(tmp_path)  # on disk: attention.attention.{query,key,value} names
    on_disk = load_state_dict_file(tmp_path)
    assert any(".attention.attention.query." in k for k in on_disk)
    for state in (hf_model.state_dict(), on_disk):  # in memory (transformers 5 names) and on disk
        torch.manual_seed(0)
        encoder = StandInEncoder(dim=24, depth=2, heads=4)
        extra_before = encoder.extra.weight.clone()
        report = init_encoder_from_dinov2(encoder, state, source="transformers")
        assert report.block_map == (0, 3)
        _check_selected(encoder, hf_model, report.block_map, 48, 24)
        assert len(report.loaded) == 2 * 14 + 3 and "blocks.1.attn.qkv.weight" in report.loaded
        assert report.shape_changes["blocks.0.attn.qkv.weight"] == ((144, 48), (72, 24))
        assert set(report.not_initialised) == {"extra.weight", "extra.bias"}
        assert torch.equal(encoder.extra.weight, extra_before)
        skipped = set(report.skipped)
        assert "embeddings.position_embeddings" in skipped
        assert not any(k.startswith(("encoder.layer.0.", "encoder.layer.3.")) for k in skipped)
        assert any(k.startswith("encoder.layer.1.") for k in skipped)


def test_init_from_timm_state_dict():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    vit = VisionTransformer(img_size=28, patch_size=14, embed_dim=48, depth=4, num_heads=4, init_values=0.5,
                            num_classes=0)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    encoder = StandInEncoder(dim=24, depth=3, heads=4)
    report = init_encoder_from_dinov2(encoder, vit.state_dict(), source="timm")
    assert report.block_map == (0, 2, 3)  # 4 -> 3: 0, 1.5 -> 2, 3
    c, h = selection_indices(48, 24), selection_indices(192, 96)
    for i, j in enumerate(report.block_map):
        src, blk = vit.blocks[j], encoder.blocks[i]
        q, k, v = src.attn.qkv.weight.chunk(3)
        expected = torch.cat([w[c][:, c] for w in (q, k, v)])
        torch.testing.assert_close(blk.attn.qkv.weight, expected, rtol=0, atol=0)
        torch.testing.assert_close(blk.mlp.fc2.weight, src.mlp.fc2.weight[c][:, h], rtol=0, atol=0)
        torch.testing.assert_close(blk.ls1.gamma, src.ls1.gamma[c], rtol=0, atol=0)
    assert "pos_embed" in report.skipped and "patch_embed.proj.weight" in report.skipped


def test_same_width_and_depth_is_an_exact_copy(hf_model):
    encoder = StandInEncoder(dim=48, depth=4, heads=4)
    report = init_encoder_from_dinov2(encoder, hf_model.state_dict(), source="transformers")
    assert report.block_map == (0, 1, 2, 3) and report.shape_changes == {}
    _check_selected(encoder, hf_model, report.block_map, 48, 48)
    # and the blocks compute what DINOv2's layers compute (q/k/v order, proj, layer scale)
    tokens = torch.randn(2, 5, 48)
    with torch.no_grad():
        hidden = tokens
        for layer in hf_model.encoder.layer:
            hidden = layer(hidden)
        expected = hf_model.layernorm(hidden)
        torch.testing.assert_close(encoder(tokens), expected, rtol=1e-5, atol=1e-5)


def test_init_options_and_errors(hf_model):
    encoder = StandInEncoder(dim=24, depth=2, heads=4)
    before = encoder.cls_token.clone()
    report = init_encoder_from_dinov2(encoder, hf_model.state_dict(), source="transformers",
                                      include_cls_token=False, include_norm=False)
    assert torch.equal(encoder.cls_token, before)
    assert {"cls_token", "norm.weight", "norm.bias"} <= set(report.not_initialised)
    with pytest.raises(ConfigError, match="timm, transformers"):
        init_encoder_from_dinov2(encoder, hf_model.state_dict(), source="meta")
    with pytest.raises(WeightsError, match="source: timm"):  # transformers keys read as timm
        init_encoder_from_dinov2(encoder, hf_model.state_dict(), source="timm")
    with pytest.raises(ConfigError, match="5 blocks"):
        init_encoder_from_dinov2(StandInEncoder(dim=24, depth=5, heads=4), hf_model.state_dict(),
                                 source="transformers")
    with pytest.raises(ConfigError, match="DINOv2 init of .*the target is larger"):  # wider than the checkpoint
        init_encoder_from_dinov2(StandInEncoder(dim=64, depth=2, heads=4), hf_model.state_dict(),
                                 source="transformers")
    state = {k: v for k, v in hf_model.state_dict().items() if "mlp.fc1.weight" not in k}
    with pytest.raises(WeightsError, match="mlp.fc1.weight"):
        init_encoder_from_dinov2(encoder, state, source="transformers")


# --------------------------------------------------------------------------------------------------
# load_state_dict_file


def test_load_state_dict_file(tmp_path):
    from safetensors.torch import save_file

    state = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": state, "step": 7}, tmp_path / "w.pth")
    torch.save(state, tmp_path / "w.bin")
    for name in ("w.safetensors", "w.pth", "w.bin"):
        got = load_state_dict_file(tmp_path / name)
        assert set(got) == {"a", "b"} and torch.equal(got["a"], state["a"])

    missing = tmp_path / "absent.safetensors"
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(WeightsError, match="junk.pth is not a readable state dict"):
        load_state_dict_file(tmp_path / "junk.pth")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(WeightsError, match="unknown weights format"):
        load_state_dict_file(tmp_path / "w.npz")
    with pytest.raises(WeightsError, match="model.safetensors"):
        load_state_dict_file(tmp_path)  # a folder without a transformers checkpoint
