"""The generator EMA and ``mergevq export`` (issue #4): the EMA follows the decay formula, differs
from the raw weights after training, and is what ``export`` writes by default."""

from __future__ import annotations

import pytest
import torch
from _training import write_config
from torch import nn

from mergevq.errors import ConfigError
from mergevq.tokenizer.model import MergeVQ
from mergevq.training.callbacks import EMACallback
from mergevq.training.checkpoint import load_checkpoint_file
from mergevq.training.export import export_tokenizer
from mergevq.training.run import train


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_run")
    mp = pytest.MonkeyPatch()
    mp.setenv("MERGEVQ_CACHE", str(folder / "cache"))
    try:
        config = write_config(folder, trainer={"max_epochs": -1, "max_steps": 3}, params={"ema_decay": 0.5})
        result = train([config], run_dir=folder / "run")
    finally:
        mp.undo()
    return result


def test_ema_update_follows_the_decay_formula():
    model = nn.Linear(3, 2)
    model.register_buffer("counter", torch.zeros(()))
    ema = EMACallback(decay=0.9)
    ema.start(model)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model.counter.fill_(7)
    ema.update(model)
    for e, s, p in zip(ema.ema.parameters(), start, model.parameters()):
        torch.testing.assert_close(e, 0.9 * s + 0.1 * p)
    assert ema.ema.counter.item() == 7  # buffers are copied
    assert all(not p.requires_grad for p in ema.ema.parameters())
    with pytest.raises(ConfigError):
        EMACallback(decay=1.0)


def test_ema_differs_from_raw_after_training(trained_run):
    ckpt = load_checkpoint_file(trained_run.last_checkpoint)
    raw = {k[len("tokenizer."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("tokenizer.")}
    ema = ckpt["ema_state_dict"]
    assert set(raw) == set(ema)
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if raw[k].is_floating_point())
    assert all(v.dtype == torch.float32 for v in ema.values() if v.is_floating_point())


def test_export_writes_ema_by_default_and_loads(trained_run, tmp_path):
    ckpt = load_checkpoint_file(trained_run.last_checkpoint)
    result = export_tokenizer(trained_run.run_dir, out=tmp_path / "ema")
    assert result.weights == "ema" and result.checkpoint == trained_run.last_checkpoint
    model = MergeVQ.from_pretrained(tmp_path / "ema")
    for name, value in model.state_dict().items():
        assert torch.equal(value, ckpt["ema_state_dict"][name]), name
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        encoded = model.encode(images, model.config.num_keep)
        assert model.decode(encoded.indices).shape == images.shape  # learned recovery path

    export_tokenizer(trained_run.run_dir, out=tmp_path / "raw", raw=True)
    raw = MergeVQ.from_pretrained(tmp_path / "raw")
    for name, value in raw.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"tokenizer.{name}"]), name


def test_export_cli(trained_run, tmp_path, capsys):
    from mergevq.cli import main

    assert main(["export", str(trained_run.run_dir), "--out", str(tmp_path / "out")]) == 0
    assert "ema weights" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["export", str(trained_run.run_dir), "--checkpoint", str(trained_run.last_checkpoint), "--raw",
                 "--out", str(tmp_path / "raw")]) == 0
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_load_tokenizer_accepts_run_dir_checkpoint_and_export(trained_run, tmp_path):
    from mergevq.training.export import load_tokenizer

    export_tokenizer(trained_run.run_dir, out=tmp_path / "exported")
    ema = load_checkpoint_file(trained_run.last_checkpoint)["ema_state_dict"]
    for source in (trained_run.run_dir, trained_run.last_checkpoint, tmp_path / "exported"):
        model = load_tokenizer(source)
        assert not model.training
        for name, value in model.state_dict().items():
            assert torch.equal(value, ema[name]), (source, name)
    with pytest.raises(ConfigError, match="not found"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither an exported tokenizer"):
        load_tokenizer(tmp_path / "empty")
