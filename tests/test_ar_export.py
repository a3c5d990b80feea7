"""MergeAR export / load (issue #6 item 5): ``export_mergear`` writes a ``MergeAR.from_pretrained``
folder from a run, ``load_mergear`` reads an export folder, a run directory or a checkpoint and all
three give the same model (EMA weights when the run kept an EMA, in eval mode); ``mergevq export``
picks the MergeAR exporter from the run's model target; bad sources are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ar_training import write_codes, write_config

from mergevq.ar.model import MergeAR
from mergevq.errors import ConfigError, TrainingError
from mergevq.training.ar_export import export_mergear, load_mergear, mergear_from_checkpoint
from mergevq.training.checkpoint import AtomicCheckpointIO, load_checkpoint_file
from mergevq.training.run import train


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """One 3-step run with an EMA (decay 0.5: clearly different from the raw weights), validated on
    the training codes after every epoch."""
    root = tmp_path_factory.mktemp("ar_export")
    codes = write_codes(root / "codes", count=8)
    validation = {"target": "mergevq.data.codes.CodesDataset", "params": {"root": str(codes)}}
    config = write_config(root, codes=codes, trainer={"max_steps": 3, "val_every_n_epochs": 1},
                          params={"ema_decay": 0.5, "schedule": {"warmup_steps": 1}},
                          data={"validation": validation})
    return train([config], run_dir=root / "run")


@pytest.fixture(scope="module")
def run(result) -> Path:
    return result.run_dir


def test_validation_logs_raw_and_ema_losses(result):
    m = result.metrics
    assert {"val/loss", "val/loss_sub0", "val/loss_sub1", "val_ema/loss", "val_ema/loss_sub1"} <= set(m)
    assert m["val/loss"] == pytest.approx(m["val/loss_sub0"] + m["val/loss_sub1"], rel=1e-5)
    assert m["val/loss"] != m["val_ema/loss"]  # two different sets of weights


def _batch(model: MergeAR) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    length = model.config.num_tokens
    return (torch.randint(0, 2**model.config.code_dim, (2, length), generator=g),
            torch.tensor([1, 5]), torch.tensor([length, length // 2]))


def _same_weights(a: MergeAR, b: MergeAR) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_export_and_every_source_load_the_same_ema_model(run, tmp_path):
    out = export_mergear(run, out=tmp_path / "export")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    from_export = load_mergear(out)
    from_run = load_mergear(run)
    from mergevq.training.checkpoint import find_resume_checkpoint

    checkpoint = find_resume_checkpoint(run)
    from_ckpt = load_mergear(checkpoint)
    for model in (from_export, from_run, from_ckpt):
        assert isinstance(model, MergeAR) and not model.training
    assert _same_weights(from_export, from_run) and _same_weights(from_export, from_ckpt)
    assert from_export.config == from_ckpt.config
    # the weights are the EMA's, not the raw ones
    state = load_checkpoint_file(checkpoint)
    ema = state["ema_state_dict"]
    for key, value in from_export.state_dict().items():
        assert torch.equal(value, ema[key]), key
    raw = mergear_from_checkpoint(checkpoint, raw=True)
    assert not _same_weights(raw, from_export)
    for key, value in raw.state_dict().items():
        assert torch.equal(value, state["state_dict"][f"model.{key}"]), key
    # round trip: the exported model computes what the checkpoint's model computes
    with torch.no_grad():
        a, b = from_export(*_batch(from_export)), from_ckpt(*_batch(from_ckpt))
    for la, lb in zip(a.logits, b.logits):
        assert torch.equal(la, lb)


def test_default_export_folders(run):
    assert export_mergear(run) == run / "mergear"
    assert export_mergear(run, raw=True) == run / "mergear-raw"
    assert not _same_weights(load_mergear(run / "mergear"), load_mergear(run / "mergear-raw"))


def test_cli_export_picks_mergear(run, tmp_path, capsys):
    from mergevq.cli import main

    assert main(["export", str(run), "--out", str(tmp_path / "cli")]) == 0
    assert "(MergeAR)" in capsys.readouterr().out
    assert _same_weights(MergeAR.from_pretrained(tmp_path / "cli"), load_mergear(run))


def test_bad_sources_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="MergeAR not found"):
        load_mergear(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        load_mergear(tmp_path / "empty")
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(b"PK\x03\x04 not a whole file")
    with pytest.raises(TrainingError, match="incomplete"):
        load_mergear(truncated)
    # a checkpoint of another kind of run (no model.params.model in its config)
    other = tmp_path / "other.ckpt"
    AtomicCheckpointIO(config_yaml="model: {target: x.Y, params: {tokenizer: 1}}\n").save_checkpoint(
        {"state_dict": {}}, other)
    with pytest.raises(TrainingError, match="not a MergeAR training run") as err:
        load_mergear(other)
    assert "\n" not in str(err.value)
