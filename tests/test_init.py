"""Encoder initialisation from DINOv2 by element selection, the authors' rule (DESIGN §4 step 8)."""

import pytest
import torch
from torch import nn

import mergevq  # noqa: F401 - installs the torchvision shim before transformers/timm import it
from _dinov2 import hf_layer_tensors
from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.init import (
    EncoderInit,
    init_encoder_from_dinov2,
    init_encoder_from_file,
    load_state_dict_file,
    selection_indices,
    uniform_select,
)


def rule(n: int, m: int) -> torch.Tensor:
    """The authors' per-dimension rule, written out here as the oracle: a stride when m divides n,
    else round(linspace(0, n - 1, m)) with torch.round (ties to even)."""
    if n % m == 0:
        return torch.arange(m) * (n // m)
    return torch.round(torch.linspace(0, n - 1, m)).long()


def select(t: torch.Tensor, shape) -> torch.Tensor:
    for dim, (n, m) in enumerate(zip(t.shape, shape)):
        t = t.index_select(dim, rule(n, m))
    return t


class StandInEncoder(nn.Module):
    """MergeVQ's encoder names: timm Blocks under ``blocks``, ``cls_token``, a stem whose keys also
    contain ``blocks`` (must not be touched) and a head DINOv2 has nothing for."""

    def __init__(self, *, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.stem = nn.Module()
        self.stem.blocks = nn.ModuleList([nn.Linear(dim, dim)])  # key stem.blocks.0.weight
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, init_values=1e-5) for _ in range(depth)
        )
        self.pre_quant = nn.Linear(dim, 3)

    def forward(self, tokens):
        for block in self.blocks:
            tokens = block(tokens)
        return tokens


# --------------------------------------------------------------------------------------------------
# element selection


def test_selection_rule_is_the_authors():
    # a stride from 0 when the target divides the source
    assert selection_indices(12, 6).tolist() == [0, 2, 4, 6, 8, 10]
    assert selection_indices(768, 384).tolist() == list(range(0, 768, 2))
    assert selection_indices(2304, 1152).tolist() == list(range(0, 2304, 2))
    assert selection_indices(7, 1).tolist() == [0]
    assert selection_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    # otherwise round(linspace(0, n - 1, m)), ties to even
    assert selection_indices(10, 4).tolist() == [0, 3, 6, 9]
    assert selection_indices(6, 4).tolist() == [0, 2, 3, 5]
    assert selection_indices(6, 5).tolist() == [0, 1, 2, 4, 5]  # 2.5 -> 2 (half up would give 3)
    assert selection_indices(4, 3).tolist() == [0, 2, 3]  # 1.5 -> 2
    assert selection_indices(768, 512)[:8].tolist() == [0, 2, 3, 5, 6, 8, 9, 11]
    for n, m in [(768, 512), (3072, 2048), (2304, 1536), (384, 256), (96, 64), (64, 48), (1000, 7)]:
        assert torch.equal(selection_indices(n, m), rule(n, m)), (n, m)
    assert uniform_select(torch.arange(10), (4,)).tolist() == [0, 3, 6, 9]


def test_uniform_select_identity_and_copy():
    x = torch.randn(3, 5, 2)
    y = uniform_select(x, x.shape)
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_uniform_select_2d():
    x = torch.arange(60).reshape(6, 10)
    y = uniform_select(x, (3, 4))
    rows, cols = [0, 2, 4], [0, 3, 6, 9]  # 6 -> 3: stride 2; 10 -> 4: linspace
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


def _check_selected(encoder, model):
    """Encoder block i = checkpoint block i with every tensor (qkv as one tensor) reduced by the rule."""
    for i, blk in enumerate(encoder.blocks):
        for name, src in hf_layer_tensors(model, i).items():
            dst = blk.get_parameter(name)
            torch.testing.assert_close(dst, select(src.detach(), dst.shape), rtol=0, atol=0, msg=name)
    cls = model.embeddings.cls_token.detach()
    torch.testing.assert_close(encoder.cls_token, select(cls, encoder.cls_token.shape), rtol=0, atol=0)


@pytest.mark.parametrize("dim", [24, 32], ids=["stride", "linspace"])
def test_init_from_transformers_state_dicts(hf_model, tmp_path, dim):
    hf_model.save_pretrained(tmp_path)  # on disk: attention.attention.{query,key,value} names
    on_disk = load_state_dict_file(tmp_path)
    assert any(".attention.attention.query." in k for k in on_disk)
    for state in (hf_model.state_dict(), on_disk):  # in memory (transformers 5 names) and on disk
        torch.manual_seed(0)
        encoder = StandInEncoder(dim=dim, depth=2, heads=4)
        untouched = {k: v.clone() for k, v in encoder.state_dict().items() if k.startswith(("stem.", "pre_quant."))}
        report = init_encoder_from_dinov2(encoder, state, source="transformers")
        assert report.block_map == (0, 1)  # the first blocks, same index (the authors match names)
        _check_selected(encoder, hf_model)
        assert len(report.loaded) == 2 * 14 + 1 and "blocks.1.attn.qkv.weight" in report.loaded
        assert report.shape_changes["blocks.0.attn.qkv.weight"] == ((144, 48), (3 * dim, dim))
        assert set(report.not_initialised) == set(untouched)
        assert all(torch.equal(encoder.state_dict()[k], v) for k, v in untouched.items())
        skipped = set(report.skipped)
        assert {"embeddings.position_embeddings", "layernorm.weight", "layernorm.bias"} <= skipped
        assert not any(k.startswith(("encoder.layer.0.", "encoder.layer.1.")) for k in skipped)
        assert any(k.startswith("encoder.layer.3.") for k in skipped)
        line = report.summary()
        assert "\n" not in line and "29 tensors loaded" in line and "blocks 0..1" in line


def test_init_from_timm_state_dict():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    vit = VisionTransformer(img_size=28, patch_size=14, embed_dim=48, depth=4, num_heads=4, init_values=0.5,
                            num_classes=0)
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    encoder = StandInEncoder(dim=32, depth=3, heads=4)
    report = init_encoder_from_dinov2(encoder, vit.state_dict(), source="timm")
    assert report.block_map == (0, 1, 2)
    for i, blk in enumerate(encoder.blocks):
        src = vit.blocks[i]
        for name, dst in blk.named_parameters():
            torch.testing.assert_close(dst, select(src.get_parameter(name).detach(), dst.shape), rtol=0, atol=0)
    torch.testing.assert_close(encoder.cls_token, select(vit.cls_token.detach(), (1, 1, 32)), rtol=0, atol=0)
    assert {"pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.3.attn.qkv.weight"} <= set(report.skipped)


def test_same_width_and_depth_is_an_exact_copy(hf_model):
    encoder = StandInEncoder(dim=48, depth=4, heads=4)
    report = init_encoder_from_dinov2(encoder, hf_model.state_dict(), source="transformers")
    assert report.block_map == (0, 1, 2, 3) and report.shape_changes == {}
    _check_selected(encoder, hf_model)
    # and the blocks compute what DINOv2's layers compute (q/k/v order, proj, layer scale)
    tokens = torch.randn(2, 5, 48)
    with torch.no_grad():
        hidden = tokens
        for layer in hf_model.encoder.layer:
            hidden = layer(hidden)
        torch.testing.assert_close(encoder(tokens), hidden, rtol=1e-5, atol=1e-5)


def test_init_errors(hf_model):
    encoder = StandInEncoder(dim=24, depth=2, heads=4)
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
# from the config: EncoderInit and init_encoder_from_file


def test_encoder_init_settings():
    assert EncoderInit.from_mapping({"source": "timm", "path": "/w/x.pth"}) == EncoderInit("timm", "/w/x.pth")
    with pytest.raises(ConfigError, match="must be one of timm, transformers"):
        EncoderInit.from_mapping({"source": "hub", "path": "/w"})
    with pytest.raises(ConfigError, match="unknown key.*paths.*missing key.*path"):
        EncoderInit.from_mapping({"source": "timm", "paths": "/w"})
    with pytest.raises(ConfigError, match="non-empty path"):
        EncoderInit.from_mapping({"source": "timm", "path": ""})


def test_init_from_file_and_missing_weights(hf_model, tmp_path):
    folder = tmp_path / "dinov2"
    hf_model.save_pretrained(folder)
    encoder = StandInEncoder(dim=24, depth=2, heads=4)
    report = init_encoder_from_file(encoder, EncoderInit(source="transformers", path=str(folder)))
    assert len(report.loaded) == 29
    _check_selected(encoder, hf_model)
    for missing in (tmp_path / "absent", tmp_path):  # no folder / a folder without weights
        with pytest.raises(WeightsError) as info:
            init_encoder_from_file(encoder, EncoderInit(source="transformers", path=str(missing)))
        message = str(info.value)
        assert str(missing) in message and "\n" not in message
        assert "facebook/dinov2-base" in message and "encoder_init" in message


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
