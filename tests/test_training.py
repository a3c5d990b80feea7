"""Stage 1 training (issue #4): a few steps per variant family, the GAN toggling invariant, NaN
handling, the alignment teacher path, the CLI, and DDP on two gloo processes."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _training import STEPS_PER_EPOCH, preset, write_config
from PIL import Image

from mergevq.config import load_with_origins
from mergevq.errors import ConfigError, TrainingError
from mergevq.training.checkpoint import load_checkpoint_file
from mergevq.training.run import train
from mergevq.training.tokenizer_module import TokenizerModule, batch_code_usage, frozen


pytestmark = pytest.mark.usefixtures("private_cache")


def _module(tmp_path: Path, **params) -> TokenizerModule:
    loaded = load_with_origins([write_config(tmp_path, params=params)])
    return loaded.instantiate("model", extra={"seed": 0})


def _batch(size: int = 2, res: int = 32) -> dict:
    return {"image": torch.rand(size, 3, res, res) * 2 - 1}


# --------------------------------------------------------------------------------------------------
# a few steps of each family, with accumulation 2 and clipping


@pytest.mark.parametrize("name", ["tiny-G", "tiny-GR", "tiny-R"])
def test_each_family_trains_with_accumulation_and_clipping(tmp_path, name):
    config = write_config(tmp_path, trainer={"max_steps": 2, "max_epochs": -1},
                          params={**preset(name), "accumulate_grad_batches": 2, "grad_clip": 1.0})
    result = train([config], run_dir=tmp_path / "run")
    m = result.metrics
    for key in ("train/g_loss", "train/d_loss", "train/l1", "train/perceptual", "train/gan", "train/entropy",
                "train/commit", "train/recovery", "train/recovery_accuracy", "train/usage", "train/d_lecam"):
        assert math.isfinite(m[key]), key
    assert "train/align" not in m  # no teacher: the alignment loss is off
    from mergevq.tokenizer.model import PRESETS

    assert int(m["train/num_keep"]) in PRESETS[name].k_candidates
    ckpt = load_checkpoint_file(result.last_checkpoint)
    assert ckpt["mergevq_train_state"]["train_steps"] == 2
    assert ckpt["mergevq_train_state"]["generator_updates"] == 2
    # the adversarial and LeCAM machinery moved: D was updated, LeCAM anchors initialised
    assert bool(ckpt["state_dict"]["lecam.initialized"])


# --------------------------------------------------------------------------------------------------
# the adversarial gradient never reaches the discriminator


def test_generator_step_leaves_discriminator_grads_untouched(tmp_path):
    module = _module(tmp_path, accumulate_grad_batches=2)
    disc, tok = module.discriminator, module.tokenizer
    assert module.weights.gan > 0
    # before any D step: the generator step leaves D's grads None
    module.generator_backward(_batch(), num_keep=9)
    assert all(p.grad is None for p in disc.parameters())
    assert all(p.requires_grad for p in disc.parameters())  # the toggle is undone
    g_after_one = [p.grad.clone() for p in tok.parameters() if p.grad is not None]
    assert g_after_one
    # a D micro-step fills D's grads and leaves the tokenizer's exactly as they were
    d_losses = module.discriminator_backward(_batch()["image"], _batch()["image"])
    assert torch.isfinite(d_losses.total)
    assert all(torch.equal(a, p.grad) for a, p in zip(g_after_one, [p for p in tok.parameters() if p.grad is not None]))
    d_grads = [p.grad.clone() for p in disc.parameters()]
    assert any(g.abs().sum() > 0 for g in d_grads)
    # a second generator micro-step (accumulation) adds to the tokenizer's grads, not to D's
    module.generator_backward(_batch(), num_keep=16)
    assert all(torch.equal(a, p.grad) for a, p in zip(d_grads, disc.parameters()))
    changed = [not torch.equal(a, p.grad) for a, p in zip(g_after_one, [p for p in tok.parameters() if p.grad is not None])]
    assert any(changed)


def test_frozen_restores_each_flag_even_on_error():
    layer = torch.nn.Linear(2, 2)
    layer.bias.requires_grad_(False)
    with pytest.raises(RuntimeError), frozen(layer):
        assert not layer.weight.requires_grad
        raise RuntimeError("boom")
    assert layer.weight.requires_grad and not layer.bias.requires_grad


def test_metric_helpers():
    assert batch_code_usage(torch.tensor([[1, 1, 2, 3]]), 8).item() == pytest.approx(0.75)


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="loss_weights: unknown key"):
        _module(tmp_path, loss_weights={"l2": 1.0})
    with pytest.raises(ConfigError, match="perceptual: unknown key"):
        _module(tmp_path, perceptual={"net": "alex", "random_init": True, "weights": None})
    with pytest.raises(ConfigError, match="seed.*supplied by the program"):
        train([write_config(tmp_path, params={"seed": 3})], run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="trainer.max_epochs or trainer.max_steps"):
        train([write_config(tmp_path, trainer={"max_epochs": -1, "max_steps": -1})], run_dir=tmp_path / "r")
    with pytest.raises(ConfigError, match="unknown key 'trainer.max_step'"):
        train([write_config(tmp_path, trainer={"max_step": 3})], run_dir=tmp_path / "r")


# --------------------------------------------------------------------------------------------------
# NaN / inf: skipped with a warning, abort after max_bad_steps in a row


def _poison(monkeypatch, bad_steps):
    original = TokenizerModule.generator_losses

    def losses(self, batch, num_keep):
        out = original(self, batch, num_keep)
        if self.train_steps in bad_steps:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(TokenizerModule, "generator_losses", losses)


def test_nan_step_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    _poison(monkeypatch, bad_steps={1})
    config = write_config(tmp_path, trainer={"max_steps": 3, "max_epochs": -1})
    with caplog.at_level(logging.WARNING, logger="mergevq.training.tokenizer_module"):
        result = train([config], run_dir=tmp_path / "run")
    assert any("step 1: non-finite loss" in r.getMessage() for r in caplog.records)
    state = load_checkpoint_file(result.last_checkpoint)["mergevq_train_state"]
    assert state == {"train_steps": 3, "generator_updates": 2, "bad_steps": 0}


def test_nan_steps_in_a_row_abort(tmp_path, monkeypatch):
    _poison(monkeypatch, bad_steps={2, 3, 4})
    config = write_config(tmp_path, trainer={"max_steps": 10, "max_epochs": -1}, params={"max_bad_steps": 2})
    with pytest.raises(TrainingError, match=r"stopped at step 3: 2 steps in a row had a non-finite loss"):
        train([config], run_dir=tmp_path / "run")


# --------------------------------------------------------------------------------------------------
# the global alignment path: a tiny random Dinov2 teacher and an image folder with views


def _tiny_teacher(folder: Path, hidden: int) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    model = Dinov2Model(Dinov2Config(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=2 * hidden, patch_size=14, image_size=28))
    model.save_pretrained(folder)
    return folder


def _image_folder(folder: Path, count: int = 8) -> Path:
    from mergevq.data.demo import DemoImages

    images = DemoImages(split="train", resolution=64, train_per_photo=1, val_per_photo=1).images
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.ascontiguousarray(images[i % len(images)])).save(folder / f"{i}.png")
    return folder


def _folder_data(root: Path, *, views: bool) -> dict:
    def split(v: bool) -> dict:
        return {"target": "taming.data.folder.ImageFolder",
                "params": {"root": str(root), "size": 32, "views": v, "view_size": 56, "random_crop": v, "flip": v}}

    return {"target": "mergevq.data.datamodule.ImageDataModule",
            "params": {"batch_size": 4, "num_workers": 0, "train": split(views), "validation": split(False)}}


def test_teacher_alignment_trains_a_step(tmp_path):
    teacher = _tiny_teacher(tmp_path / "dinov2", hidden=32)  # tiny presets: cls_dim 32
    root = _image_folder(tmp_path / "images")
    params = {"teacher": {"target": "mergevq.tokenizer.alignment.build_teacher",
                          "params": {"source": "transformers", "path": str(teacher)}},
              "accumulate_grad_batches": 1}
    config = write_config(tmp_path, trainer={"max_steps": 1, "max_epochs": -1}, params=params,
                          data=_folder_data(root, views=True))
    result = train([config], run_dir=tmp_path / "run")
    assert math.isfinite(result.metrics["train/align"]) and result.metrics["train/align"] > 0
    state = load_checkpoint_file(result.last_checkpoint)["state_dict"]
    assert not any("teacher" in k or "perceptual" in k for k in state)  # frozen nets are never saved

    config = write_config(tmp_path, name="noviews.yaml", trainer={"max_steps": 1, "max_epochs": -1}, params=params,
                          data=_folder_data(root, views=False))
    with pytest.raises(ConfigError, match="no teacher_image / student_image"):
        train([config], run_dir=tmp_path / "run2")


# --------------------------------------------------------------------------------------------------
# command line


def test_cli_train_then_resume_auto(tmp_path, capsys):
    from mergevq.cli import main

    config = write_config(tmp_path)
    run_dir = tmp_path / "run"
    assert main(["train", str(config), "trainer.max_epochs=1", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run_dir}" in out and "val_ema/psnr" in out
    assert (run_dir / "config.yaml").is_file()
    assert main(["train", str(config), "trainer.max_epochs=2", "--run-dir", str(run_dir), "--resume", "auto"]) == 0
    last = load_checkpoint_file(max((run_dir / "checkpoints").glob("*.ckpt")))
    assert last["mergevq_train_state"]["train_steps"] == 2 * STEPS_PER_EPOCH
    assert main(["train", str(config), "--run-dir", str(run_dir), "--resume", str(tmp_path / "nope.ckpt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# DDP: two gloo processes


@pytest.mark.distributed
def test_ddp_two_gloo_processes(tmp_path, cache_dir):
    """``strategy=ddp`` through the real command in a subprocess (Lightning relaunches the command as
    rank 1; ENVIRONMENT.md: never inside the pytest process). Checkpoints are written once."""
    import os
    import signal
    import subprocess
    import sys

    config = write_config(tmp_path)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "mergevq", "train", str(config), "trainer.devices=2", "trainer.strategy=ddp",
           "trainer.max_steps=2", "trainer.max_epochs=-1", "--run-dir", str(run_dir)]
    env = {**os.environ, "MERGEVQ_CACHE": str(cache_dir)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("2-process DDP training did not finish within 150 s")
    assert proc.returncode == 0, out[-3000:]
    assert out.count("run directory:") == 1  # only rank 0 reports
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts and not list((run_dir / "checkpoints").glob(".*.tmp"))
    ckpt = load_checkpoint_file(ckpts[-1])
    assert ckpt["mergevq_train_state"]["train_steps"] == 2
    assert "ema_state_dict" in ckpt
