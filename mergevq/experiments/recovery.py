"""Experiment ``recovery``: does the learned recovery approach the true assignment with training?

One training run of the demo tokenizer recipe (``configs/demo/tokenizer.yaml``) for ``train_steps``
steps keeps a checkpoint at every step count of ``eval_steps``; each is evaluated (EMA weights) on the
held-out demo crops at the nominal and the smallest training K with
:func:`~mergevq.inference.tokenizer_eval.evaluate_tokenizer`: the learned recovery's assignment
accuracy (fraction of positions given their true kept token), the PSNR with the true assignment and
the PSNR with the learned one.

The recipe's LR drop (x0.1 after 15 epochs = step 930 of its 1,000 steps, ~93 %) is moved to the same
fraction ``lr_drop_at`` of the longer run, so the run ends as the recipe does; the checkpoints before
it are at the full learning rate. ``--tokenizer RUN`` evaluates the checkpoints of an earlier run folder
instead of training (those at ``eval_steps``).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mergevq.errors import ConfigError
from mergevq.experiments.common import (
    TOKENIZER_CONFIG,
    Claim,
    ExperimentContext,
    ExperimentReport,
    demo_data,
    figure,
    markdown_table,
    save_figure,
)

TITLE = "Learned recovery against training length: assignment accuracy and PSNR (true vs learned assignment)"
_STEP = re.compile(r"^step(\d+)-")  # mergevq.training.checkpoint.checkpoint_name


@dataclass(frozen=True)
class Settings:
    tokenizer_overrides: list[str]  # overrides of configs/demo/tokenizer.yaml (the steps / checkpoints are set here)
    train_steps: int  # length of the one training run
    eval_steps: list[int]  # step counts whose checkpoints are evaluated (train_steps is always one)
    lr_drop_at: float | None  # the LR drop (x0.1) after this fraction of train_steps; null: none
    images: int  # held-out crops evaluated (0: all of them)
    batch_size: int


@dataclass(frozen=True)
class Point:
    """One checkpoint at one K."""

    step: int
    num_keep: int
    accuracy: float
    psnr_true: float  # dB, the encoder's merge assignment
    psnr_learned: float  # dB, the assignment predicted from the K codes

    @property
    def gap(self) -> float:
        return self.psnr_true - self.psnr_learned


@dataclass(frozen=True)
class Schedule:
    """The training-length overrides of the one run and what they mean."""

    overrides: list[str]
    steps_per_epoch: int
    drop_epoch: int | None  # None: no drop
    drop_step: int | None


def schedule(settings: Settings, *, train_images: int, batch_size: int) -> Schedule:
    """Checkpoints every gcd(eval_steps) steps, all kept; the LR drop at ``lr_drop_at`` of the run
    (in epochs: the module drops at epoch ends); enough epochs for ``train_steps``."""
    steps_per_epoch = train_images // batch_size  # the training loader drops the last partial batch
    if steps_per_epoch < 1:
        raise ConfigError(f"{train_images} training crops give no full batch of {batch_size}")
    every = math.gcd(*settings.eval_steps, settings.train_steps)
    epochs = math.ceil(settings.train_steps / steps_per_epoch) + 1
    overrides = [f"trainer.max_steps={settings.train_steps}", f"trainer.max_epochs={epochs}",
                 f"trainer.checkpoint_every_n_steps={every}", "trainer.keep_checkpoints=-1"]
    drop_epoch = drop_step = None
    if settings.lr_drop_at is not None:
        drop_epoch = max(1, round(settings.lr_drop_at * settings.train_steps / steps_per_epoch))
        drop_step = drop_epoch * steps_per_epoch
        overrides.append(f"model.params.lr_drop_epochs=[{drop_epoch}]")
    else:
        overrides.append("model.params.lr_drop_epochs=[]")
    return Schedule(overrides=overrides, steps_per_epoch=steps_per_epoch, drop_epoch=drop_epoch, drop_step=drop_step)


def _check(settings: Settings) -> list[int]:
    if settings.train_steps < 1 or settings.images < 0 or settings.batch_size < 1:
        raise ConfigError("experiment.train_steps and experiment.batch_size must be >= 1, experiment.images >= 0")
    steps = sorted({*settings.eval_steps, settings.train_steps})
    if steps[0] < 1 or steps[-1] > settings.train_steps:
        raise ConfigError(f"experiment.eval_steps {settings.eval_steps} must lie in [1, train_steps="
                          f"{settings.train_steps}]")
    if settings.lr_drop_at is not None and not 0 < settings.lr_drop_at < 1:
        raise ConfigError(f"experiment.lr_drop_at must be in (0, 1) or null, got {settings.lr_drop_at}")
    return steps


def checkpoints_at(run_dir: Path, steps: list[int]) -> dict[int, Path]:
    """{step: checkpoint} of a run folder for the wanted steps (the last file of a step: an epoch end
    written at that step follows the step checkpoint)."""
    from mergevq.training.checkpoint import list_checkpoints

    found: dict[int, Path] = {}
    for path in list_checkpoints(Path(run_dir) / "checkpoints"):  # oldest first
        match = _STEP.match(path.name)
        if match and int(match.group(1)) in steps:
            found[int(match.group(1))] = path
    return found


def _train(settings: Settings, steps: list[int], context: ExperimentContext) -> tuple[dict[int, Path], Schedule, float]:
    import time

    from mergevq.config import load_with_origins
    from mergevq.paths import resolve_config
    from mergevq.training.run import train

    config = resolve_config(TOKENIZER_CONFIG)
    loaded = load_with_origins([config], list(settings.tokenizer_overrides))
    batch = int(loaded.select("data.params.batch_size"))
    plan = schedule(settings, train_images=len(demo_data(settings.tokenizer_overrides).train), batch_size=batch)
    run_dir = context.out / "tokenizer_run"
    context.log(f"training {TOKENIZER_CONFIG} for {settings.train_steps} steps into {run_dir}, checkpoints at "
                f"{steps}; LR drop after epoch {plan.drop_epoch} (step {plan.drop_step})")
    start = time.perf_counter()
    train([config], [*settings.tokenizer_overrides, *plan.overrides], run_dir=run_dir)
    seconds = time.perf_counter() - start
    found = checkpoints_at(run_dir, steps)
    for path in (run_dir / "checkpoints").glob("*.ckpt"):  # the epoch-end ones nobody evaluates: disk only
        if path not in found.values():
            path.unlink()
    return found, plan, seconds


def run(settings: Settings, context: ExperimentContext) -> ExperimentReport:
    from mergevq.inference.tokenizer_eval import ImageTensorDataset, evaluate_tokenizer
    from mergevq.training.export import tokenizer_from_checkpoint

    steps = _check(settings)
    plan: Schedule | None = None
    train_seconds = 0.0
    if context.tokenizer is not None:
        if not Path(context.tokenizer).is_dir():
            raise ConfigError(f"--tokenizer {context.tokenizer}: recovery needs a run folder (several checkpoints)")
        found = checkpoints_at(context.tokenizer, steps)
        context.log(f"evaluating the checkpoints of {context.tokenizer} at steps {sorted(found)}")
    else:
        found, plan, train_seconds = _train(settings, steps, context)
    if len(found) < 2:
        raise ConfigError(f"found checkpoints at steps {sorted(found)} only; recovery compares at least 2 of {steps}")
    data = demo_data(settings.tokenizer_overrides)
    images = data.val_images if settings.images == 0 else data.val_images[: settings.images]

    points: list[Point] = []
    eval_seconds = 0.0
    ks: list[int] = []
    for step, path in sorted(found.items()):
        tokenizer = tokenizer_from_checkpoint(path).eval()  # EMA weights
        if tokenizer.recovery is None:
            raise ConfigError(f"{path}: this tokenizer has no learned recovery (recovery_depth=0)")
        ks = sorted({tokenizer.config.num_keep, min(tokenizer.config.k_candidates)}, reverse=True)
        evaluation = evaluate_tokenizer(tokenizer, ImageTensorDataset(images), num_keep=ks, inception=None, lpips=None,
                                        batch_size=settings.batch_size, device=torch.device("cpu"))
        eval_seconds += evaluation.total_seconds
        for m in evaluation.by_k:
            points.append(Point(step=step, num_keep=m.num_keep, accuracy=m.recovery_accuracy, psnr_true=m.psnr,
                                psnr_learned=m.psnr_learned_recovery))
        context.log(f"step {step}: " + "; ".join(f"K = {p.num_keep}: accuracy {p.accuracy:.3f}, PSNR {p.psnr_true:.2f} "
                                                  f"/ {p.psnr_learned:.2f} dB" for p in points[-len(ks):]))

    claims = tuple(_claim([p for p in points if p.num_keep == k]) for k in ks)
    plot = _plot(points, ks, drop_step=plan.drop_step if plan else None, path=context.out / "recovery.png")
    header = ("step", "K", "assignment accuracy", "PSNR true assign. (dB)", "PSNR learned assign. (dB)", "gap (dB)")
    rows = [(p.step, p.num_keep, p.accuracy, p.psnr_true, p.psnr_learned, p.gap) for p in points]
    notes = [
        f"{len(images)} held-out demo crops; EMA weights of each checkpoint; PSNR = 10 log10(1 / MSE) on [0, 1] per "
        "image, then the mean. Accuracy: fraction of positions whose predicted kept token is the true one.",
        "Gap = PSNR with the true assignment - PSNR with the learned one (0: the learned recovery is as good).",
    ]
    if plan is not None:
        notes.append(f"One run of {settings.train_steps} steps ({plan.steps_per_epoch} steps per epoch); the recipe's "
                     f"LR drop (x0.1 at ~93 % of its 1,000 steps) moved to epoch {plan.drop_epoch} = step "
                     f"{plan.drop_step} (lr_drop_at = {settings.lr_drop_at}), so checkpoints before it are at the full "
                     "LR and differ from a finished recipe of that length.")
    else:
        notes.append(f"Checkpoints of {context.tokenizer} (its own LR schedule).")
    numbers = {
        "points": [{**asdict(p), "gap": p.gap} for p in points],
        "checkpoints": {str(s): str(p) for s, p in sorted(found.items())},
        "num_keep": ks,
        "validation_images": len(images),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_step": round(train_seconds / settings.train_steps, 3) if plan is not None else None,
        "eval_seconds": round(eval_seconds, 1),
        "lr_drop": None if plan is None else {"epoch": plan.drop_epoch, "step": plan.drop_step,
                                              "steps_per_epoch": plan.steps_per_epoch},
    }
    return ExperimentReport(
        name="recovery", title=TITLE, command=context.command, settings=asdict(settings), numbers=numbers,
        table=markdown_table(header, rows), plots=(plot,), claims=claims, seconds=context.elapsed(),
        notes=tuple(notes))


def _claim(points: list[Point]) -> Claim:
    """Held when the gap at the last checkpoint is smaller than at the first."""
    first, last = points[0], points[-1]
    measured = (f"K = {first.num_keep}: gap {first.gap:.2f} dB at step {first.step} -> {last.gap:.2f} dB at step "
                f"{last.step} (true {last.psnr_true:.2f} dB, learned {last.psnr_learned:.2f} dB); accuracy "
                f"{first.accuracy:.3f} -> {last.accuracy:.3f}")
    return Claim(statement=f"the learned-recovery PSNR approaches the true-assignment PSNR with training "
                           f"(K = {first.num_keep})", held=last.gap < first.gap, measured=measured)


def _plot(points: list[Point], ks: list[int], *, drop_step: int | None, path: Path) -> Path:
    fig, axes = figure(1 + len(ks), size=(4.2, 3.2))
    for k in ks:
        mine = [p for p in points if p.num_keep == k]
        axes[0].plot([p.step for p in mine], [p.accuracy for p in mine], "o-", ms=3.5, label=f"K = {k}")
    axes[0].set(title="assignment accuracy", xlabel="training steps", ylim=(0, 1.02))
    for ax, k in zip(axes[1:], ks):
        mine = [p for p in points if p.num_keep == k]
        ax.plot([p.step for p in mine], [p.psnr_true for p in mine], "s--", ms=3, color="0.45", label="true assignment")
        ax.plot([p.step for p in mine], [p.psnr_learned for p in mine], "o-", ms=3.5, label="learned assignment")
        ax.set(title=f"PSNR at K = {k} (dB)", xlabel="training steps")
    for ax in axes:
        if drop_step is not None:
            ax.axvline(drop_step, color="0.7", lw=0.8, ls=":", label="LR drop")
        ax.legend(fontsize=7)
    return save_figure(fig, path)


__all__ = ["Point", "Schedule", "Settings", "checkpoints_at", "run", "schedule"]
