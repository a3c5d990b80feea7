"""`mergevq demo`: demo data through the config + DataModule path (picture + JSON), then a SHORT
Stage 1 run (a handful of training steps) and its reconstruction grid, merge groups and metrics."""

import json

import numpy as np
import pytest

from mergevq.cli import main
from mergevq.visual import grid


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "cache"))


def test_demo_data_only_writes_picture_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--data-only", "demo_data.train_per_photo=10",
                 "demo_data.val_per_photo=4", "demo_data.resolution=16"]) == 0
    metrics = json.loads((out / "demo_data.json").read_text())
    assert metrics["resolution"] == 16 and len(metrics["classes"]) == 10
    assert metrics["validation"]["images"] == 40 and metrics["validation"]["skipped"] == 0
    assert metrics["train"]["images"] == 96  # 100 crops, batch 32, drop_last
    assert (out / "demo_data.png").stat().st_size > 0
    assert not (out / "tokenizer_run").exists()
    printed = capsys.readouterr().out
    assert "not yet in the demo" in printed and str(out / "demo_data.png") in printed


def test_demo_stage1_short_run_writes_outputs(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "demo_data.train_per_photo=10", "demo_data.val_per_photo=2",
                 "trainer.max_steps=3", "trainer.progress_bar=false"]) == 0
    for name in ("demo_data.png", "demo_data.json", "reconstructions.png", "merge_groups.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tokenizer_run" / "checkpoints").glob("*.ckpt"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_images"] == 20 and metrics["tokenizer"]["weights"] == "EMA"
    ks = [int(k) for k in metrics["by_k"]]
    tok = metrics["tokenizer"]
    assert ks == sorted({tok["num_tokens"], tok["nominal_k"], tok["smallest_k"]}, reverse=True) and len(ks) == 3
    for entry in metrics["by_k"].values():
        assert np.isfinite(entry["psnr_mean"]) and 0 < entry["codebook_usage"] <= 1
        assert 1 <= entry["unique_codes"] <= 20 * int(ks[0])
    # reconstruction grid: a label strip, then 10 columns (one crop per photo) x (originals + 3 K rows)
    width, height = Image.open(out / "reconstructions.png").size
    assert height == 4 * (32 * 4 + 2) + 2 and width == 72 + 10 * (32 * 4 + 2) + 2
    printed = capsys.readouterr().out
    for name in ("reconstructions.png", "merge_groups.png", "metrics.json"):
        assert str(out / name) in printed
    assert "PSNR" in printed


def test_demo_bad_override_is_one_line_error(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "demo_data.resolutoin=16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo_data.resolutoin" in err and "resolution" in err


def test_grid_places_images_row_by_row():
    images = np.stack([np.full((2, 2, 3), v, np.uint8) for v in (10, 20, 30)])
    out = grid(images, ncol=2, pad=1, fill=255)
    assert out.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert (out[1:3, 1:3] == 10).all() and (out[1:3, 4:6] == 20).all() and (out[4:6, 1:3] == 30).all()
    assert (out[4:6, 4:6] == 255).all()  # the missing cell stays blank
    with pytest.raises(ValueError, match="N, H, W, 3"):
        grid(images[..., 0], ncol=2)
