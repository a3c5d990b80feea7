"""Checkpoints: atomic writes, the resolved config inside, cadence, and finding one to resume from.

* :class:`AtomicCheckpointIO` — Lightning's ``TorchCheckpointIO`` with every write going to a
  temporary file in the same folder that is renamed over the target (``mergevq.fileio.atomic_write``),
  so a crash mid-write never leaves a truncated ``.ckpt``; it also embeds the resolved YAML config
  as ``checkpoint["mergevq_config"]``. Loading uses ``torch.load(weights_only=True)``: a Lightning
  checkpoint written here holds only tensors, containers and primitives, plus
  ``collections.Counter`` (the state of ``MultiStepLR``), which is allow-listed — no arbitrary pickles.
* :class:`PeriodicCheckpoint` — writes ``checkpoints/step{S:09d}-epoch{E:04d}.ckpt`` every
  ``every_n_steps`` training steps and when training stops early (``trainer.max_steps``), and
  ``...-end.ckpt`` at the end of every epoch (after validation and the LR-drop step); keeps the
  ``keep`` newest of this run's history (never a later-numbered file it did not write). A failed
  write (disk full, permissions) is a one-line ``TrainingError`` and leaves the previous checkpoint.
* :func:`find_resume_checkpoint` — the newest *complete* checkpoint of a run directory
  (``--resume auto``); :func:`resolve_resume` — ``auto``, a path or nothing.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mergevq.errors import ConfigError, TrainingError
from mergevq.fileio import atomic_write

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_KEY",
    "AtomicCheckpointIO",
    "PeriodicCheckpoint",
    "checkpoint_name",
    "find_resume_checkpoint",
    "is_complete_checkpoint",
    "list_checkpoints",
    "load_checkpoint_file",
    "model_from_checkpoint",
    "resolve_resume",
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_KEY = "mergevq_config"
_NAME = re.compile(r"^step(\d+)-epoch(\d+)(-end)?\.ckpt$")
_SAFE_GLOBALS = [collections.Counter]


def checkpoint_name(*, step: int, epoch: int, epoch_end: bool) -> str:
    return f"step{step:09d}-epoch{epoch:04d}{'-end' if epoch_end else ''}.ckpt"


def _order(path: Path) -> tuple[int, int, int]:
    match = _NAME.match(path.name)
    assert match is not None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) is not None)


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The checkpoints named by :func:`checkpoint_name` in ``directory``, oldest first (by training
    step, then epoch, an end-of-epoch one after the step one of the same step)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and _NAME.match(p.name)), key=_order)


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Cheap completeness check of a ``torch.save`` file (a zip archive): the central directory at
    the end of the file opens, it lists a ``data.pkl``, and every member's data lies inside the file.
    A file cut short anywhere loses its central directory. Reads only the directory, not the data."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    if not any(info.filename.endswith("data.pkl") for info in infos):
        return False
    return all(info.header_offset + info.compress_size <= size for info in infos)


def find_resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``run_dir/checkpoints`` (``--resume auto``), or None.
    Incomplete files (e.g. cut short by a full disk or a copy) are skipped with a warning."""
    for path in reversed(list_checkpoints(Path(run_dir) / CHECKPOINT_DIR)):
        if is_complete_checkpoint(path):
            return path
        log.warning("skipping incomplete checkpoint %s", path)
    return None


def resolve_resume(resume: str | os.PathLike | None, run_dir: str | os.PathLike) -> Path | None:
    """``None`` → start fresh; ``"auto"`` → :func:`find_resume_checkpoint` (None when the run has no
    checkpoint yet: a fresh start); a path → that file, which must exist and be complete."""
    if resume is None:
        return None
    if str(resume) == "auto":
        found = find_resume_checkpoint(run_dir)
        if found is None:
            log.info("--resume auto: no checkpoint in %s, starting from scratch", Path(run_dir) / CHECKPOINT_DIR)
        return found
    path = Path(resume).expanduser()
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: checkpoint file not found")
    if not is_complete_checkpoint(path):
        raise TrainingError(f"--resume {resume}: the checkpoint is incomplete or not a torch checkpoint")
    return path


def load_checkpoint_file(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with the few classes our checkpoints hold allow-listed.
    A refused pickle, a corrupt or foreign file, or one that does not hold a checkpoint dict is a
    one-line :class:`TrainingError` naming the file."""
    from mergevq.fileio import torch_load

    state = torch_load(path, what="mergevq checkpoint", error=TrainingError, safe_globals=_SAFE_GLOBALS,
                       map_location=map_location)
    if not isinstance(state, dict):
        raise TrainingError(f"{path} is not a mergevq checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic ``.ckpt`` writes with the resolved config embedded; ``weights_only`` loading."""

    def __init__(self, *, config_yaml: str | None = None) -> None:
        super().__init__()
        self.config_yaml = config_yaml

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if self.config_yaml is not None:
            checkpoint = {**checkpoint, CONFIG_KEY: self.config_yaml}
        try:
            with atomic_write(path) as handle:
                torch.save(checkpoint, handle)
        except (OSError, RuntimeError) as err:
            # torch.save reports a failed write of its zip writer as a RuntimeError caused by the OSError.
            cause = err if isinstance(err, OSError) else err.__context__
            if not isinstance(cause, OSError):
                raise
            previous = [p for p in list_checkpoints(Path(path).parent) if p.name != Path(path).name]
            kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "no earlier checkpoint exists"
            raise TrainingError(f"cannot write checkpoint {path}: {cause.strerror or cause}; {kept} "
                                f"(the half-written temporary file was removed)") from None

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        if weights_only is False:
            raise TrainingError("mergevq checkpoints are loaded with weights_only=True only")
        if not Path(path).is_file():
            raise ConfigError(f"checkpoint file not found: {path}")
        checkpoint = load_checkpoint_file(path, map_location=map_location if map_location is not None else "cpu")
        if CONFIG_KEY not in checkpoint:
            raise TrainingError(f"{path} has no embedded config ({CONFIG_KEY}): not a checkpoint of mergevq train, "
                                "so it cannot be resumed")
        return checkpoint


class PeriodicCheckpoint(Checkpoint):
    """Checkpoint cadence in training steps (``pl_module.train_steps``) plus one per epoch end.

    Subclassing Lightning's ``Checkpoint`` puts it after every other callback (the EMA has been
    updated) and its ``on_train_epoch_end`` after the module's (the LR drop is in the state).
    ``trainer.save_checkpoint`` is collective: every rank calls it, rank 0 writes.
    """

    def __init__(self, *, dirpath: str | os.PathLike, every_n_steps: int, keep: int) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ConfigError(f"trainer.checkpoint_every_n_steps must be an int >= 0 (0: epoch ends only), got {every_n_steps!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or (keep < 1 and keep != -1):
            raise ConfigError(f"trainer.keep_checkpoints must be -1 (all) or an int >= 1, got {keep!r}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.keep = keep
        self._seen_steps: int | None = None
        self.saved: list[Path] = []

    def _save(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, epoch_end: bool) -> None:
        path = self.dirpath / checkpoint_name(step=pl_module.train_steps, epoch=trainer.current_epoch, epoch_end=epoch_end)
        trainer.save_checkpoint(path, weights_only=False)  # False: optimizers, loops and callbacks too
        self.saved.append(path)
        if trainer.is_global_zero and self.keep != -1:
            # Only this run's history (checkpoints up to the one just written) rotates: a later-numbered
            # file is not an ancestor of this run and is never deleted to make room for it.
            ours = [p for p in list_checkpoints(self.dirpath) if _order(p) <= _order(path)]
            for old in ours[: -self.keep]:
                old.unlink(missing_ok=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._seen_steps = pl_module.train_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        steps = pl_module.train_steps
        if steps == self._seen_steps:  # inside an accumulation window: nothing to save
            return
        self._seen_steps = steps
        if trainer.is_last_batch:
            return  # the end-of-epoch checkpoint follows (after validation and the LR step)
        if (self.every_n_steps > 0 and steps % self.every_n_steps == 0) or trainer.should_stop:
            self._save(trainer, pl_module, epoch_end=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_last_batch:  # not when max_steps stopped the epoch early: saved at that batch
            self._save(trainer, pl_module, epoch_end=True)


def model_from_checkpoint(checkpoint: str | os.PathLike, *, node: str, prefix: str, model_type: type,
                          config_type: type, raw: bool, ema_required: bool) -> torch.nn.Module:
    """The model a ``mergevq train`` checkpoint holds, in eval mode on the CPU: built as
    ``model_type(config=...)`` from the embedded config's ``node`` (which must build a ``config_type``),
    with the EMA weights unless ``raw``. A checkpoint without EMA weights is an error when
    ``ema_required``, else its raw weights (the Lightning state dict's keys under ``prefix``) are used.

    The embedded config was written by somebody else: it may only build the allow-listed builders of
    :mod:`mergevq.trust` (checked before anything is imported)."""
    from omegaconf import OmegaConf

    from mergevq.config import from_yaml_with_origins
    from mergevq.training.callbacks import EMA_STATE_KEY
    from mergevq.trust import TRUSTED_TARGETS

    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint file not found: {path}")
    if not is_complete_checkpoint(path):
        raise TrainingError(f"{path} is incomplete or not a torch checkpoint")
    state = load_checkpoint_file(path)
    if CONFIG_KEY not in state:
        raise TrainingError(f"{path} has no embedded config ({CONFIG_KEY}): not written by mergevq train")
    if not isinstance(state[CONFIG_KEY], str):
        raise TrainingError(f"{path}: {CONFIG_KEY} is a {type(state[CONFIG_KEY]).__name__}, not YAML text: "
                            "not written by mergevq train")
    loaded = from_yaml_with_origins(state[CONFIG_KEY], source=f"{path}:{CONFIG_KEY}")
    if OmegaConf.select(loaded.cfg, node, throw_on_missing=False) is None:
        raise TrainingError(f"{path}: the embedded config has no {node} (not a {model_type.__name__} training run)")
    config = loaded.instantiate(node, allowed=TRUSTED_TARGETS)
    if not isinstance(config, config_type):
        raise TrainingError(f"{path}: {node} does not build a {config_type.__name__}")
    has_ema = state.get(EMA_STATE_KEY) is not None
    if not raw and not has_ema and ema_required:
        raise TrainingError(f"{path} has no EMA weights ({EMA_STATE_KEY}); export the raw weights with --raw")
    use_ema = not raw and has_ema
    if use_ema:
        weights = state[EMA_STATE_KEY]
    elif isinstance(state.get("state_dict"), dict):
        weights = {k[len(prefix):]: v for k, v in state["state_dict"].items()
                   if isinstance(k, str) and k.startswith(prefix)}
    else:
        raise TrainingError(f"{path} has no state_dict: not a checkpoint of mergevq train")
    if not isinstance(weights, dict):
        raise TrainingError(f"{path}: {EMA_STATE_KEY} is a {type(weights).__name__}, not a state dict")
    model = model_type(config=config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(
            f"{path}: the {'EMA' if use_ema else 'raw'} weights do not fit the embedded config: {first}") from None
    return model.eval()
