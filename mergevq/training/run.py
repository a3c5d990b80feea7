"""``train(config_paths, overrides)``: a training run from YAML to checkpoints (DESIGN §7, §8), for
either stage: what is trained is whatever the ``model`` node builds (Stage 1:
:class:`~mergevq.training.tokenizer_module.TokenizerModule` on images; Stage 2:
:class:`~mergevq.training.ar_module.ARModule` on extracted codes). Nothing here looks at which one.

Config sections (everything else in the file, e.g. ``demo_data``, is only there for interpolation):

``run``      ``name`` (run directory ``runs/<name>`` unless ``run_dir`` is given), ``seed``.
``trainer``  plain values, :class:`TrainerSettings`.
``model``    ``{target: <a LightningModule>, params: {...}}``; ``seed`` is supplied from ``run.seed``.
``data``     ``{target: <a LightningDataModule>, params: {...}}``.

What the ``model`` module must provide: ``train_steps`` (optimizer steps so far: the checkpoint
cadence and ``trainer.max_steps`` count these) and ``ema_decay`` (float, or None for no EMA: then no
:class:`~mergevq.training.callbacks.EMACallback` is added; a module whose EMA follows another
attribute returns its EMACallback subclass from ``configure_callbacks``, which Lightning puts in
place of the default one).

Everything is validated (targets import, keys match signatures) before anything is built.
The run directory receives ``config.yaml`` (the resolved config, written by rank 0),
``checkpoints/*.ckpt`` (atomic, config embedded) and ``logs/`` (TensorBoard).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mergevq.config import LoadedConfig, check_types, load_with_origins, save, to_yaml, validate
from mergevq.errors import ConfigError

__all__ = ["RunSettings", "TrainResult", "TrainerSettings", "build_trainer", "train"]

log = logging.getLogger(__name__)

RUNS_ROOT = "runs"


def _section(loaded: LoadedConfig, key: str) -> dict[str, Any]:
    if key not in loaded.cfg:
        raise ConfigError(f"the config loaded from {', '.join(loaded.files)} has no '{key}' section")
    node = loaded.select(key)
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{loaded.origin(key)}: key '{key}' must be a mapping, got {type(node).__name__}")
    try:
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except Exception as exc:  # noqa: BLE001 - an unresolvable interpolation, reported in one line
        raise ConfigError(f"{loaded.origin(key)}: section '{key}' cannot be resolved: {exc}") from None


def _from_section(cls: type, values: Mapping[str, Any], *, section: str, loaded: LoadedConfig) -> Any:
    """The settings dataclass ``cls`` from the config section ``section``: unknown keys, wrong types
    and out-of-range values are one line naming the file that set the key."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(
                f"{loaded.origin(f'{section}.{key}')}: unknown key '{section}.{key}'; valid keys: {', '.join(names)}"
            )
    check_types(cls, values, key=section, origins=loaded.origins)
    try:
        return cls(**values)
    except _SettingError as err:
        raise ConfigError(f"{loaded.origin(err.key)}: {err}") from None


class _SettingError(ConfigError):
    """An out-of-range value of a settings section; ``key`` lets :func:`_from_section` name its file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"key '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class RunSettings:
    name: str = "mergevq"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise _SettingError("run.name", f"must be a non-empty name without '/', got {self.name!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise _SettingError("run.seed", f"must be an int >= 0, got {self.seed!r}")


@dataclass(frozen=True)
class TrainerSettings:
    """The ``trainer`` section. ``max_steps`` counts training steps (``module.train_steps``: Stage 1
    counts a generator + discriminator step pair, each of ``accumulate_grad_batches`` micro-batches,
    as one; Stage 2 counts optimizer steps); -1: no limit.
    ``checkpoint_every_n_steps`` counts the same steps (0: only at epoch ends); a checkpoint is also
    written at every epoch end and when ``max_steps`` stops the run. ``keep_checkpoints``: how many of
    the newest to keep (-1: all). ``log_every_n_steps`` counts batches (Lightning's logging cadence).
    ``devices``: processes per node; ``strategy``: auto | ddp | ddp_spawn | fsdp (mergevq.backend)."""

    accelerator: str = "cpu"
    precision: str | int = "32"  # Lightning's names; 32 / 16 may come as numbers (trainer.precision=32)
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_epochs: int = -1
    max_steps: int = -1
    log_every_n_steps: int = 50
    val_every_n_epochs: int = 1
    limit_val_batches: float | int = 1.0
    checkpoint_every_n_steps: int = 5000
    keep_checkpoints: int = 3
    progress_bar: bool = True

    def __post_init__(self) -> None:
        for name in ("max_epochs", "max_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
                raise _SettingError(f"trainer.{name}", f"must be -1 or an int >= 1, got {value!r}")
        if self.max_epochs == -1 and self.max_steps == -1:
            raise _SettingError("trainer.max_steps", "set trainer.max_epochs or trainer.max_steps (both are -1: "
                                "the run would never end)")
        for name in ("log_every_n_steps", "val_every_n_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _SettingError(f"trainer.{name}", f"must be an int >= 1, got {value!r}")


@dataclass
class TrainResult:
    """What a finished :func:`train` call leaves behind."""

    run_dir: Path
    config_path: Path
    last_checkpoint: Path | None  # newest complete checkpoint of the run (what --resume auto picks)
    metrics: dict[str, float] = field(default_factory=dict)  # the last logged value of each metric
    is_global_zero: bool = True  # False in the other processes of a multi-process run
    moved_aside: Path | None = None  # where --overwrite moved the previous run folder


def build_trainer(settings: TrainerSettings, *, run_dir: Path, module: Any, config_yaml: str,
                  resumed: bool) -> Any:
    """The Lightning Trainer of a run, with the mergevq callbacks and checkpoint I/O.
    ``settings.max_steps`` is enforced by :class:`StepLimit` (in ``module.train_steps``), not by
    Lightning: a module that needs the run length reads it from that callback."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from mergevq.backend import select_backend
    from mergevq.data.skips import SkippedImagesReport
    from mergevq.training.callbacks import EMACallback, StepLimit
    from mergevq.training.checkpoint import CHECKPOINT_DIR, AtomicCheckpointIO, PeriodicCheckpoint

    backend = select_backend(accelerator=settings.accelerator, precision=str(settings.precision),
                             devices=settings.devices)
    # find_unused_parameters: each backward of the GAN step reaches only one of the two networks.
    kwargs = backend.trainer_kwargs(strategy=settings.strategy, num_nodes=settings.num_nodes,
                                    find_unused_parameters=True)
    plugins = [*kwargs.pop("plugins", []), AtomicCheckpointIO(config_yaml=config_yaml)]
    callbacks: list[pl.Callback] = [
        *([] if module.ema_decay is None else [EMACallback(decay=module.ema_decay)]),
        StepLimit(max_steps=settings.max_steps),
        SkippedImagesReport(),
        PeriodicCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, every_n_steps=settings.checkpoint_every_n_steps,
                           keep=settings.keep_checkpoints),
    ]
    if settings.progress_bar:
        callbacks.append(TQDMProgressBar())
    return pl.Trainer(
        **kwargs,
        plugins=plugins,
        max_epochs=settings.max_epochs,
        # Counted by StepLimit in module.train_steps (Stage 1's global_step counts G and D steps);
        # Lightning's own max_steps also breaks the epoch count of a resume from an epoch-end checkpoint.
        max_steps=-1,
        log_every_n_steps=settings.log_every_n_steps,
        check_val_every_n_epoch=settings.val_every_n_epochs,
        limit_val_batches=settings.limit_val_batches,
        # A resumed run skips the sanity validation: it would draw from the restored RNG stream
        # before the first training batch and break exact resumption.
        num_sanity_val_steps=0 if resumed else 2,
        callbacks=callbacks,
        logger=TensorBoardLogger(save_dir=str(run_dir), name="logs", default_hp_metric=False),
        enable_checkpointing=True,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
    )


def train(
    config_paths: str | os.PathLike | Sequence[str | os.PathLike],
    overrides: Sequence[str] = (),
    *,
    run_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train the module described by ``config_paths`` (+ ``key=value`` overrides).

    ``run_dir``: default ``runs/<run.name>``. ``resume``: None (fresh), ``"auto"`` (the newest
    complete checkpoint of ``run_dir``, fresh when there is none) or a checkpoint path.
    ``overwrite``: start afresh in a ``run_dir`` that holds checkpoints, after moving the old run
    aside. A fresh run into a folder with checkpoints is refused without it
    (:mod:`mergevq.training.run_dir`).
    """
    loaded = load_with_origins(config_paths, overrides)
    run = _from_section(RunSettings, _section(loaded, "run"), section="run", loaded=loaded)
    settings = _from_section(TrainerSettings, _section(loaded, "trainer"), section="trainer", loaded=loaded)
    validate(loaded.select("model"), key="model", origins=loaded.origins, extra=["seed"])
    loaded.validate("data")
    config_yaml = to_yaml(loaded.cfg)

    from mergevq.training.checkpoint import PeriodicCheckpoint, find_resume_checkpoint
    from mergevq.training.run_dir import global_rank_from_env, prepare_run_dir

    directory = Path(run_dir) if run_dir is not None else Path(RUNS_ROOT) / run.name
    plan = prepare_run_dir(directory, resume=resume, overwrite=overwrite, is_main=global_rank_from_env() == 0)
    resume_path = plan.resume

    import lightning.pytorch as pl

    pl.seed_everything(run.seed, workers=True, verbose=False)
    module = loaded.instantiate("model", extra={"seed": run.seed})
    datamodule = loaded.instantiate("data")
    trainer = build_trainer(settings, run_dir=directory, module=module, config_yaml=config_yaml,
                            resumed=resume_path is not None)
    config_path = directory / "config.yaml"
    if trainer.is_global_zero:
        config_path = save(loaded.cfg, directory)
    if resume_path is not None:
        log.info("resuming from %s", resume_path)
    from mergevq.data.samplers import ResumableDataModule

    with warnings.catch_warnings():
        if isinstance(datamodule, ResumableDataModule):
            # Lightning warns that a mid-epoch resume is inexact unless the DataLoader is stateful; these
            # data modules restore the position in the epoch through their own state (data/samplers.py).
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_path) if resume_path is not None else None)
    saved = [c for c in trainer.callbacks if isinstance(c, PeriodicCheckpoint)][0].saved
    metrics = {}
    for key, value in trainer.callback_metrics.items():
        try:
            metrics[key] = float(value)
        except (TypeError, ValueError):
            continue
    # This run's newest checkpoint; a resumed run that had nothing left to do wrote none.
    last = saved[-1] if saved else find_resume_checkpoint(directory)
    return TrainResult(run_dir=directory, config_path=config_path, last_checkpoint=last, metrics=metrics,
                       is_global_zero=trainer.is_global_zero, moved_aside=plan.moved_to)
