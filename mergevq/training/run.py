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

What it may provide: ``accumulate_grad_batches`` (micro-batches per optimizer step; passed to
Lightning for a module with automatic optimisation, a manual one accumulates itself) and
``has_unused_parameters`` (DDP's ``find_unused_parameters``; False when absent: a module that
declares nothing gets no per-backward graph search).

Everything is validated (targets import, keys match signatures) before anything is built. At start
rank 0 prints the batch plan (world size, devices, per-device batch, accumulation, global batch;
:mod:`mergevq.training.batch_plan`, which also derives the accumulation from
``trainer.global_batch_size``) and the absolute paths of the composed config files.
The run directory receives ``config.yaml`` (the resolved config, written by rank 0), ``run_info.yaml``
(the batch plan and the config files), ``checkpoints/*.ckpt`` (atomic, config embedded) and ``logs/``
(``trainer.logger``: TensorBoard, CSV or W&B; :mod:`mergevq.training.loggers`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mergevq.config import LoadedConfig, check_types, load_with_origins, save, to_yaml, validate
from mergevq.errors import ConfigError

__all__ = ["RUN_INFO_FILE", "RunSettings", "TrainResult", "TrainerSettings", "build_trainer", "train"]

log = logging.getLogger(__name__)

RUNS_ROOT = "runs"
RUN_INFO_FILE = "run_info.yaml"


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
    ``devices``: processes per node; ``strategy``: auto | ddp | ddp_spawn | fsdp (mergevq.backend).
    ``global_batch_size``: null, or the recipe's global batch: the accumulation is then derived from
    it for the world size the job runs on (mergevq.training.batch_plan). ``logger``: tensorboard |
    csv | wandb (mergevq.training.loggers)."""

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
    global_batch_size: int | None = None
    logger: str = "tensorboard"

    def __post_init__(self) -> None:
        from mergevq.training.loggers import LOGGERS

        if self.logger not in LOGGERS:
            raise _SettingError("trainer.logger", f"must be one of {', '.join(LOGGERS)}, got {self.logger!r}")
        value = self.global_batch_size
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise _SettingError("trainer.global_batch_size", f"must be null or an int >= 1, got {value!r}")
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
    batch_plan: Any = None  # the BatchPlan the run trained with (None: the data has no batch_size)


def build_trainer(settings: TrainerSettings, *, run_dir: Path, module: Any, config_yaml: str,
                  resumed: bool, run_name: str = "mergevq") -> Any:
    """The Lightning Trainer of a run, with the mergevq callbacks, logger and checkpoint I/O.
    ``settings.max_steps`` is enforced by :class:`StepLimit` (in ``module.train_steps``), not by
    Lightning: a module that needs the run length reads it from that callback."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import TQDMProgressBar

    from mergevq.backend import select_backend
    from mergevq.data.skips import SkippedImagesReport
    from mergevq.training.callbacks import EMACallback, StepLimit
    from mergevq.training.checkpoint import CHECKPOINT_DIR, AtomicCheckpointIO, PeriodicCheckpoint
    from mergevq.training.loggers import build_logger

    backend = select_backend(accelerator=settings.accelerator, precision=str(settings.precision),
                             devices=settings.devices)
    # The module says whether some of its parameters get no gradient in a backward (the GAN step
    # does, MergeAR does not); the search costs a graph traversal per backward and DDP warns when
    # it finds nothing.
    kwargs = backend.trainer_kwargs(strategy=settings.strategy, num_nodes=settings.num_nodes,
                                    find_unused_parameters=bool(getattr(module, "has_unused_parameters", False)))
    # Lightning accumulates for automatic optimisation only; a manual module accumulates itself.
    accumulate = int(getattr(module, "accumulate_grad_batches", 1)) if module.automatic_optimization else 1
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
        accumulate_grad_batches=accumulate,
        log_every_n_steps=settings.log_every_n_steps,
        check_val_every_n_epoch=settings.val_every_n_epochs,
        limit_val_batches=settings.limit_val_batches,
        # A resumed run skips the sanity validation: it would draw from the restored RNG stream
        # before the first training batch and break exact resumption.
        num_sanity_val_steps=0 if resumed else 2,
        callbacks=callbacks,
        logger=build_logger(settings.logger, run_dir=run_dir, run_name=run_name),
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
    plan = _plan_batch(loaded, settings)  # writes a derived accumulation into the config
    validate(loaded.select("model"), key="model", origins=loaded.origins, extra=["seed"])
    loaded.validate("data")
    config_yaml = to_yaml(loaded.cfg)

    from mergevq.training.checkpoint import PeriodicCheckpoint, find_resume_checkpoint
    from mergevq.training.run_dir import global_rank_from_env, prepare_run_dir

    directory = Path(run_dir) if run_dir is not None else Path(RUNS_ROOT) / run.name
    folder = prepare_run_dir(directory, resume=resume, overwrite=overwrite, is_main=global_rank_from_env() == 0)
    resume_path = folder.resume

    import lightning.pytorch as pl

    pl.seed_everything(run.seed, workers=True, verbose=False)
    module = loaded.instantiate("model", extra={"seed": run.seed})
    datamodule = loaded.instantiate("data")
    trainer = build_trainer(settings, run_dir=directory, module=module, config_yaml=config_yaml,
                            resumed=resume_path is not None, run_name=run.name)
    plan = _as_launched(plan, trainer=trainer, module=module)
    config_path = directory / "config.yaml"
    if trainer.is_global_zero:
        files = [os.path.abspath(f) for f in loaded.files]
        config_path = save(loaded.cfg, directory, sources=loaded.files)
        _write_run_info(directory, plan=plan, files=files)
        # The one block a person launching a job reads first (rank 0 only, before the first step).
        print(_start_block(plan, files), file=sys.stdout, flush=True)
    if resume_path is not None:
        log.info("resuming from %s", resume_path)
    from mergevq.data.samplers import ResumableDataModule

    with warnings.catch_warnings():
        if isinstance(datamodule, ResumableDataModule):
            # Lightning warns that a mid-epoch resume is inexact unless the DataLoader is stateful; these
            # data modules restore the position in the epoch through their own state (data/samplers.py).
            warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_path) if resume_path is not None else None)
    _leave_process_group()
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
                       is_global_zero=trainer.is_global_zero, moved_aside=folder.moved_to, batch_plan=plan)


def _leave_process_group() -> None:
    """Lightning leaves the process group a torchrun launch made alive after ``fit``; at interpreter exit
    gloo's threads were then seen to abort a rank (\"terminate called without an active exception\", exit
    -6) after the run had finished. Every rank waits for the others, then the group is destroyed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# the batch plan and the start-up record


def _plan_batch(loaded: LoadedConfig, settings: TrainerSettings) -> Any:
    """The run's :class:`~mergevq.training.batch_plan.BatchPlan` from the config and the launcher's
    ``WORLD_SIZE`` (None when the data section has no ``batch_size``). A derived accumulation is
    written into ``model.params.accumulate_grad_batches``, its one home (and so into config.yaml)."""
    from mergevq.backend import select_backend
    from mergevq.training.batch_plan import (ACCUMULATION_KEY, BATCH_KEY, GLOBAL_BATCH_KEY, launched_world_size,
                                             plan_batch)

    per_device = OmegaConf.select(loaded.cfg, BATCH_KEY, default=None)
    if per_device is None:
        if settings.global_batch_size is not None:
            raise ConfigError(f"{loaded.origin(GLOBAL_BATCH_KEY)}: {GLOBAL_BATCH_KEY} is set but the config has no "
                              f"{BATCH_KEY} (the per-device batch) to derive the accumulation from")
        return None
    devices = select_backend(accelerator=settings.accelerator, precision=str(settings.precision),
                             devices=settings.devices).devices
    blamed = GLOBAL_BATCH_KEY if settings.global_batch_size is not None else BATCH_KEY
    try:
        plan = plan_batch(per_device_batch=per_device, devices=devices, num_nodes=settings.num_nodes,
                          accumulation=OmegaConf.select(loaded.cfg, ACCUMULATION_KEY, default=None),
                          global_batch_size=settings.global_batch_size, world_size=launched_world_size())
    except ConfigError as err:
        raise ConfigError(f"{loaded.origin(blamed)}: {err}") from None
    if plan.derived:
        OmegaConf.update(loaded.cfg, ACCUMULATION_KEY, plan.accumulation, force_add=True)
        loaded.origins[ACCUMULATION_KEY] = loaded.origin(GLOBAL_BATCH_KEY)  # type: ignore[index]
    return plan


def _as_launched(plan: Any, *, trainer: Any, module: Any) -> Any:
    """``plan`` checked against the processes Lightning really runs (a SLURM or torchrun world it
    detected) and with the accumulation the module really uses."""
    if plan is None:
        return None
    if trainer.world_size != plan.world_size:
        raise ConfigError(
            f"the job runs {trainer.world_size} processes but trainer.devices x trainer.num_nodes = {plan.devices} x "
            f"{plan.num_nodes} = {plan.world_size}; pass the node count and devices per node the job really has"
        )
    accumulation = int(getattr(module, "accumulate_grad_batches", plan.accumulation))
    return dataclasses.replace(plan, accumulation=accumulation,
                               global_batch=plan.per_device_batch * plan.world_size * accumulation)


def _start_block(plan: Any, files: Sequence[str]) -> str:
    if plan is None:
        return "\n".join(f"config: {path}" for path in files)
    return plan.describe(config_files=files)


def _write_run_info(directory: Path, *, plan: Any, files: Sequence[str]) -> Path:
    """``run_info.yaml``: the batch plan and the absolute config files of this start of the run (a
    resumed run on another node count rewrites it)."""
    import yaml

    from mergevq.fileio import atomic_write

    info: dict[str, Any] = {"batch_plan": None if plan is None else plan.to_dict(), "config_files": list(files)}
    path = directory / RUN_INFO_FILE
    with atomic_write(path, text=True) as handle:
        yaml.safe_dump(info, handle, sort_keys=False)
    return path
