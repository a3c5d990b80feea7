"""`mergevq experiment k_sweep` and `mergevq experiment recovery` end to end in their --quick form, the
learned recovery's assignment accuracy of the tokenizer evaluation (KMetrics.recovery_accuracy), the
monotone-trend test of k_sweep and the training schedule of recovery."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from mergevq.cli import main
from mergevq.experiments.k_sweep import trend
from mergevq.experiments.recovery import Settings as RecoverySettings
from mergevq.experiments.recovery import checkpoints_at, schedule
from mergevq.inference.tokenizer_eval import ImageTensorDataset, evaluate_tokenizer
from mergevq.tokenizer.model import MergeVQ, build_config

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models; restores the thread count


def _images(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g) * 2 - 1, size=(32, 32), mode="bicubic").clamp(-1, 1)


def _evaluate(model: MergeVQ, images: torch.Tensor, ks: tuple[int, ...]):
    return evaluate_tokenizer(model, ImageTensorDataset(images), num_keep=ks, inception=None, lpips=None,
                              batch_size=2, device=CPU)


@torch.no_grad()
def test_recovery_accuracy_is_the_mean_per_image_fraction_of_true_assignments():
    torch.manual_seed(0)
    model = MergeVQ(config=build_config(preset="tiny-R")).eval()  # L = 64, random weights
    images = _images(5)
    by_k = {m.num_keep: m for m in _evaluate(model, images, (64, 9)).by_k}
    assert by_k[64].recovery_accuracy == 1.0  # K = L: every position is its own group, nothing to predict
    enc = model.encode(images, 9)
    expected = (model.recovery.predict(enc.codes) == enc.assign).float().mean(dim=1).mean()
    assert by_k[9].recovery_accuracy == pytest.approx(float(expected), abs=1e-6)

    # hand-made: a recovery that sends every position to the first kept token is right exactly where
    # the true assignment is 0 (and its PSNR is the PSNR of that decoding)
    model.predict_assign = lambda codes: torch.zeros(codes.shape[0], model.num_tokens, dtype=torch.long)
    metrics = _evaluate(model, images, (9,)).by_k[0]
    assert metrics.recovery_accuracy == pytest.approx(float((enc.assign == 0).float().mean()), abs=1e-6)
    assert 0 < metrics.recovery_accuracy < 1


@torch.no_grad()
def test_recovery_accuracy_is_none_without_a_learned_recovery():
    model = MergeVQ(config=build_config(preset="tiny-R", changes={"recovery_depth": 0})).eval()
    metrics = _evaluate(model, _images(2), (16,)).by_k[0]
    assert metrics.recovery_accuracy is None and metrics.psnr_learned_recovery is None


def test_trend_counts_steps_against_the_expected_direction():
    assert trend("psnr", [22.0, 21.5, 21.0], higher_is_better=True, tolerance=0.0).monotone
    rising = trend("psnr", [22.0, 21.0, 21.5, 20.0], higher_is_better=True, tolerance=0.0)
    assert (rising.violations, rising.worst_step) == (1, 0.5)
    assert trend("psnr", [22.0, 21.0, 21.01, 20.0], higher_is_better=True, tolerance=0.02).monotone  # noise
    assert trend("rfid", [10.0, 12.0, 15.0], higher_is_better=False, tolerance=0.0).monotone
    assert trend("rfid", [10.0, 9.0, 15.0], higher_is_better=False, tolerance=0.0).violations == 1


def test_recovery_schedule_moves_the_lr_drop_to_the_same_fraction_of_the_run():
    settings = RecoverySettings(tokenizer_overrides=[], train_steps=2500, eval_steps=[125, 250, 500, 1000],
                                lr_drop_at=0.93, images=0, batch_size=100)
    plan = schedule(settings, train_images=2000, batch_size=32)
    assert (plan.steps_per_epoch, plan.drop_epoch, plan.drop_step) == (62, 38, 2356)
    assert "trainer.checkpoint_every_n_steps=125" in plan.overrides
    assert "model.params.lr_drop_epochs=[38]" in plan.overrides and "trainer.keep_checkpoints=-1" in plan.overrides
    # the demo recipe itself: 1,000 steps -> epoch 15, as configs/demo/tokenizer.yaml has it
    recipe = schedule(RecoverySettings(**{**settings.__dict__, "train_steps": 1000, "eval_steps": [1000]}),
                      train_images=2000, batch_size=32)
    assert recipe.drop_epoch == 15


def test_checkpoints_at_prefers_the_epoch_end_file_of_a_step(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("step000000062-epoch0000-end.ckpt", "step000000124-epoch0001.ckpt", "step000000124-epoch0001-end.ckpt",
                 "step000000200-epoch0003.ckpt"):
        (folder / name).write_bytes(b"")
    found = checkpoints_at(tmp_path, [62, 124, 300])
    assert {k: v.name for k, v in found.items()} == {62: "step000000062-epoch0000-end.ckpt",
                                                     124: "step000000124-epoch0001-end.ckpt"}


def _report(out) -> dict:
    assert (out / "report.md").stat().st_size > 100
    return json.loads((out / "report.json").read_text())


def test_k_sweep_quick_end_to_end(tmp_path):
    out = tmp_path / "k_sweep"
    assert main(["experiment", "k_sweep", "--quick", "--out", str(out), "--threads", "1"]) == 0
    report = _report(out)
    assert (out / "k_sweep.png").stat().st_size > 1000
    assert "![k_sweep](k_sweep.png)" in (out / "report.md").read_text()
    rows = report["numbers"]["by_k"]
    assert [r["num_keep"] for r in rows] == [64, 36, 16]
    for r in rows:
        assert 0 < r["psnr"] < 60 and 0 < r["psnr_learned_recovery"] < 60 and -1 <= r["ssim"] <= 1
        assert 0 <= r["recovery_accuracy"] <= 1 and r["rfid"] is None  # quick: no rFID
        assert r["lpips"] is None or math.isfinite(r["lpips"])
    assert rows[0]["recovery_accuracy"] == 1.0
    assert report["claims"] and all(isinstance(c["held"], bool) for c in report["claims"])


def test_recovery_quick_end_to_end(tmp_path):
    out = tmp_path / "recovery"
    assert main(["experiment", "recovery", "--quick", "--out", str(out), "--threads", "1"]) == 0
    report = _report(out)
    assert (out / "recovery.png").stat().st_size > 1000
    points = report["numbers"]["points"]
    assert sorted({p["step"] for p in points}) == [2, 4] and sorted({p["num_keep"] for p in points}) == [25, 36]
    for p in points:
        assert 0 <= p["accuracy"] <= 1 and 0 < p["psnr_true"] < 60 and 0 < p["psnr_learned"] < 60
        assert math.isclose(p["gap"], p["psnr_true"] - p["psnr_learned"], abs_tol=1e-9)
    assert len(report["claims"]) == 2 and all(isinstance(c["held"], bool) for c in report["claims"])
    # only the evaluated checkpoints stay
    assert sorted(p.name for p in (out / "tokenizer_run" / "checkpoints").glob("*.ckpt")) == [
        "step000000002-epoch0000.ckpt", "step000000004-epoch0000.ckpt"]
