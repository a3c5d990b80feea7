"""DDP's ``find_unused_parameters`` only where a module really leaves parameters without a gradient
(issue #13 item 6): one training step of each module with the default recipe settings at tiny size,
asserting which trainable parameters receive a gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ar_training import merged_sequences
from omegaconf import OmegaConf

from mergevq.ar.model import build_config as build_ar_config
from mergevq.config import load_with_origins
from mergevq.tokenizer.alignment import build_teacher
from mergevq.tokenizer.model import build_config
from mergevq.training.ar_module import ARModule
from mergevq.training.tokenizer_module import TokenizerModule
from taming.modules.discriminator.patchgan import PatchGANDiscriminator

pytestmark = pytest.mark.usefixtures("private_cache")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _recipe_params(name: str) -> dict:
    """The recipe's plain model.params (loss weights, K sampler, ...), without the nodes."""
    params = OmegaConf.to_container(load_with_origins([CONFIGS / name]).cfg.model.params, resolve=False)
    return {k: v for k, v in params.items() if not isinstance(v, dict) or "target" not in v}


def _without_grad(*modules: torch.nn.Module) -> list[str]:
    return [name for module in modules for name, p in module.named_parameters() if p.requires_grad and p.grad is None]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=28)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("preset", ["tiny-G", "tiny-GR", "tiny-R"])
def test_tokenizer_step_reaches_every_parameter(preset, teacher_folder):
    recipe = _recipe_params("tokenizer/GR_d64.yaml")
    keep = {"loss_weights", "disc_start_step", "align_temperature", "k_std", "k_floor", "grad_clip"}
    module = TokenizerModule(
        tokenizer=build_config(preset=preset, changes={}),
        discriminator=PatchGANDiscriminator(ndf=8, n_layers=2),
        teacher=build_teacher(source="transformers", path=str(teacher_folder)),
        perceptual={"net": "alex", "weights_path": None, "random_init": True},
        **{k: v for k, v in recipe.items() if k in keep},
    )
    assert all(w > 0 for w in module.weights.__dict__.values())  # every loss term of the recipe is on
    torch.manual_seed(0)
    batch = {"image": torch.rand(2, 3, 32, 32) * 2 - 1, "teacher_image": torch.rand(2, 3, 56, 56) * 2 - 1,
             "student_image": torch.rand(2, 3, 56, 56) * 2 - 1}
    g = module.generator_backward(batch, module.tokenizer.config.num_keep)
    # Why the module declares has_unused_parameters: the generator backward leaves the whole
    # discriminator without a gradient (and the discriminator backward the whole tokenizer).
    assert len(_without_grad(module.discriminator)) == len(list(module.discriminator.parameters()))
    module.discriminator_backward(batch["image"], g.reconstruction)
    # ... but over the step every trainable parameter of both networks got one
    assert _without_grad(module.tokenizer, module.discriminator) == []
    assert module.has_unused_parameters is True


def test_tokenizer_step_at_k_equals_l_leaves_the_recovery_unused():
    # a second reason for the unused-parameter search: at K = L (a candidate of every preset) nothing
    # is merged, so the learned recovery has nothing to predict in that step
    module = TokenizerModule(tokenizer=build_config(preset="tiny-GR", changes={}),
                             discriminator=PatchGANDiscriminator(ndf=8, n_layers=2),
                             perceptual={"net": "alex", "weights_path": None, "random_init": True})
    module.generator_backward({"image": torch.rand(2, 3, 32, 32) * 2 - 1}, module.tokenizer.num_tokens)
    unused = _without_grad(module.tokenizer)
    assert unused and all(name.startswith(("recovery.", "cls_head.")) for name in unused)


def test_mergear_step_reaches_every_parameter():
    recipe = _recipe_params("ar/GR_B.yaml")
    changes = OmegaConf.to_container(load_with_origins([CONFIGS / "ar" / "GR_B.yaml"]).cfg
                                     .model.params.model.params.changes)
    grid = (4, 4)
    config = build_ar_config(preset="tiny", changes={**changes, "grid": list(grid), "num_classes": 8})
    assert config.class_dropout > 0 and config.token_dropout > 0  # the recipe's dropouts are on
    keep = {"lr", "betas", "eps", "weight_decay", "grad_clip", "ema_decay"}
    module = ARModule(model=config, **{k: v for k, v in recipe.items() if k in keep})
    tokens, labels, keeps = merged_sequences(8, grid=grid)
    batch = {"indices": torch.from_numpy(tokens).long(), "label": torch.from_numpy(labels),
             "num_keep": torch.from_numpy(keeps).long()}
    torch.manual_seed(0)
    module.train()
    module(batch).loss.backward()
    assert _without_grad(module) == []
    assert module.has_unused_parameters is False
