"""The run's logger (``trainer.logger``: tensorboard | csv | wandb) and how a picture reaches it.

* ``tensorboard`` (default): ``<run_dir>/logs/version_N/events.*``; pictures with ``add_image``.
* ``csv``: ``<run_dir>/logs/version_N/metrics.csv``; CSV holds no pictures, so they are written as
  PNG files ``<run_dir>/val_images/step_XXXXXX_<name>.png``.
* ``wandb``: an optional dependency (``pip install wandb``). Runs offline unless ``WANDB_MODE`` says
  otherwise or ``WANDB_API_KEY`` is set: a cluster node often has no internet, and an offline run
  (``<run_dir>/wandb/offline-run-*``) can be uploaded later with ``wandb sync``. The project name is
  ``WANDB_PROJECT`` (default ``mergevq``), the run name ``run.name``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mergevq.errors import ConfigError

__all__ = ["LOGGERS", "VAL_IMAGES_DIR", "build_logger", "log_picture", "wandb_offline"]

LOGGERS = ("tensorboard", "csv", "wandb")
VAL_IMAGES_DIR = "val_images"
LOG_DIR = "logs"


def wandb_offline(env: Mapping[str, str] | None = None) -> bool:
    """Whether a W&B run should stay offline: ``WANDB_MODE`` when set (``offline`` / ``disabled``:
    yes), otherwise offline unless an API key is in ``WANDB_API_KEY``."""
    env = os.environ if env is None else env
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode:
        return mode in ("offline", "dryrun", "disabled")
    return not env.get("WANDB_API_KEY")


def _require_wandb() -> None:
    try:
        importlib.import_module("wandb")
    except ImportError:
        raise ConfigError(
            "trainer.logger=wandb needs the wandb package, which is not installed: pip install wandb "
            "(or pip install 'mergevq[wandb]'), or use trainer.logger=tensorboard or csv"
        ) from None


def build_logger(kind: str, *, run_dir: Path, run_name: str) -> Any:
    """The Lightning logger for ``trainer.logger=kind`` writing under ``run_dir``."""
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(run_dir), name=LOG_DIR, default_hp_metric=False)
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(run_dir), name=LOG_DIR)
    if kind == "wandb":
        _require_wandb()
        from lightning.pytorch import loggers

        return loggers.WandbLogger(save_dir=str(run_dir), name=run_name, offline=wandb_offline(),
                                   project=os.environ.get("WANDB_PROJECT") or "mergevq")
    raise ConfigError(f"trainer.logger={kind!r} is not supported; expected one of: {', '.join(LOGGERS)}")


def log_picture(logger: Any, *, name: str, image: np.ndarray, step: int, run_dir: Path) -> Path | None:
    """Send one (H, W, 3) uint8 picture to ``logger`` under ``val/<name>`` at training step ``step``;
    for a logger without picture support write ``run_dir/val_images/step_XXXXXX_<name>.png`` and
    return its path."""
    from lightning.pytorch.loggers import TensorBoardLogger

    tag = f"val/{name}"
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        return None
    if callable(getattr(logger, "log_image", None)):  # WandbLogger (and other loggers with pictures)
        logger.log_image(key=tag, images=[image], step=step)
        return None
    from mergevq.visual import save_png

    return save_png(image, Path(run_dir) / VAL_IMAGES_DIR / f"step_{step:06d}_{name}.png")
