"""Experiment ``k_sweep``: how reconstruction quality depends on the number of kept tokens K.

One demo tokenizer (trained here from ``configs/demo/tokenizer.yaml``, or ``--tokenizer RUN`` reused;
its EMA weights) is evaluated on the held-out demo crops at every K of ``num_keep`` with the code
``mergevq evaluate-tokenizer`` runs (:func:`~mergevq.inference.tokenizer_eval.evaluate_tokenizer`):
PSNR, SSIM, LPIPS-VGG and rFID (the last two when the offline weights are prepared), and the learned
recovery's PSNR (decoded with the assignment predicted from the K codes) and assignment accuracy.
The plot is the paper's quality-vs-K curve, with the training candidates and the nominal K marked.

Claims tested: PSNR and SSIM fall monotonically as K shrinks; LPIPS and rFID rise (when measured);
the learned recovery's PSNR lies within ``recovery_gap_db`` of the true assignment's at the nominal K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mergevq.errors import ConfigError
from mergevq.experiments.common import (
    Claim,
    ExperimentContext,
    ExperimentReport,
    demo_data,
    demo_tokenizer,
    figure,
    markdown_table,
    save_figure,
)

TITLE = "Reconstruction quality and learned recovery against the number of kept tokens K"


@dataclass(frozen=True)
class Settings:
    tokenizer_overrides: list[str]  # overrides of configs/demo/tokenizer.yaml when the tokenizer is trained here
    num_keep: list[int]  # the K values swept (each must be reachable by the merge schedule)
    images: int  # held-out crops evaluated (0: all of them)
    batch_size: int
    rfid: bool  # rFID when the Inception weights are prepared (most of the evaluation time on CPU)
    lpips: bool  # LPIPS-VGG when its weights are prepared
    monotone_tolerance: float  # a step against the trend smaller than this fraction of the metric's range is noise
    recovery_gap_db: float  # the claim: true-assignment PSNR - learned PSNR <= this at the nominal K


# (KMetrics field, label, better when higher); the order of the plot panels and the table columns
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("psnr", "PSNR (dB)", True),
    ("ssim", "SSIM", True),
    ("lpips", "LPIPS (VGG)", False),
    ("rfid", "rFID", False),
    ("psnr_learned_recovery", "PSNR, learned recovery (dB)", True),
    ("recovery_accuracy", "assignment accuracy", True),
)


@dataclass(frozen=True)
class Trend:
    """How a metric moves as K shrinks: steps against the expected direction beyond the tolerance."""

    metric: str
    values: tuple[float, ...]  # largest K first
    violations: int  # steps that improve as K shrinks by more than the tolerance
    worst_step: float  # the largest such improvement (0: none)

    @property
    def monotone(self) -> bool:
        return self.violations == 0


def trend(metric: str, values: Sequence[float], *, higher_is_better: bool, tolerance: float) -> Trend:
    """``values`` ordered from the largest K to the smallest: quality should only get worse along it."""
    signed = [v if higher_is_better else -v for v in values]  # now: should not increase
    span = max(signed) - min(signed) if signed else 0.0
    rises = [b - a for a, b in zip(signed, signed[1:]) if b - a > tolerance * span]
    return Trend(metric=metric, values=tuple(values), violations=len(rises), worst_step=max(rises, default=0.0))


def _check(settings: Settings) -> list[int]:
    if settings.images < 0 or settings.batch_size < 1:
        raise ConfigError("experiment.images must be >= 0 and experiment.batch_size >= 1")
    if not 0 <= settings.monotone_tolerance < 1:
        raise ConfigError(f"experiment.monotone_tolerance must be in [0, 1), got {settings.monotone_tolerance}")
    ks = sorted(set(settings.num_keep), reverse=True)
    if len(ks) < 2:
        raise ConfigError(f"experiment.num_keep needs at least 2 distinct K values, got {settings.num_keep}")
    return ks


def run(settings: Settings, context: ExperimentContext) -> ExperimentReport:
    from mergevq.demo.tokenizer_stage import load_eval_networks
    from mergevq.inference.tokenizer_eval import ImageTensorDataset, check_num_keep_list, evaluate_tokenizer

    out, log = context.out, context.log
    ks = _check(settings)
    trained = demo_tokenizer(run_dir=out / "tokenizer_run", reuse=context.tokenizer,
                             overrides=settings.tokenizer_overrides, log=log)
    tokenizer = trained.tokenizer
    cfg = tokenizer.config
    ks = check_num_keep_list(tokenizer, ks)  # before the slow part: an unreachable K is a one-line error
    data = demo_data()
    images = data.val_images if settings.images == 0 else data.val_images[: settings.images]

    networks = load_eval_networks(rfid=settings.rfid)
    inception = networks.inception if settings.rfid else None
    lpips = networks.lpips if settings.lpips else None
    log(f"evaluating K = {ks} on {len(images)} held-out crops"
        + (" with rFID (Inception on CPU: most of the time)" if inception is not None else ""))
    evaluation = evaluate_tokenizer(tokenizer, ImageTensorDataset(images), num_keep=ks, inception=inception,
                                    lpips=lpips, batch_size=settings.batch_size, device=torch.device("cpu"))
    by_k = {m.num_keep: m for m in evaluation.by_k}
    nominal, candidates = cfg.num_keep, sorted(cfg.k_candidates)

    trends = {
        name: trend(name, [getattr(by_k[k], name) for k in ks], higher_is_better=higher,
                    tolerance=settings.monotone_tolerance)
        for name, _, higher in METRICS[:4] if getattr(by_k[ks[0]], name) is not None
    }
    claims = [_monotone_claim(trends, ("psnr", "ssim"), "PSNR and SSIM fall monotonically as K shrinks", ks)]
    if "lpips" in trends or "rfid" in trends:
        claims.append(_monotone_claim(trends, ("lpips", "rfid"), "LPIPS and rFID rise monotonically as K shrinks",
                                      ks))
    recovery = _recovery_claim(by_k, nominal=nominal, smallest=candidates[0], gap_db=settings.recovery_gap_db)
    if recovery is not None:
        claims.append(recovery)

    plot = _plot(ks, by_k, nominal=nominal, candidates=candidates, num_tokens=cfg.num_tokens,
                 path=out / "k_sweep.png")
    header = ("K", "PSNR (dB)", "SSIM", "LPIPS", "rFID", "PSNR learned rec. (dB)", "assignment accuracy",
              "tokens kept (distinct codes)", "codebook usage")
    rows = [(_k_label(k, nominal, candidates), m.psnr, m.ssim, m.lpips, m.rfid, m.psnr_learned_recovery,
             m.recovery_accuracy, m.mean_tokens_kept, f"{100 * m.codebook_usage:.3f}%")
            for k, m in ((k, by_k[k]) for k in ks)]
    notes = [
        f"Tokenizer: {'reused ' + str(trained.checkpoint) if trained.reused else 'trained here'} "
        f"({cfg.num_tokens} tokens per image, nominal K = {nominal} (*), training candidates {candidates} (c); "
        "EMA weights).",
        f"{evaluation.num_images} held-out demo crops of {cfg.image_size} px; PSNR = 10 log10(1 / MSE) on [0, 1] "
        "per image, then the mean; rFID over these crops only (a small-sample FID: compare K values, not papers).",
        "Learned recovery: the assignment is predicted from the K codes alone; accuracy is the fraction of the "
        f"{cfg.num_tokens} positions given their true kept token (1 at K = L, where decoding needs no prediction).",
        f"Monotone: no step towards smaller K improves a metric by more than {settings.monotone_tolerance:g} "
        "of its range over the sweep.",
        *networks.missing,
    ]
    if not settings.rfid:
        notes.append("rFID not computed (experiment.rfid=false).")
    if not settings.lpips:
        notes.append("LPIPS not computed (experiment.lpips=false).")
    numbers = {
        "checkpoint": str(trained.checkpoint),
        "reused_tokenizer": trained.reused,
        "train_seconds": round(trained.train_seconds, 1),
        "eval_seconds": round(evaluation.total_seconds, 1),
        "num_tokens": cfg.num_tokens,
        "nominal_k": nominal,
        "k_candidates": candidates,
        "validation_images": evaluation.num_images,
        "by_k": [asdict(by_k[k]) for k in ks],
        "trends": {name: {**asdict(t), "monotone": t.monotone} for name, t in trends.items()},
    }
    return ExperimentReport(
        name="k_sweep", title=TITLE, command=context.command, settings=asdict(settings), numbers=numbers,
        table=markdown_table(header, rows), plots=(plot,), claims=tuple(claims), seconds=context.elapsed(),
        notes=tuple(notes))


def _k_label(k: int, nominal: int, candidates: Sequence[int]) -> str:
    return f"{k}{' *' if k == nominal else ''}{' c' if k in candidates else ''}"


def _monotone_claim(trends: dict[str, Trend], names: Sequence[str], statement: str, ks: Sequence[int]) -> Claim:
    parts, held = [], True
    for name in names:
        if name not in trends:
            parts.append(f"{name} not measured")
            continue
        t = trends[name]
        held = held and t.monotone
        parts.append(f"{name} {t.values[0]:.4g} at K = {ks[0]} -> {t.values[-1]:.4g} at K = {ks[-1]}, "
                     f"{t.violations} of {len(ks) - 1} steps against the trend"
                     + (f" (worst {t.worst_step:.3g})" if t.violations else ""))
    return Claim(statement=statement, held=held, measured="; ".join(parts))


def _recovery_claim(by_k: dict, *, nominal: int, smallest: int, gap_db: float) -> Claim | None:
    at = by_k.get(nominal)
    if at is None or at.psnr_learned_recovery is None:
        return None  # nominal K not swept, or no learned recovery
    gap = at.psnr - at.psnr_learned_recovery
    measured = (f"K = {nominal}: true assignment {at.psnr:.2f} dB, learned {at.psnr_learned_recovery:.2f} dB "
                f"(gap {gap:.2f} dB, {100 * at.recovery_accuracy:.1f} % of positions assigned correctly)")
    low = by_k.get(smallest)
    if low is not None and smallest != nominal:
        measured += (f"; K = {smallest}: gap {low.psnr - low.psnr_learned_recovery:.2f} dB, "
                     f"{100 * low.recovery_accuracy:.1f} % correct")
    return Claim(statement=f"the learned recovery's PSNR is within {gap_db:g} dB of the true assignment's at the "
                           f"nominal K = {nominal}", held=gap <= gap_db, measured=measured)


def _plot(ks: Sequence[int], by_k: dict, *, nominal: int, candidates: Sequence[int], num_tokens: int,
          path: Path) -> Path:
    """2 x 3 panels against K; light vertical lines: training candidates, dashed: the nominal K."""
    fig, axes = figure(3, nrows=2, size=(4.0, 3.0))
    for ax, (name, label, _) in zip(axes, METRICS):
        values = [getattr(by_k[k], name) for k in ks]
        for c in candidates:
            ax.axvline(c, color="0.85", lw=0.8, zorder=0)
        ax.axvline(nominal, color="0.55", lw=1.0, ls="--", zorder=0, label=f"nominal K = {nominal}")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("K (kept tokens)")
        if any(v is None or not math.isfinite(v) for v in values):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="0.4")
            continue
        ax.plot(ks, values, "o-", ms=3.5, label="learned assignment" if name == "psnr_learned_recovery" else None)
        if name == "psnr_learned_recovery":
            ax.plot(ks, [by_k[k].psnr for k in ks], "s--", ms=3, color="0.45", label="true assignment")
        if name == "recovery_accuracy":
            ax.set_ylim(0, 1.05)
            if by_k.get(max(ks)) is not None and by_k[max(ks)].num_keep == num_tokens:
                ax.annotate("K = L: identity", (max(ks), 1.0), xytext=(-6, -14), textcoords="offset points",
                            ha="right", fontsize=7, color="0.4")
        if name in ("psnr", "psnr_learned_recovery"):
            ax.legend(fontsize=7)
    fig.suptitle("light vertical lines: the training K candidates", fontsize=9)
    return save_figure(fig, path)


__all__ = ["METRICS", "Settings", "Trend", "run", "trend"]
