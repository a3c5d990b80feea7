"""Stage 2 training of MergeAR as a LightningModule (DESIGN §5 "Optimisation"; issue #6 item 5).

Automatic optimisation: ``training_step`` returns the teacher-forced loss of
:class:`~mergevq.ar.model.MergeAR` (sum over sub-tokens of the mean cross-entropy, nats) and
Lightning does backward, clipping, the optimizer step and the scheduler step. So ``trainer.global_step``
counts optimizer steps, and that is :attr:`ARModule.train_steps`, the counter the shared Stage 1
callbacks (checkpoint cadence, step limit) read.

* AdamW, betas (0.9, 0.95), weight decay on >= 2-D parameters only (:mod:`mergevq.training.optim`;
  the decay set is taken from the shapes as built, before FSDP flattens them).
* LR: warmup then cosine / linear / constant decay, stepped once per optimizer step
  (``interval: "step"``); the run length is ``schedule.total_steps`` or else the smaller of
  ``trainer.max_steps`` and ``max_epochs`` x steps per epoch (:meth:`ARModule.run_length`).
* Gradient-norm clipping (``grad_clip``, default 1.0) through :meth:`configure_gradient_clipping`,
  which uses FSDP's own ``clip_grad_norm_`` when the model is sharded (Lightning refuses norm
  clipping under FSDP).
* Precision comes from the trainer config (``bf16-mixed`` on GPU/NPU); the model and losses are
  written for autocast.
* Optional EMA of the model (``ema_decay``): :class:`ModelEMA`, the Stage 1
  :class:`~mergevq.training.callbacks.EMACallback` pointed at ``pl_module.model`` and stepped on
  optimizer steps; it is saved in every checkpoint and ``load_mergear`` prefers it.
* Resume: Lightning restores weights, optimizer, scheduler (its state is only the step count: the
  schedule itself always comes from the config) and the step; the torch RNG state is checkpointed
  too (class / token dropout draws and the data order of the next epoch).

Before training the code folder's manifest is checked against the model config (grid, bits, class
count) so a mismatch is a one-line error naming both, not an index error deep in an embedding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from mergevq.ar.model import AROutput, MergeAR, MergeARConfig
from mergevq.data.codes import CodesDataModule, CodesDataset, CodesManifest
from mergevq.errors import ConfigError
from mergevq.training.callbacks import EMACallback, StepLimit
from mergevq.training.optim import LRSchedule, build_adamw, decay_parameter_names, warmup_decay_scheduler

__all__ = ["RNG_STATE_KEY", "ARModule", "ModelEMA", "check_codes_match", "restore_rng_state", "rng_state"]

RNG_STATE_KEY = "mergevq_rng_state"


def rng_state() -> dict[str, Any]:
    """The torch (and CUDA, when in use) RNG states, for a checkpoint."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different number of visible GPUs
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def check_codes_match(manifest: CodesManifest, config: MergeARConfig, *, source: str) -> None:
    """One-line ConfigError unless the codes in ``source`` fit ``config`` (model.params.model)."""
    pairs = {
        "grid": (tuple(manifest.grid), tuple(config.grid)),
        "code_dim": (manifest.code_dim, config.code_dim),
        "sub_token_bits": (tuple(manifest.sub_token_bits), tuple(config.sub_token_bits)),
    }
    for name, (codes, model) in pairs.items():
        if codes != model:
            raise ConfigError(
                f"{source}: the codes have {name}={list(codes) if isinstance(codes, tuple) else codes} but the "
                f"model has {name}={list(model) if isinstance(model, tuple) else model}; set "
                f"model.params.model.params.changes.{name} to match the tokenizer the codes came from"
            )
    if manifest.num_classes < 1:
        raise ConfigError(f"{source}: the codes carry no class labels (num_classes=0); MergeAR is class-conditional")
    if manifest.num_classes > config.num_classes:
        raise ConfigError(
            f"{source}: the codes have {manifest.num_classes} classes but the model only {config.num_classes}; "
            "set model.params.model.params.changes.num_classes"
        )


def _number(name: str, value: Any, *, low: float, integer: bool = False, inclusive: bool = True) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (value < low if inclusive else value <= low):
        kind = "an int" if integer else "a number"
        raise ConfigError(f"model.params.{name} must be {kind} {'>=' if inclusive else '>'} {low}, got {value!r}")


class ModelEMA(EMACallback):
    """:class:`EMACallback` over ``pl_module.model``, one update per optimizer step
    (``pl_module.train_steps``); validation logs the EMA model's losses under ``val_ema/``."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start(pl_module.model)
        self._seen_updates = pl_module.train_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.train_steps != self._seen_updates:
            self.update(pl_module.model)
            self._seen_updates = pl_module.train_steps

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.ema is None:
            return
        with torch.no_grad():
            out = self.ema(batch["indices"], batch["label"], batch["num_keep"])
        pl_module.log_losses("val_ema", out, batch_size=batch["indices"].shape[0])


class ARModule(pl.LightningModule):
    """Trains a :class:`MergeAR` on pre-extracted codes (batches of :class:`CodesDataModule`).

    Args (the ``model.params`` section of a Stage 2 config):
        model: the architecture (``mergevq.ar.model.build_config`` node).
        lr: peak learning rate (after warmup).
        betas, eps: AdamW.
        weight_decay: applied to >= 2-D parameters only.
        schedule: :class:`~mergevq.training.optim.LRSchedule` keys (warmup_steps, decay, total_steps,
            min_lr_ratio); missing keys keep the defaults.
        grad_clip: max global gradient norm, or None.
        accumulate_grad_batches: micro-batches per optimizer step (Lightning accumulates them;
            derived from ``trainer.global_batch_size`` when that is set, see
            :mod:`mergevq.training.batch_plan`).
        ema_decay: decay of an EMA of the model, or None for no EMA.
        seed: the run seed (``run.seed``, supplied by the program): the model's initial weights
            depend on it alone, not on what used the global RNG before.
    """

    def __init__(
        self,
        *,
        model: MergeARConfig,
        lr: float = 3.0e-4,
        betas: Sequence[float] = (0.9, 0.95),
        eps: float = 1.0e-8,
        weight_decay: float = 0.05,
        schedule: Mapping[str, Any] | None = None,
        grad_clip: float | None = 1.0,
        accumulate_grad_batches: int = 1,
        ema_decay: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(model, MergeARConfig):
            raise ConfigError(
                "model.params.model must be a MergeAR config node (target: mergevq.ar.model.build_config), "
                f"got {type(model).__name__}"
            )
        _number("lr", lr, low=0, inclusive=False)
        _number("eps", eps, low=0, inclusive=False)
        _number("weight_decay", weight_decay, low=0)
        _number("seed", seed, low=0, integer=True)
        _number("accumulate_grad_batches", accumulate_grad_batches, low=1, integer=True)
        if grad_clip is not None:
            _number("grad_clip", grad_clip, low=0, inclusive=False)
        if ema_decay is not None and not (
            isinstance(ema_decay, (int, float)) and not isinstance(ema_decay, bool) and 0 <= ema_decay < 1
        ):
            raise ConfigError(f"model.params.ema_decay must be null or a number in [0, 1), got {ema_decay!r}")
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"model.params.betas must be two numbers in [0, 1), got {list(betas)}")

        self.schedule = LRSchedule.from_mapping(schedule)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = MergeAR(config=model)
        # Taken now, from the shapes as built: under FSDP every parameter becomes a flat 1-D shard.
        self.decay_names = frozenset(f"model.{name}" for name in decay_parameter_names(self.model))
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), betas, float(eps), float(weight_decay)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.accumulate_grad_batches = accumulate_grad_batches
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.seed = seed

    # Read by mergevq.training.run for DDP's find_unused_parameters: one backward per step reaches every
    # trainable parameter (tests/test_unused_parameters.py), so DDP needs no unused-parameter search.
    has_unused_parameters = False

    @property
    def config(self) -> MergeARConfig:
        return self.model.config

    @property
    def train_steps(self) -> int:
        """Optimizer steps taken so far (what checkpoint names, the step limit and the EMA count)."""
        return int(self.trainer.global_step) if self._trainer is not None else 0

    # ---------------------------------------------------------------------------------------------
    # optimisation

    def run_length(self) -> int:
        """Optimizer steps the LR decay spans: ``schedule.total_steps``, else the run's length: the
        smaller of ``trainer.max_steps`` (the :class:`StepLimit` callback of mergevq.training.run)
        and ``max_epochs`` x optimizer steps per epoch (Lightning's ``estimated_stepping_batches``)."""
        if self.schedule.total_steps is not None:
            return self.schedule.total_steps
        limits = [c.max_steps for c in self.trainer.callbacks if isinstance(c, StepLimit) and c.max_steps != -1]
        estimate = self.trainer.estimated_stepping_batches
        if estimate != float("inf"):
            limits.append(int(estimate))
        if not limits:
            raise ConfigError("the LR schedule needs a finite run: set trainer.max_steps, trainer.max_epochs "
                              "or model.params.schedule.total_steps")
        return min(limits)

    def configure_optimizers(self) -> Any:
        optimizer = build_adamw(self, decay_names=self.decay_names, lr=self.lr, betas=self.betas,
                                weight_decay=self.weight_decay, eps=self.eps)
        scheduler = warmup_decay_scheduler(optimizer, schedule=self.schedule, total_steps=self.run_length())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        if self.grad_clip is None:
            return
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = self.trainer.strategy.model
        if isinstance(wrapped, FullyShardedDataParallel):
            wrapped.clip_grad_norm_(self.grad_clip)  # the norm over all shards
        else:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def configure_callbacks(self) -> list[pl.Callback]:
        # A subclass of the EMACallback that mergevq.training.run adds: Lightning puts it in its place.
        return [] if self.ema_decay is None else [ModelEMA(decay=self.ema_decay)]

    # ---------------------------------------------------------------------------------------------
    # steps

    def forward(self, batch: Mapping[str, torch.Tensor]) -> AROutput:
        return self.model(batch["indices"], batch["label"], batch["num_keep"])

    def log_losses(self, prefix: str, out: AROutput, *, batch_size: int) -> None:
        values = {f"{prefix}/loss": out.loss.detach()}
        values.update({f"{prefix}/loss_sub{i}": s.detach() for i, s in enumerate(out.sub_losses)})
        self.log_dict(values, on_step=False, on_epoch=True, sync_dist=True, batch_size=batch_size)

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        values: dict[str, Any] = {"train/loss": out.loss.detach()}
        values.update({f"train/loss_sub{i}": s.detach() for i, s in enumerate(out.sub_losses)})
        values["train/lr"] = self.optimizers().param_groups[0]["lr"]
        values["train/step"] = float(self.train_steps)
        self.log_dict(values, on_step=True, on_epoch=False, batch_size=batch["indices"].shape[0])
        self.log("loss", out.loss.detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=batch["indices"].shape[0])
        return out.loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self.log_losses("val", self(batch), batch_size=batch["indices"].shape[0])

    # ---------------------------------------------------------------------------------------------
    # data check and checkpoint state

    def setup(self, stage: str) -> None:
        # Lightning calls this before configure_optimizers: a mismatch is reported first.
        datamodule = self.trainer.datamodule
        if isinstance(datamodule, CodesDataModule):
            for dataset in (datamodule.train_dataset, datamodule.val_dataset):
                if isinstance(dataset, CodesDataset):
                    check_codes_match(dataset.manifest, self.config, source=str(dataset.root))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_STATE_KEY] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_rng_state(checkpoint.get(RNG_STATE_KEY) or {})

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
