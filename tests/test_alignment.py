"""Global alignment: [CLS] head, frozen DINOv2 teacher (loaded explicitly, never in a checkpoint).

Tiny random stand-ins replace DINOv2 ViT-B/14: the feature width is their hidden size (32 here); the
real teacher's is 768.
"""

import pytest
import torch
from torch import nn

import mergevq  # noqa: F401 - installs the torchvision shim before transformers/timm import it
from mergevq.errors import ConfigError, WeightsError
from mergevq.tokenizer.alignment import ClsHead, Teacher, build_teacher
from mergevq.tokenizer.init import BLOCK_KEYS, _convert_transformers

from _teacher_parent import Parent

WIDTH, DEPTH, HEADS, PATCH, NATIVE = 32, 2, 4, 14, 56


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(1)
    config = Dinov2Config(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                          intermediate_size=4 * WIDTH, image_size=NATIVE, patch_size=PATCH)
    model = Dinov2Model(config).eval()
    folder = tmp_path_factory.mktemp("dinov2")
    model.save_pretrained(folder)
    return folder, model


def _timm_state_from_hf(model) -> dict:
    """The same weights in timm ``vit_*_dinov2`` names."""
    sd = model.state_dict()
    conv = _convert_transformers(sd)
    out = {f"blocks.{i}.{k}": v for i, block in conv.blocks.items() for k, v in block.items()}
    out.update(conv.top)
    out["pos_embed"] = sd["embeddings.position_embeddings"]
    out["patch_embed.proj.weight"] = sd["embeddings.patch_embeddings.projection.weight"]
    out["patch_embed.proj.bias"] = sd["embeddings.patch_embeddings.projection.bias"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@pytest.fixture(scope="module")
def timm_file(hf_folder, tmp_path_factory):
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("timm") / "dinov2_tiny.safetensors"
    save_file(_timm_state_from_hf(hf_folder[1]), str(path))
    return path


def _timm_teacher(path, img_size=NATIVE) -> Teacher:
    return Teacher.from_timm("vit_small_patch14_dinov2", path, img_size=img_size,
                             embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)


def test_cls_head_maps_to_teacher_width():
    head = ClsHead(in_dim=24)
    assert head.hidden_dim == 96 and head.out_dim == 768
    assert head(torch.randn(3, 24)).shape == (3, 768)
    assert ClsHead(in_dim=24, out_dim=16, hidden_dim=40)(torch.randn(2, 5, 24)).shape == (2, 5, 16)
    with pytest.raises(ConfigError, match="hidden_dim"):
        ClsHead(in_dim=24, hidden_dim=0)
    with pytest.raises(ConfigError, match="valid: mlp3, mlp_ln"):
        ClsHead(in_dim=24, kind="mlp2")


@pytest.mark.parametrize(
    ("kind", "authors", "names"),
    [
        # GR / R: Linear-GELU-Linear-GELU-Linear (dist_head.0 / .2 / .4)
        ("mlp3", lambda h: nn.Sequential(nn.Linear(8, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 16)),
         {"fc1": "0", "fc2": "2", "fc3": "4"}),
        # G (dist_head: True): Linear-GELU-LayerNorm-Linear (dist_head.0 / .2 / .3)
        ("mlp_ln", lambda h: nn.Sequential(nn.Linear(8, h), nn.GELU(), nn.LayerNorm(h), nn.Linear(h, 16)),
         {"fc1": "0", "norm": "2", "fc2": "3"}),
    ],
)
def test_cls_head_kinds_compute_the_authors_mlps(kind, authors, names):
    head = ClsHead(in_dim=8, out_dim=16, kind=kind)
    assert head.hidden_dim == 32  # 4 * in_dim, the ViT MLP ratio
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(std=0.3)
    reference = authors(32)
    assert {k.split(".")[0] for k in head.state_dict()} == set(names)
    reference.load_state_dict(
        {f"{names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v for k, v in head.state_dict().items()}, strict=True
    )
    x = torch.randn(3, 5, 8)  # leading dimensions are kept
    torch.testing.assert_close(head(x), reference(x), atol=1e-6, rtol=1e-6)
    assert head(x).shape == (3, 5, 16)


def test_transformers_teacher_is_pooler_output(hf_folder):
    folder, reference = hf_folder
    teacher = Teacher.from_transformers(folder)
    assert teacher.dim == WIDTH
    x = torch.randn(2, 3, NATIVE, NATIVE)
    with torch.no_grad():
        expected = reference(pixel_values=x).pooler_output
    torch.testing.assert_close(teacher(x), expected, rtol=0, atol=0)
    # the weak view is 224 px while the checkpoint's grid is bigger: positions are interpolated
    assert teacher(torch.randn(1, 3, 28, 28)).shape == (1, WIDTH)


@pytest.mark.parametrize("source", ["transformers", "timm"])
def test_teacher_frozen_excluded_from_state_dict_and_moves(source, hf_folder, timm_file):
    teacher = Teacher.from_transformers(hf_folder[0]) if source == "transformers" else _timm_teacher(timm_file)
    parent = Parent(teacher)
    # frozen and always eval
    assert all(not p.requires_grad for p in teacher.model.parameters())
    parent.train()
    parent.requires_grad_(True)  # GAN-style toggling must not unfreeze the teacher
    assert teacher.training and not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    x = torch.randn(2, 3, NATIVE, NATIVE, requires_grad=True)
    feature = teacher(x)
    assert feature.shape == (2, WIDTH) and not feature.requires_grad
    # never saved, never expected, never optimised
    state = parent.state_dict()
    assert state and all(k.startswith("head.") for k in state)
    assert {id(p) for p in parent.parameters()} == {id(p) for p in parent.head.parameters()}
    fresh = Parent(teacher)
    fresh.load_state_dict(state, strict=True)
    torch.testing.assert_close(fresh.head.fc1.weight, parent.head.fc1.weight)
    # but it moves with the parent
    parent.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in teacher.model.parameters())
    out64 = teacher(x.detach().double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), feature, rtol=1e-4, atol=1e-4)


def test_timm_and_transformers_agree_on_the_pooled_feature(hf_folder, timm_file):
    hf = Teacher.from_transformers(hf_folder[0])
    for size in (NATIVE, 28):  # native grid, and a smaller view (positions resampled the same way)
        tm = _timm_teacher(timm_file, img_size=size)
        x = torch.randn(2, 3, size, size)
        torch.testing.assert_close(tm(x), hf(x), rtol=1e-5, atol=1e-5)


def test_timm_checkpoint_in_pth_with_model_wrapper(hf_folder, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": _timm_state_from_hf(hf_folder[1]), "epoch": 3}, path)
    teacher = _timm_teacher(path)
    assert teacher(torch.randn(1, 3, NATIVE, NATIVE)).shape == (1, WIDTH)


def test_missing_and_wrong_weights_are_one_line_errors(tmp_path, timm_file):
    missing = tmp_path / "nowhere"
    for call in (lambda: Teacher.from_transformers(missing),
                 lambda: build_teacher(source="transformers", path=str(missing)),
                 lambda: build_teacher(source="timm", path=str(missing), model_name="vit_base_patch14_dinov2")):
        with pytest.raises(WeightsError) as info:
            call()
        message = str(info.value)
        assert str(missing) in message and "\n" not in message
        assert message.startswith("teacher weights not found:") and "facebook/dinov2-base" in message
    with pytest.raises(WeightsError, match="do not fit timm model") as info:
        Teacher.from_timm("vit_small_patch14_dinov2", timm_file, img_size=NATIVE, embed_dim=WIDTH, depth=3,
                          num_heads=HEADS)
    assert "\n" not in str(info.value)


def test_build_teacher_choices(hf_folder, timm_file):
    with pytest.raises(ConfigError, match="transformers, timm"):
        build_teacher(source="hub", path="x")
    with pytest.raises(ConfigError, match="model_name"):
        build_teacher(source="timm", path=str(timm_file))
    with pytest.raises(ConfigError, match="model_name"):
        build_teacher(source="transformers", path=str(hf_folder[0]), model_name="vit_base_patch14_dinov2")
    assert build_teacher(source="transformers", path=str(hf_folder[0])).source == "transformers"
    with pytest.raises(ConfigError, match="unknown teacher source"):
        Teacher(model=nn.Linear(2, 2), source="jax")


def test_timm_names_are_the_encoder_block_names():
    from timm.models.vision_transformer import Block

    names = {n for n, _ in Block(8, 2, qkv_bias=True, init_values=1e-5).named_parameters()}
    assert names == set(BLOCK_KEYS)
