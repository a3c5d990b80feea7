"""`mergevq demo` at this stage: demo data through the config + DataModule path, picture + JSON."""

import json

import numpy as np
import pytest

from mergevq.cli import main
from mergevq.visual import grid


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGEVQ_CACHE", str(tmp_path / "cache"))


def test_demo_writes_picture_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo_out"
    assert main(["demo", "--out", str(out), "demo_data.train_per_photo=10", "demo_data.val_per_photo=4",
                 "demo_data.resolution=16"]) == 0
    metrics = json.loads((out / "demo_data.json").read_text())
    assert metrics["resolution"] == 16 and len(metrics["classes"]) == 10
    assert metrics["validation"]["images"] == 40 and metrics["validation"]["skipped"] == 0
    assert metrics["train"]["images"] == 96  # 100 crops, batch 32, drop_last
    assert (out / "demo_data.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "not yet in the demo" in printed and str(out / "demo_data.png") in printed


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
