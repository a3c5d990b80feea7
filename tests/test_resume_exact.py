"""No lost work in training (issue #11): exact resume after SIGKILL at any point (mid-epoch, inside a
checkpoint write, at a random time), the same with 2 processes, the run-folder rules (a fresh run into
a folder with checkpoints is refused; --overwrite moves the old run aside; --resume auto continues),
rotation that keeps the current run's newest checkpoints, stale temp files and failed writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _training import STEPS_PER_EPOCH, write_config

from mergevq.cli import main
from mergevq.data.samplers import KeyedResumableSampler, ResumableSampler, SeededSamples
from mergevq.errors import ConfigError
from mergevq.training import checkpoint as ckpt_mod
from mergevq.training.checkpoint import list_checkpoints, load_checkpoint_file
from mergevq.training.run import train

pytestmark = pytest.mark.usefixtures("private_cache")

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("_kill_driver.py")
TOTAL = 4 * STEPS_PER_EPOCH - 1  # 11 steps: ends mid-epoch in the fourth epoch


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint_file(path)
    return {**{f"raw.{k}": v for k, v in state["state_dict"].items()},
            **{f"ema.{k}": v for k, v in state["ema_state_dict"].items()}}


def _per_step(log: Path) -> dict[int, tuple]:
    """The last record of every step (a replayed step after a resume overwrites the killed one)."""
    out: dict[int, tuple] = {}
    for line in log.read_text().splitlines():
        record = json.loads(line)
        out[record["step"]] = (record["k"], tuple(record["lr"]))
    return out


def _launch(config: Path, run_dir: Path, log: Path, kill: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, str(DRIVER), str(log), kill, "--", "train", str(config), "--run-dir", str(run_dir),
           "--resume", "auto", f"trainer.max_steps={TOTAL}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"training did not finish within {timeout:.0f} s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_auto_equals_an_uninterrupted_run(tmp_path):
    config = write_config(tmp_path, trainer={"max_epochs": -1, "checkpoint_every_n_steps": 1, "keep_checkpoints": 2})
    full_log, part_log = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    code, out = _finish(_launch(config, tmp_path / "full", full_log, "none"))
    assert code == 0, out[-3000:]
    full = tmp_path / "full" / "checkpoints"

    run = tmp_path / "part"
    rng = random.Random(11)
    # Each kill counts from where that process resumed: mid-epoch after its 2nd step (whose checkpoint
    # is never written); at a random moment from outside, once it trains; inside its 2nd checkpoint
    # write; after its 1st step.
    kills = ["step:2", "outside", "write:2", "step:1"]
    for kill in kills:
        lines = len(part_log.read_text().splitlines()) if part_log.exists() else 0
        proc = _launch(config, run, part_log, "none" if kill == "outside" else kill)
        if kill == "outside":  # once this process trains (a step logged), at a random moment
            deadline = time.monotonic() + 120
            while len(part_log.read_text().splitlines()) == lines and proc.poll() is None:
                assert time.monotonic() < deadline, "the training process made no step"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
        code, out = _finish(proc)
        assert code == -signal.SIGKILL, out[-3000:]
    code, out = _finish(_launch(config, run, part_log, "none"))
    assert code == 0, out[-3000:]

    a, b = _weights(list_checkpoints(full)[-1]), _weights(list_checkpoints(run / "checkpoints")[-1])
    assert list_checkpoints(full)[-1].name == list_checkpoints(run / "checkpoints")[-1].name
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=1e-6, msg=name)
    full_steps, part_steps = _per_step(full_log), _per_step(part_log)
    assert sorted(full_steps) == list(range(1, TOTAL + 1))
    assert part_steps == full_steps  # the same K and LR at every step, none skipped
    leftovers = [p.name for p in run.rglob("*.tmp")]
    assert leftovers == []  # the temp file of the killed write was removed at the next start
    assert len(list_checkpoints(run / "checkpoints")) == 2  # rotation kept the newest 2


@pytest.mark.slow
@pytest.mark.distributed
def test_mid_epoch_resume_with_two_processes_equals_an_uninterrupted_run(tmp_path):
    two = ["trainer.devices=2", "trainer.strategy=ddp_spawn", "model.params.accumulate_grad_batches=1"]
    config = write_config(tmp_path, trainer={"max_epochs": -1, "checkpoint_every_n_steps": 0})
    # 20 crops, 2 ranks x batch 4 -> 2 steps per epoch; stop after step 3 = mid-epoch 2
    full = train([config], [*two, "trainer.max_steps=4"], run_dir=tmp_path / "full")
    train([config], [*two, "trainer.max_steps=3"], run_dir=tmp_path / "part")
    resumed = train([config], [*two, "trainer.max_steps=4"], run_dir=tmp_path / "part", resume="auto")
    a, b = _weights(full.last_checkpoint), _weights(resumed.last_checkpoint)
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=1e-6, msg=name)


def test_sampler_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    a, b = ResumableSampler(length=10, seed=3), ResumableSampler(length=10, seed=3)
    b.set_epoch(1)
    b.set_epoch(0)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b)
    resumed = ResumableSampler(length=10, seed=3)
    resumed.resume(epoch=1, consumed=4)
    assert list(resumed) == list(a)[4:] and len(resumed) == 10  # len stays the whole epoch
    resumed.set_epoch(2)
    assert len(list(resumed)) == 10  # later epochs are whole
    # ranks: disjoint shares of the padded permutation, together every index
    ranks = [ResumableSampler(length=9, seed=0, num_replicas=2, rank=r) for r in range(2)]
    shares = [list(s) for s in ranks]
    assert [len(s) for s in shares] == [5, 5] and set(shares[0]) | set(shares[1]) == set(range(9))
    keyed = KeyedResumableSampler(length=4, seed=0)
    keyed.set_epoch(7)
    assert [k for k, _ in keyed] == [7] * 4


def test_a_restored_data_module_skips_in_every_loader_it_builds(tmp_path):
    """Lightning may build the training loader more than once before the first step (MergeAR's
    estimated_stepping_batches does): each must continue the resumed epoch, not only the first."""
    from _ar_training import write_codes

    from mergevq.data.codes import CodesDataModule, CodesDataset

    data = CodesDataModule(train=CodesDataset(root=str(write_codes(tmp_path / "codes", count=8))), batch_size=2)
    data.load_state_dict({"train_order": {"epoch": 1, "batches": 3}})
    first, second = data.train_dataloader(), data.train_dataloader()
    full = ResumableSampler(length=8, seed=0)
    full.set_epoch(1)
    for loader in (first, second):
        loader.sampler.set_epoch(1)
        assert list(loader.sampler) == list(full)[6:] and len(loader) == 4
        loader.sampler.set_epoch(2)
        assert len(list(loader.sampler)) == 8


def test_augmentations_do_not_depend_on_workers_or_history():
    from mergevq.data.demo import DemoImages

    data = DemoImages(split="train", resolution=16, train_per_photo=2, val_per_photo=1, flip=True)
    seeded = SeededSamples(dataset=data, seed=5)
    first = torch.stack([seeded[(0, i)]["image"] for i in range(len(data))])
    torch.rand(100)  # whatever the global RNG did in between
    again = torch.stack([seeded[(0, i)]["image"] for i in reversed(range(len(data)))]).flip(0)
    assert torch.equal(first, again)
    flipped = [not torch.equal(seeded[(e, 0)]["image"], seeded[(0, 0)]["image"]) for e in range(1, 9)]
    assert any(flipped) and not all(flipped)  # epochs draw their own flips


def test_image_batches_are_the_same_with_0_or_2_workers(tmp_path):
    from mergevq.config import load_with_origins

    config = write_config(tmp_path)
    batches = []
    for workers in (0, 2):
        loaded = load_with_origins([config], [f"data.params.num_workers={workers}",
                                              "+data.params.persistent_workers=false"])
        loader = loaded.instantiate("data").train_dataloader()
        batches.append(torch.cat([b["image"] for b in loader]))
    assert torch.equal(*batches)


def _run(args: list[str], capsys) -> tuple[int, list[str]]:
    code = main(args)
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_fresh_run_into_a_folder_with_checkpoints_needs_resume_or_overwrite(tmp_path, capsys):
    config = write_config(tmp_path, trainer={"max_epochs": 1, "keep_checkpoints": 2})
    run = tmp_path / "run"
    assert main(["train", str(config), "--run-dir", str(run)]) == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    capsys.readouterr()

    code, err = _run(["train", str(config), "--run-dir", str(run)], capsys)
    assert code == 2 and len(err) == 1
    assert "already holds checkpoints" in err[0] and "--resume auto" in err[0] and "--overwrite" in err[0]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # untouched

    code, err = _run(["train", str(config), "--run-dir", str(run), "--overwrite", "--resume", "auto"], capsys)
    assert code == 2 and len(err) == 1

    # --resume auto continues (here: one more epoch)
    assert main(["train", str(config), "--run-dir", str(run), "--resume", "auto", "trainer.max_epochs=2"]) == 0
    steps = [load_checkpoint_file(p)["mergevq_train_state"]["train_steps"]
             for p in list_checkpoints(run / "checkpoints")]
    assert steps[-1] == 2 * STEPS_PER_EPOCH

    # --overwrite: the old run is renamed aside, complete; the new one starts from step 0
    capsys.readouterr()
    assert main(["train", str(config), "--run-dir", str(run), "--overwrite"]) == 0
    out = capsys.readouterr().out
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and f"moved to {aside[0]}" in out
    assert [load_checkpoint_file(p)["mergevq_train_state"]["train_steps"]
            for p in list_checkpoints(aside[0] / "checkpoints")][-1] == 2 * STEPS_PER_EPOCH
    assert [load_checkpoint_file(p)["mergevq_train_state"]["train_steps"]
            for p in list_checkpoints(run / "checkpoints")][-1] == STEPS_PER_EPOCH


def test_rotation_keeps_the_current_runs_newest_and_never_deletes_a_later_file(tmp_path):
    config = write_config(tmp_path, trainer={"max_epochs": 1, "checkpoint_every_n_steps": 1, "keep_checkpoints": 2})
    run = tmp_path / "run"
    first = train([config], ["trainer.max_steps=1"], run_dir=run)
    stranger = run / "checkpoints" / "step000000099-epoch0009.ckpt"
    stranger.write_bytes(b"not ours")  # incomplete: --resume auto skips it
    result = train([config], ["trainer.max_epochs=2"], run_dir=run, resume="auto")
    names = [p.name for p in list_checkpoints(run / "checkpoints")]
    assert names == ["step000000005-epoch0001.ckpt", "step000000006-epoch0001-end.ckpt", stranger.name]
    assert result.last_checkpoint.name == "step000000006-epoch0001-end.ckpt"  # not the stranger
    assert first.last_checkpoint.name == "step000000001-epoch0000.ckpt"


def test_resume_from_an_older_checkpoint_into_its_folder_is_refused(tmp_path):
    config = write_config(tmp_path, trainer={"max_epochs": 1, "checkpoint_every_n_steps": 1, "keep_checkpoints": -1})
    run = tmp_path / "run"
    train([config], run_dir=run)
    older = list_checkpoints(run / "checkpoints")[0]
    with pytest.raises(ConfigError, match="holds newer checkpoints"):
        train([config], run_dir=run, resume=older)


def test_stale_temp_files_are_removed_and_a_failed_write_is_one_line(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, trainer={"max_epochs": 1, "checkpoint_every_n_steps": 1})
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / ".step000000002-epoch0000.ckpt.k2j4h1x9.tmp"
    stale.write_bytes(b"x" * 1000)
    keep = run / "checkpoints" / "notes.tmp"  # not an atomic-write temp file: left alone
    keep.write_text("mine")

    save = ckpt_mod.torch.save
    calls = {"n": 0}

    def full_disk(obj, handle, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            handle.write(b"PK partial")
            raise OSError(28, "No space left on device")
        return save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    code, err = _run(["train", str(config), "--run-dir", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "cannot write checkpoint" in err[0] and "No space left on device" in err[0]
    assert "step000000001-epoch0000.ckpt is intact" in err[0]
    assert not stale.exists() and keep.read_text() == "mine"
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")] == ["notes.tmp"]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step000000001-epoch0000.ckpt"]
    assert load_checkpoint_file(run / "checkpoints" / "step000000001-epoch0000.ckpt")


def test_launch_scripts_continue_a_requeued_job(tmp_path):
    env = {**os.environ, "MERGEVQ_DRY_RUN": "1", "NNODES": "1"}
    for script, args in [("scripts/train_tokenizer/run_256_GR_d64_single.sh", []),
                         ("scripts/train_tokenizer/run_256_R_multi.sh", ["h", "29500", "0"]),
                         ("scripts/train_autoregressive/run.sh", ["h", "29500", "0", "codes.root=c"])]:
        line = subprocess.run(["bash", str(ROOT / script), *args], env=env, capture_output=True, text=True,
                              check=True, timeout=30).stdout.splitlines()[0]
        assert line.rstrip().endswith("--resume auto"), (script, line)
        line = subprocess.run(["bash", str(ROOT / script), *args, "--overwrite"], env=env, capture_output=True,
                              text=True, check=True, timeout=30).stdout.splitlines()[0]
        assert "--resume" not in line and "--overwrite" in line


def test_codes_loader_mid_epoch_resume_equals_an_uninterrupted_run(tmp_path):
    from _ar_training import write_codes
    from _ar_training import write_config as write_ar_config

    codes = write_codes(tmp_path / "codes", count=8)
    # batch 2 of 8 sequences: 4 steps per epoch; stop after step 3 (mid-epoch), then continue to 6
    config = write_ar_config(tmp_path, codes=codes, data={"batch_size": 2},
                             trainer={"max_steps": 6, "checkpoint_every_n_steps": 0},
                             changes={"class_dropout": 0.1, "token_dropout": 0.1},
                             params={"schedule": {"warmup_steps": 2, "decay": "cosine", "total_steps": 6,
                                                  "min_lr_ratio": 0.1}})
    full = train([config], run_dir=tmp_path / "full")
    train([config], ["trainer.max_steps=3"], run_dir=tmp_path / "part")
    resumed = train([config], run_dir=tmp_path / "part", resume="auto")
    a, b = load_checkpoint_file(full.last_checkpoint), load_checkpoint_file(resumed.last_checkpoint)
    assert a["global_step"] == b["global_step"] == 6
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-6, msg=name)
