"""`mergevq demo`: demo data through the config + DataModule path (picture + JSON), then SHORT runs of
both stages (a handful of training steps each): the K sweep table, reconstruction grid, merge groups
and metrics of Stage 1; code extraction, MergeAR training and the per-class sample grid of Stage 2."""

import json

import numpy as np
import pytest

from mergevq.cli import main
from mergevq.visual import fitted_label_width, grid


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
    assert str(out / "demo_data.png") in printed


def test_demo_rerun_replaces_its_own_output_and_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "demo_out"
    args = ["--data-only", "demo_data.train_per_photo=4", "demo_data.val_per_photo=2", "demo_data.resolution=16"]
    assert main(["demo", "--out", str(out), *args]) == 0
    (out / "tokenizer_run" / "checkpoints").mkdir(parents=True)  # as a full run leaves it
    assert main(["demo", "--out", str(out), *args]) == 0  # its own output: replaced
    assert not (out / "tokenizer_run").exists() and (out / "demo_data.png").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    capsys.readouterr()
    assert main(["demo", "--out", str(mine), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert [p.name for p in mine.iterdir()] == ["thesis.tex"]


def test_demo_short_run_writes_both_stages(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "--samples-per-class", "2",
                 "--ar-set", "trainer.max_steps=3", "--ar-set", "model.params.schedule.warmup_steps=1",
                 "--ar-set", "trainer.progress_bar=false",
                 "demo_data.train_per_photo=10", "demo_data.val_per_photo=2",
                 "trainer.max_steps=3", "trainer.progress_bar=false"]) == 0
    for name in ("demo_data.png", "demo_data.json", "reconstructions.png", "merge_groups.png", "metrics.json",
                 "k_sweep.md", "samples.png", "mergear_metrics.json"):
        assert (out / name).stat().st_size > 0, name
    assert list((out / "tokenizer_run" / "checkpoints").glob("*.ckpt"))
    assert list((out / "mergear_run" / "checkpoints").glob("*.ckpt"))

    # Stage 1: the K sweep is L and every training K, largest first, with the eval module's metrics
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation_images"] == 20 and metrics["tokenizer"]["weights"] == "EMA"
    tok = metrics["tokenizer"]
    ks = [entry["num_keep"] for entry in metrics["evaluation"]["by_k"]]
    assert ks == sorted({tok["num_tokens"], *tok["config"]["k_candidates"]}, reverse=True) == [64, 49, 36, 25]
    for entry in metrics["evaluation"]["by_k"]:
        # 3 training steps: SSIM may still be slightly negative
        assert np.isfinite(entry["psnr"]) and -1 <= entry["ssim"] <= 1 and 0 < entry["codebook_usage"] <= 1
        assert entry["rfid"] is None and entry["lpips"] is None  # no prepared weights in this cache
        assert entry["mean_merge_groups"] == entry["num_keep"]
    assert len(metrics["not_measured"]) == 2
    table = (out / "k_sweep.md").read_text()
    assert all(f"| {k} |" in table for k in ks)
    # reconstruction grid: a label strip ("K=64, 12.3 dB"), then 10 columns (one crop per photo) x
    # (originals + 4 K rows)
    width, height = Image.open(out / "reconstructions.png").size
    label = width - (10 * (32 * 4 + 2) + 2)
    assert height == 5 * (32 * 4 + 2) + 2
    assert fitted_label_width(["K=64, 0.0 dB"]) <= label <= fitted_label_width(["K=64, 100.0 dB"])
    # merge groups: a row per K of the sweep, 6 crops as pairs original | groups, after a "K=64" strip
    width, height = Image.open(out / "merge_groups.png").size
    assert height == 4 * (32 * 4 + 2) + 2 and width == fitted_label_width(["K=64"]) + 12 * (32 * 4 + 2) + 2

    # Stage 2: codes of the 100 crops and their flips, a sample grid of one row per class
    ar = json.loads((out / "mergear_metrics.json").read_text())
    assert ar["codes"]["images"] == 100 and ar["codes"]["flip"] is True
    sampling = ar["sampling"]
    assert sampling["samples"] == 20 and sampling["max_logit_diff"] <= 1e-4  # the caches agree on the same tokens
    compressed, full = sampling["compressed_cache"], sampling["full_cache"]
    assert compressed["peak_entries_max"] <= full["peak_entries_max"] == sampling["prefix"] + 64 - 1
    # samples: one row per class, named on a strip that fits the longest class name
    width, height = Image.open(out / "samples.png").size
    assert height == 10 * (32 * 3 + 2) + 2
    assert width == fitted_label_width(json.loads((out / "demo_data.json").read_text())["classes"]) \
        + 2 * (32 * 3 + 2) + 2

    printed = capsys.readouterr().out
    for name in ("reconstructions.png", "merge_groups.png", "metrics.json", "k_sweep.md", "samples.png",
                 "mergear_metrics.json"):
        assert str(out / name) in printed
    assert "PSNR" in printed and "mergevq prepare-weights" in printed and "compressed" in printed


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
