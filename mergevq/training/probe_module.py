"""Linear probe of a frozen MergeVQ encoder (DESIGN §6 "Representation"; MAE's linear-probing recipe).

Protocol (MAE, He et al. 2022, appendix A.2): the encoder is frozen (no gradients, eval mode, held
outside the module's parameters and state dict by :class:`ProbeEncoder`); its feature at K kept
tokens ([CLS] or the mean of the kept tokens) goes through ``BatchNorm1d(affine=False)`` and a
linear classifier initialised with a truncated normal of std 0.01. Only the head trains: LARS (or
SGD) with momentum 0.9, weight decay 0, ``lr = base_lr * batch_size / 256``, linear warmup then a
cosine decay to ``min_lr_ratio * lr``, stepped every optimizer step (``mergevq.training.optim``'s
schedule); cross-entropy loss. MAE trains 90 epochs with 10 warmup epochs at batch 16384
(``configs/probe/linear.yaml``).

Two data paths, chosen by ``ProbeSettings.precompute``:

* ``True`` (default): the encoder runs once over the training set (no augmentation) and every epoch
  trains the head on the stored (N, D) feature table: epochs cost almost nothing.
* ``False``: the encoder runs on every training batch, so the data set's own augmentation (random
  crop, flip) gives new features each epoch, as in MAE.

The validation features are always computed once (validation images are never augmented).
:func:`fit_linear_probe` runs the whole thing through a Lightning ``Trainer`` and returns a
:class:`ProbeResult` with the top-1 / top-5 accuracy of the final head on the validation set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from mergevq.errors import ConfigError
from mergevq.inference.probe_features import (
    FeatureKind,
    ProbeEncoder,
    ProbeFeatures,
    batch_labels,
    check_feature,
    extract_features,
)
from mergevq.metrics.probe import (
    OptimizerName,
    TopK,
    build_probe_optimizer,
    check_optimizer,
    topk_correct,
)
from mergevq.tokenizer.model import MergeVQ
from mergevq.training.optim import LRSchedule, warmup_decay_scheduler
from taming.data.base import collate_skip_none

__all__ = ["LinearHead", "LinearProbeModule", "ProbeResult", "ProbeSettings", "evaluate_head", "fit_linear_probe"]

_LR_BATCH = 256  # MAE's scaling rule: lr = base_lr * batch_size / 256


def _check(name: str, value: Any, *, low: float, integer: bool = False, inclusive: bool = True,
           high: float | None = None) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    bad = isinstance(value, bool) or not ok_type or (value < low if inclusive else value <= low)
    if not bad and high is not None and value > high:
        bad = True
    if bad:
        kind = "an int" if integer else "a number"
        relation = ">=" if inclusive else ">"
        upper = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"probe.{name} must be {kind} {relation} {low}{upper}, got {value!r}")


@dataclass(frozen=True)
class ProbeSettings:
    """The ``probe`` section of a linear-probe config (plain values; see configs/probe/linear.yaml).

    ``num_keep``: K (None: the tokenizer's nominal K). ``feature``: ``cls`` | ``mean``.
    ``precompute``: encode the training set once (see the module docstring). ``batch_size``: images
    (or features) per optimizer step; ``extract_batch_size``: images per encoder call when features
    are precomputed. ``base_lr``: the LR at batch 256 (``lr = base_lr * batch_size / 256``).
    ``warmup_epochs``: may be fractional; counted in optimizer steps. ``image_size``: the side the
    data sets resize to (the command sets it to the tokenizer's image_size).
    """

    num_keep: int | None = None
    feature: FeatureKind = "cls"
    precompute: bool = True
    epochs: int = 90
    batch_size: int = 16384
    extract_batch_size: int = 256
    optimizer: OptimizerName = "lars"
    base_lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    trust_coeff: float = 0.001
    warmup_epochs: float = 10
    min_lr_ratio: float = 0.0
    seed: int = 0
    image_size: int = 256
    accelerator: str = "auto"
    precision: str = "32"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.num_keep is not None:
            _check("num_keep", self.num_keep, low=1, integer=True)
        check_feature(self.feature)
        check_optimizer(self.optimizer)
        for name in ("precompute", "progress_bar"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"probe.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "extract_batch_size", "image_size"):
            _check(name, getattr(self, name), low=1, integer=True)
        _check("seed", self.seed, low=0, integer=True)
        _check("base_lr", self.base_lr, low=0, inclusive=False)
        _check("momentum", self.momentum, low=0, high=1)
        _check("weight_decay", self.weight_decay, low=0)
        _check("trust_coeff", self.trust_coeff, low=0, inclusive=False)
        _check("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        _check("warmup_epochs", self.warmup_epochs, low=0)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"probe.warmup_epochs={self.warmup_epochs} must be below probe.epochs={self.epochs}")

    @property
    def lr(self) -> float:
        """The peak learning rate: ``base_lr * batch_size / 256``."""
        return self.base_lr * self.batch_size / _LR_BATCH


class LinearHead(nn.Module):
    """features (B, D) -> logits (B, C): ``BatchNorm1d(D, affine=False)`` then ``Linear(D, C)`` with
    MAE's initialisation (weights truncated normal, std 0.01; bias 0)."""

    def __init__(self, *, dim: int, num_classes: int) -> None:
        super().__init__()
        if dim < 1 or num_classes < 2:
            raise ConfigError(f"a linear probe needs dim >= 1 and at least 2 classes, got dim={dim}, "
                              f"num_classes={num_classes}")
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(features))


class LinearProbeModule(pl.LightningModule):
    """Trains a :class:`LinearHead` on frozen encoder features.

    Args:
        head: the head to train (its parameters are the only trainable ones).
        settings: optimiser and schedule (``optimizer``, ``lr``, ``momentum``, ``weight_decay``,
            ``trust_coeff``, ``epochs``, ``warmup_epochs``, ``min_lr_ratio``).
        encoder: None: training batches are ``(features (B, D), labels (B,))`` pairs; else the frozen
            encoder, and training batches are image batches ``{"image", "class_label"}`` it encodes.

    Validation batches are always ``(features, labels)``; ``val/top1`` and ``val/top5`` (percent)
    are logged at each validation epoch end, summed over the whole validation set, and val/top1 is
    appended to ``val_top1_history``.
    """

    def __init__(self, *, head: LinearHead, settings: ProbeSettings, encoder: ProbeEncoder | None = None) -> None:
        super().__init__()
        self.head = head
        self.settings = settings
        self.encoder = encoder  # a FrozenHolder: no parameters or state-dict entries of its own
        self._val_counts: torch.Tensor | None = None  # correct top-1, top-5, total over the epoch
        self.val_top1_history: list[float] = []  # val/top1 of every validation epoch (the learning curve)

    def _training_inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.encoder is None:
            features, labels = batch
            return features, labels
        if "image" not in batch:  # every image of the batch was unreadable
            return None
        labels = batch_labels(batch, where="data.params.train").to(self.device)
        return self.encoder(batch["image"]), labels  # (B, D) without a graph: the encoder is frozen

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        inputs = self._training_inputs(batch)
        if inputs is None:
            return None
        features, labels = inputs
        loss = F.cross_entropy(self.head(features), labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=labels.numel())
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=labels.numel())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(3, dtype=torch.int64, device=self.device)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        features, labels = batch
        correct = topk_correct(self.head(features), labels, ks=(1, 5))  # (2,)
        self._val_counts += torch.cat([correct, correct.new_tensor([labels.numel()])])

    def on_validation_epoch_end(self) -> None:
        top1, top5, total = self._val_counts.tolist()
        accuracy = 100.0 * top1 / max(total, 1)
        if not self.trainer.sanity_checking:
            self.val_top1_history.append(accuracy)
        self.log("val/top1", accuracy)
        self.log("val/top5", 100.0 * top5 / max(total, 1))

    def configure_optimizers(self) -> Any:
        s = self.settings
        optimizer = build_probe_optimizer(self.head.named_parameters(), name=s.optimizer, lr=s.lr,
                                          momentum=s.momentum, weight_decay=s.weight_decay,
                                          trust_coeff=s.trust_coeff)
        total = int(self.trainer.estimated_stepping_batches)
        # Warmup given in epochs (MAE), counted in optimizer steps like the rest of the schedule.
        warmup = min(total - 1, round(s.warmup_epochs * total / s.epochs))
        schedule = LRSchedule(warmup_steps=warmup, decay="cosine", min_lr_ratio=float(s.min_lr_ratio))
        scheduler = warmup_decay_scheduler(optimizer, schedule=schedule, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@torch.no_grad()
def evaluate_head(head: LinearHead, features: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 4096) -> TopK:
    """Top-1 / top-5 accuracy of ``head`` (in eval mode: BatchNorm uses its running statistics) on
    ``features`` (N, D) and ``labels`` (N,)."""
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    counts = torch.zeros(2, dtype=torch.int64)
    for start in range(0, features.shape[0], batch_size):
        logits = head(features[start:start + batch_size].to(device))  # (b, C)
        counts += topk_correct(logits, labels[start:start + batch_size].to(device), ks=(1, 5)).cpu()
    head.train(was_training)
    n = int(labels.numel())
    return TopK(top1=100.0 * int(counts[0]) / n, top5=100.0 * int(counts[1]) / n, count=n)


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`fit_linear_probe` measured. Accuracies in percent, on the validation set, of the
    head after the last epoch."""

    top1: float
    top5: float
    num_keep: int
    feature: str
    feature_dim: int
    num_classes: int
    num_train: int
    num_val: int
    skipped_train: int  # unreadable training images (counted during precomputation only)
    skipped_val: int
    epochs: int
    optimizer_steps: int
    lr: float
    extract_seconds: float  # encoder passes that precede training (validation set, training set if precomputed)
    train_seconds: float
    val_top1_per_epoch: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _num_classes(train: Dataset, validation: Dataset, labels: torch.Tensor) -> int:
    """Classes from the data sets' ``classes`` lists when they have them (and they agree), else the
    largest training label + 1."""
    names = [getattr(d, "classes", None) for d in (train, validation)]
    if all(isinstance(n, (list, tuple)) and n for n in names) and list(names[0]) != list(names[1]):
        raise ConfigError(
            f"the training and validation sets have different classes ({len(names[0])} vs {len(names[1])}; "
            "first differences: "
            f"{sorted(set(names[0]) ^ set(names[1]))[:3]}): give both the same class sub-folders"
        )
    if isinstance(names[0], (list, tuple)) and names[0]:
        return len(names[0])
    return int(labels.max()) + 1


def fit_linear_probe(
    *,
    tokenizer: MergeVQ,
    train: Dataset,
    validation: Dataset,
    settings: ProbeSettings,
    num_workers: int = 0,
    train_loader: DataLoader | None = None,
) -> ProbeResult:
    """Train and evaluate a linear probe of ``tokenizer``'s frozen encoder (module docstring).

    ``train`` / ``validation``: labelled image data sets (items ``{"image", "class_label"}``) at the
    tokenizer's image size. ``train_loader``: the training batches when ``settings.precompute`` is
    False (e.g. ``ImageDataModule.train_dataloader()``, with the data set's augmentation); default:
    a shuffled loader over ``train``. The tokenizer's weights are never changed."""
    from mergevq.backend import select_backend

    pl.seed_everything(settings.seed, workers=True, verbose=False)
    backend = select_backend(accelerator=settings.accelerator, precision=str(settings.precision), devices=1)
    autocast_dtype = backend.inference_autocast_dtype("linear-probe feature extraction")
    device = backend.device(0)
    encoder = ProbeEncoder(tokenizer=tokenizer, num_keep=settings.num_keep, feature=settings.feature)

    start = time.perf_counter()

    def features_of(dataset: Dataset, where: str) -> ProbeFeatures:
        return extract_features(encoder, dataset, batch_size=settings.extract_batch_size, num_workers=num_workers,
                                device=device, autocast_dtype=autocast_dtype, where=where)

    val = features_of(validation, "data.params.validation")
    train_features = features_of(train, "data.params.train") if settings.precompute else None
    extract_seconds = time.perf_counter() - start

    if train_features is not None:
        num_train = int(train_features.labels.numel())
        if num_train < 2:
            raise ConfigError("data.params.train: the linear probe needs at least 2 readable training images")
        loader = DataLoader(TensorDataset(train_features.features, train_features.labels),
                            batch_size=settings.batch_size, shuffle=True,
                            drop_last=num_train >= settings.batch_size)  # BatchNorm needs > 1 sample per batch
        num_classes = _num_classes(train, validation, train_features.labels)
    else:
        num_train = len(train)
        loader = train_loader if train_loader is not None else DataLoader(
            train, batch_size=settings.batch_size, shuffle=True, num_workers=num_workers,
            drop_last=num_train >= settings.batch_size, collate_fn=collate_skip_none)
        num_classes = _num_classes(train, validation, val.labels)
    if int(val.labels.max()) >= num_classes:
        raise ConfigError(f"data.params.validation has label {int(val.labels.max())}, but the training set has "
                          f"{num_classes} classes")
    val_loader = DataLoader(TensorDataset(val.features, val.labels), batch_size=settings.extract_batch_size)

    head = LinearHead(dim=encoder.dim, num_classes=num_classes)
    module = LinearProbeModule(head=head, settings=settings, encoder=None if settings.precompute else encoder)
    kwargs = backend.trainer_kwargs()
    trainer = pl.Trainer(**kwargs, max_epochs=settings.epochs, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=settings.progress_bar,
                         num_sanity_val_steps=0, log_every_n_steps=1)
    start = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    train_seconds = time.perf_counter() - start

    final = evaluate_head(head.to(device), val.features, val.labels)
    return ProbeResult(
        top1=final.top1, top5=final.top5, num_keep=encoder.num_keep, feature=encoder.feature,
        feature_dim=encoder.dim, num_classes=num_classes, num_train=num_train, num_val=final.count,
        skipped_train=0 if train_features is None else train_features.num_skipped, skipped_val=val.num_skipped,
        epochs=settings.epochs, optimizer_steps=int(trainer.global_step), lr=settings.lr,
        extract_seconds=extract_seconds, train_seconds=train_seconds, val_top1_per_epoch=list(module.val_top1_history),
    )
