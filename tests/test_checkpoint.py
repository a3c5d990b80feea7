"""Checkpoints (issue #4): atomic writes, embedded config, cadence and retention, exact resume with
``--resume auto``, and truncated files being skipped."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from _training import STEPS_PER_EPOCH, write_config

from mergevq.config import from_yaml
from mergevq.errors import ConfigError, TrainingError
from mergevq.tokenizer.merge import KSampler
from mergevq.training import checkpoint as ckpt_mod
from mergevq.training.checkpoint import (
    AtomicCheckpointIO,
    find_resume_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    resolve_resume,
)
from mergevq.training.run import train


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def k_calls(monkeypatch):
    """Every (step, K) the training module draws, in order."""
    calls: list[tuple[int, int]] = []
    original = KSampler.sample

    def sample(self, step):
        k = original(self, step)
        calls.append((step, k))
        return k

    monkeypatch.setattr(KSampler, "sample", sample)
    return calls


def _steps(calls):
    """One (step, K) per training step (micro-batches of one step share it)."""
    return list(dict.fromkeys(calls))


def _lrs(ckpt):
    return [group["lr"] for opt in ckpt["optimizer_states"] for group in opt["param_groups"]]


def _assert_same_state(a, b, *, exact_weights: bool):
    assert a["mergevq_train_state"] == b["mergevq_train_state"]
    assert a["epoch"] == b["epoch"]
    assert _lrs(a) == pytest.approx(_lrs(b))
    assert [s["last_epoch"] for s in a["lr_schedulers"]] == [s["last_epoch"] for s in b["lr_schedulers"]]
    assert a["loops"]["fit_loop"]["epoch_progress"] == b["loops"]["fit_loop"]["epoch_progress"]
    if exact_weights:
        for key in ("state_dict", "ema_state_dict"):
            for name, value in a[key].items():
                torch.testing.assert_close(value, b[key][name], rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
        opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
        for index in opt_a:
            torch.testing.assert_close(opt_a[index]["exp_avg"], opt_b[index]["exp_avg"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("stop_after", [STEPS_PER_EPOCH, 2], ids=["epoch-end", "mid-epoch"])
def test_resume_auto_continues_like_an_uninterrupted_run(tmp_path, k_calls, stop_after):
    total = 2 * STEPS_PER_EPOCH  # two epochs; the LR drops after the first
    config = write_config(tmp_path, trainer={"max_epochs": -1, "checkpoint_every_n_steps": 0})
    full = train([config], [f"trainer.max_steps={total}"], run_dir=tmp_path / "full")
    full_k = _steps(k_calls)
    k_calls.clear()

    part = tmp_path / "part"
    train([config], [f"trainer.max_steps={stop_after}"], run_dir=part)
    resumed = train([config], [f"trainer.max_steps={total}"], run_dir=part, resume="auto")
    part_k = _steps(k_calls)

    assert [s for s, _ in full_k] == list(range(total))
    assert part_k == full_k  # the same K for every step, nothing repeated or skipped
    a, b = load_checkpoint_file(full.last_checkpoint), load_checkpoint_file(resumed.last_checkpoint)
    assert b["mergevq_train_state"]["train_steps"] == total
    assert _lrs(b) == pytest.approx([1e-5, 1e-5])  # dropped x0.1 after epoch 1
    # Data order, position in the epoch, per-sample flips and random draws replay exactly, from an
    # end-of-epoch checkpoint as from a mid-epoch one.
    _assert_same_state(a, b, exact_weights=True)


def test_checkpoint_contents_cadence_and_retention(tmp_path):
    config = write_config(tmp_path, trainer={"max_epochs": 2, "checkpoint_every_n_steps": 1, "keep_checkpoints": 2})
    result = train([config], run_dir=tmp_path / "run")
    names = [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")]
    # steps 4, 5 (periodic) and 6 (epoch end, where the periodic one at the last batch is folded in)
    assert names == ["step000000005-epoch0001.ckpt", "step000000006-epoch0001-end.ckpt"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no temp files left
    ckpt = load_checkpoint_file(result.last_checkpoint)  # weights_only=True
    cfg = from_yaml(ckpt["mergevq_config"])
    assert cfg.model.params.tokenizer.params.preset == "tiny-GR"
    assert set(ckpt["ema_state_dict"]) == {k[len("tokenizer."):] for k in ckpt["state_dict"] if k.startswith("tokenizer.")}
    prefixes = {k.split(".")[0] for k in ckpt["state_dict"]}
    assert prefixes == {"tokenizer", "discriminator", "lecam"}  # LPIPS / teacher never saved
    assert "torch" in ckpt["mergevq_rng_state"]


def test_truncated_checkpoint_is_skipped_by_resume_auto(tmp_path, caplog):
    config = write_config(tmp_path, trainer={"max_epochs": 1})
    run_dir = tmp_path / "run"
    result = train([config], run_dir=run_dir)
    good = result.last_checkpoint
    assert is_complete_checkpoint(good)
    newer = good.parent / "step000000099-epoch0009-end.ckpt"
    data = good.read_bytes()
    newer.write_bytes(data[: len(data) // 2])  # cut off mid-write (e.g. a copy interrupted)
    assert not is_complete_checkpoint(newer)
    with caplog.at_level(logging.WARNING, logger="mergevq.training.checkpoint"):
        assert find_resume_checkpoint(run_dir) == good
    assert any("incomplete checkpoint" in r.getMessage() for r in caplog.records)
    # and training resumes from the good one
    resumed = train([config], ["trainer.max_epochs=2"], run_dir=run_dir, resume="auto")
    assert load_checkpoint_file(resumed.last_checkpoint)["mergevq_train_state"]["train_steps"] == 2 * STEPS_PER_EPOCH
    # an explicit path must exist and be complete
    with pytest.raises(TrainingError, match="incomplete"):
        resolve_resume(newer, run_dir)
    with pytest.raises(ConfigError, match="not found"):
        resolve_resume(tmp_path / "missing.ckpt", run_dir)
    assert resolve_resume("auto", tmp_path / "empty_run") is None  # nothing yet: a fresh start
    assert resolve_resume(None, run_dir) is None


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    io = AtomicCheckpointIO(config_yaml="a: 1\n")
    target = tmp_path / "x.ckpt"
    io.save_checkpoint({"w": torch.ones(3)}, target)
    assert load_checkpoint_file(target)["mergevq_config"] == "a: 1\n"

    def broken_save(obj, handle):
        handle.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(TrainingError, match="cannot write checkpoint .*x.ckpt: disk full; no earlier checkpoint") as err:
        io.save_checkpoint({"w": torch.zeros(3)}, target)
    assert "\n" not in str(err.value)
    assert torch.equal(load_checkpoint_file(target)["w"], torch.ones(3))  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["x.ckpt"]


def test_missing_checkpoint_load_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        AtomicCheckpointIO().load_checkpoint(tmp_path / "none.ckpt")
    shutil.rmtree(tmp_path, ignore_errors=True)
