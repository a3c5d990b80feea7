"""Training logs (issue #13 item 6): ``trainer.logger`` tensorboard | csv | wandb, and the validation
pictures (reconstructions at K = L / nominal / smallest K labelled with their PSNR, merge groups at
those K) sent to each of them."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
from _training import STEPS_PER_EPOCH, write_config
from PIL import Image

from mergevq.errors import ConfigError
from mergevq.training.loggers import build_logger, log_picture, wandb_offline
from mergevq.training.run import train
from mergevq.visual import fitted_label_width

pytestmark = pytest.mark.usefixtures("private_cache")

# tiny-GR at 32 px: L = 16 tokens (4x4), nominal K 9, smallest K 4; the first validation batch has 4
# images; pictures are enlarged x4 (mergevq.visual.picture_scale) to 128 px cells with 2 px padding.
CELL, PAD, IMAGES = 128, 2, 4
RECON_HEIGHT = 4 * (CELL + PAD) + PAD  # rows: original, K=16, 9, 4
RECON_GRID_WIDTH = IMAGES * (CELL + PAD) + PAD
# the reconstruction labels read "K=16, 12.3 dB": the strip fits the longest, and PSNR >= 0 on [-1, 1]
RECON_LABEL = range(fitted_label_width(["K=16, 0.0 dB"]), fitted_label_width(["K=16, 100.0 dB"]) + 1)
# rows K=16, 9, 4; each image as the pair original | merge groups
GROUPS_SIZE = (3 * (CELL + PAD) + PAD, fitted_label_width(["K=16"]) + 2 * IMAGES * (CELL + PAD) + PAD)


def _is_recon_size(height: int, width: int) -> bool:
    return height == RECON_HEIGHT and width - RECON_GRID_WIDTH in RECON_LABEL


def _run(tmp_path, logger: str):
    config = write_config(tmp_path, trainer={"logger": logger, "max_epochs": 1, "limit_val_batches": 1,
                                             "checkpoint_every_n_steps": 0})
    return train([config], run_dir=tmp_path / "run")


def test_csv_logger_writes_metrics_and_picture_files(tmp_path):
    result = _run(tmp_path, "csv")
    metrics = list((result.run_dir / "logs").rglob("metrics.csv"))
    assert len(metrics) == 1 and "train/g_loss" in metrics[0].read_text().splitlines()[0]
    pictures = sorted(p.name for p in (result.run_dir / "val_images").iterdir())
    # one validation after the epoch (the sanity check draws nothing)
    step = f"step_{STEPS_PER_EPOCH:06d}"
    assert pictures == [f"{step}_merge_groups.png", f"{step}_reconstructions.png"]
    recon = np.asarray(Image.open(result.run_dir / "val_images" / f"{step}_reconstructions.png"))
    groups = np.asarray(Image.open(result.run_dir / "val_images" / f"{step}_merge_groups.png"))
    assert _is_recon_size(*recon.shape[:2]) and groups.shape == (*GROUPS_SIZE, 3)


def test_tensorboard_event_file_holds_the_pictures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _run(tmp_path, "tensorboard")
    events = list((result.run_dir / "logs").rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    accumulator.Reload()
    assert {"val/reconstructions", "val/merge_groups"} <= set(accumulator.Tags()["images"])
    image = accumulator.Images("val/reconstructions")[-1]
    assert _is_recon_size(image.height, image.width) and image.step == STEPS_PER_EPOCH
    assert not (result.run_dir / "val_images").exists()


def test_wandb_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError, installed or not
    with pytest.raises(ConfigError) as err:
        build_logger("wandb", run_dir=tmp_path, run_name="x")
    assert "\n" not in str(err.value) and "pip install wandb" in str(err.value)


def test_wandb_logger_runs_offline_and_gets_pictures(tmp_path, monkeypatch):
    import lightning.pytorch.loggers as loggers

    made = {}

    class FakeWandbLogger:  # records what mergevq asks of Lightning's WandbLogger
        def __init__(self, **kwargs):
            made.update(kwargs)
            self.images = []

        def log_image(self, *, key, images, step):
            self.images.append((key, images[0].shape, step))

    monkeypatch.setitem(sys.modules, "wandb", types.ModuleType("wandb"))
    monkeypatch.setattr(loggers, "WandbLogger", FakeWandbLogger)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    logger = build_logger("wandb", run_dir=tmp_path, run_name="GR_d64")
    assert made["offline"] is True and made["name"] == "GR_d64" and made["save_dir"] == str(tmp_path)
    assert log_picture(logger, name="reconstructions", image=np.zeros((6, 8, 3), np.uint8), step=5,
                       run_dir=tmp_path) is None
    assert logger.images == [("val/reconstructions", (6, 8, 3), 5)]


def test_wandb_offline_rule():
    assert wandb_offline({}) is True
    assert wandb_offline({"WANDB_API_KEY": "k"}) is False
    assert wandb_offline({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}) is True
    assert wandb_offline({"WANDB_MODE": "online"}) is False


def test_unknown_logger_is_a_config_error(tmp_path):
    config = write_config(tmp_path, trainer={"logger": "mlflow", "max_steps": 1})
    with pytest.raises(ConfigError, match="trainer.logger.*tensorboard, csv, wandb"):
        train([config], run_dir=tmp_path / "run")
