"""Experiment ``alignment``: does global alignment with a frozen teacher buy representation, and what
does each tokenizer family trade for it?

The paper aligns the encoder's [CLS] token to DINOv2; offline, the teacher here is the ImageNet
VGG-16 of the prepared LPIPS weights (``source: lpips-vgg16``, the same Teacher interface, 512-d
pooled relu5_3 feature) on the demo crops upsampled to ``teacher_size``. Each family of
``families`` (G, G+R, R at demo scale) trains ``configs/demo/tokenizer.yaml`` with its overrides and
the teacher; each family in ``controls`` trains again with the same settings and seed but no teacher
(the no-alignment control; same [CLS] head width, so both start from the same initial weights).

Measured per run, with the EMA weights on the 200 held-out crops: PSNR / SSIM at the nominal K
(``evaluate_tokenizer``), rFID of the same reconstructions (the prepared FID Inception; the held-out
crops' features are computed once for all runs), and the linear-probe top-1 of the frozen encoder for
each of ``probe_features`` ([CLS] token, mean of the kept tokens; the definitions of
:class:`~mergevq.inference.probe_features.ProbeEncoder`): an L2-regularised multinomial logistic
regression on the standardised features of the 2,000 training crops, tested on the held-out crops.
Why not ``fit_linear_probe``: its Lightning loop costs ~10 s per fit on 2 cores, and a run needs two.
Plot: probe top-1 against PSNR, one marker per run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mergevq.errors import ConfigError, WeightsError
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

TITLE = "Global alignment with an offline teacher (VGG-16 of LPIPS): G vs G+R vs R vs no alignment"
TEACHER_TARGET = "mergevq.tokenizer.alignment.build_teacher"


@dataclass(frozen=True)
class Settings:
    families: dict[str, list[str]]  # family -> overrides of configs/demo/tokenizer.yaml that define it
    train_families: list[str]  # the families trained, in this order, each aligned to the teacher
    controls: list[str]  # of those, the ones also trained without the teacher (the no-alignment control)
    train_overrides: list[str]  # shared by every run (steps, LR drop, ...)
    data_overrides: list[str]  # demo_data.* changes, for training and evaluation alike (quick: fewer crops)
    teacher_size: int  # side (px) of the teacher's view of a crop
    teacher_weights: str | None  # folder written by `mergevq prepare-weights` (None: its default)
    probe_features: list[str]  # "cls" and / or "mean"
    probe_c: float  # inverse L2 strength of the logistic-regression probe (sklearn's C)
    fid: bool  # rFID when the Inception weights are prepared
    psnr_tolerance: float  # the claim: alignment costs at most this many dB of PSNR


@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    aligned: bool


@dataclass(frozen=True)
class RunResult:
    name: str
    family: str
    aligned: bool
    preset: str
    nominal_k: int
    num_tokens: int
    steps: int
    train_seconds: float
    seconds_per_step: float  # wall time of the whole train() call / steps (start-up included)
    psnr: float
    ssim: float
    rfid: float | None
    probe_top1: dict[str, float]  # feature -> top-1 on the held-out crops, 0..1
    final_align_loss: float | None


def variants(settings: Settings) -> list[Variant]:
    if not settings.train_families:
        raise ConfigError("experiment.train_families is empty; name at least one of experiment.families")
    for key, names, known in (("train_families", settings.train_families, settings.families),
                              ("controls", settings.controls, settings.train_families)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"experiment.{key} names {', '.join(unknown)}, not among {', '.join(known)}")
    out = []
    for family in settings.train_families:
        out.append(Variant(name=f"{family} + VGG", family=family, aligned=True))
        if family in settings.controls:
            out.append(Variant(name=f"{family} no align", family=family, aligned=False))
    return out


def _teacher_node(settings: Settings, *, random_init: bool) -> str:
    path = "null" if settings.teacher_weights is None else f"'{settings.teacher_weights}'"
    return (f"model.params.teacher={{target: {TEACHER_TARGET}, params: {{source: lpips-vgg16, path: {path}, "
            f"random_init: {str(random_init).lower()}}}}}")


def run_overrides(settings: Settings, variant: Variant, *, random_teacher: bool) -> list[str]:
    """Every override of one run: the family's, the views (both runs of a family: the same data
    pipeline and random stream), the [CLS] head at the teacher's width (both runs: the same initial
    weights), the teacher only when aligned, then the shared ones."""
    from mergevq.tokenizer.vgg_teacher import FEATURE_DIM

    return [
        *settings.data_overrides,
        *settings.families[variant.family],
        f"+model.params.tokenizer.params.changes.cls_dim={FEATURE_DIM}",
        "data.params.train.params.views=true",
        f"+data.params.train.params.view_size={settings.teacher_size}",
        _teacher_node(settings, random_init=random_teacher) if variant.aligned else "model.params.teacher=null",
        "trainer.progress_bar=false",
        "+trainer.logger=csv",  # the final align loss is read back from metrics.csv
        "trainer.limit_val_batches=0",  # no Lightning validation (its sanity check alone costs seconds): evaluated below
        *settings.train_overrides,
    ]


@torch.no_grad()
def encoder_features(tokenizer, images: torch.Tensor, *, batch_size: int = 250) -> dict[str, torch.Tensor]:
    """One pass of the frozen encoder at the nominal K: {"cls": (N, D) last [CLS], "mean": (N, D) mean of
    the K kept tokens} (ProbeEncoder's two features, from a single pass)."""
    k = tokenizer.config.num_keep
    parts: dict[str, list[torch.Tensor]] = {"cls": [], "mean": []}
    for lo in range(0, len(images), batch_size):
        out = tokenizer.encoder(images[lo:lo + batch_size], num_keep=k)  # tokens (b, K, D), cls (b, D)
        parts["cls"].append(out.cls.float())
        parts["mean"].append(out.tokens.float().mean(dim=1))
    return {name: torch.cat(chunks) for name, chunks in parts.items()}


def probe_top1(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
               *, c: float) -> float:
    """Top-1 (0..1) on ``test`` of a multinomial logistic regression fit on standardised ``train``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    model.fit(train.double().numpy(), train_labels.numpy())
    return float(model.score(test.double().numpy(), test_labels.numpy()))


def _teacher_choice(settings: Settings, context: ExperimentContext) -> tuple[bool, str | None]:
    """(random stand-in?, note). The real weights are required unless --quick."""
    from mergevq.pretrained import COMMAND
    from mergevq.tokenizer.vgg_teacher import weights_available

    if weights_available(settings.teacher_weights):
        return False, None
    if not context.quick:
        where = settings.teacher_weights or "the default weights folder"
        raise WeightsError(f"the VGG-16 teacher needs the prepared LPIPS weights (lpips/vgg.pth in {where}); "
                           f"run `{COMMAND}` first")
    return True, ("teacher: the prepared LPIPS weights are missing, so --quick aligned to a RANDOMLY "
                  "initialised VGG-16 stand-in: the alignment numbers mean nothing")


def _last_align(run_dir: Path) -> float | None:
    import csv

    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    value = None
    if files:
        with files[-1].open() as handle:
            for row in csv.DictReader(handle):
                if row.get("train/align"):
                    value = float(row["train/align"])
    return value


def run(settings: Settings, context: ExperimentContext) -> ExperimentReport:
    from mergevq.demo.tokenizer_stage import load_eval_networks
    from mergevq.inference.probe_features import check_feature
    from mergevq.inference.tokenizer_eval import ImageTensorDataset, evaluate_tokenizer
    from mergevq.paths import resolve_config
    from mergevq.training.export import tokenizer_from_checkpoint
    from mergevq.training.run import train

    out, log = context.out, context.log
    if settings.teacher_size < 16:
        raise ConfigError(f"experiment.teacher_size={settings.teacher_size}: the VGG-16 needs >= 16 px")
    if not settings.probe_features:
        raise ConfigError("experiment.probe_features is empty; give cls and / or mean")
    if settings.probe_c <= 0:
        raise ConfigError(f"experiment.probe_c={settings.probe_c} must be > 0")
    features = [check_feature(f, key="experiment.probe_features") for f in settings.probe_features]
    plan = variants(settings)
    random_teacher, teacher_note = _teacher_choice(settings, context)
    networks = load_eval_networks(rfid=settings.fid)
    inception = networks.inception if settings.fid else None
    data = demo_data(settings.data_overrides)
    heldout = ImageTensorDataset(data.val_images)
    with torch.no_grad():  # the held-out crops' Inception features, once for every run
        reference = inception(data.val_images) if inception is not None else None

    results: list[RunResult] = []
    for variant in plan:
        run_dir = out / "runs" / variant.name.replace(" + ", "_").replace(" ", "_")
        overrides = run_overrides(settings, variant, random_teacher=random_teacher)
        log(f"{variant.name}: training {TOKENIZER_CONFIG} ({' '.join(overrides)})")
        start = time.perf_counter()
        trained = train([resolve_config(TOKENIZER_CONFIG)], overrides, run_dir=run_dir)
        train_s = time.perf_counter() - start
        if trained.last_checkpoint is None:
            raise RuntimeError(f"training wrote no checkpoint into {run_dir}")
        tokenizer = tokenizer_from_checkpoint(trained.last_checkpoint).eval()  # EMA weights
        cfg = tokenizer.config
        preset, steps = _composed(overrides)
        metrics = evaluate_tokenizer(tokenizer, heldout, num_keep=[cfg.num_keep], inception=None, lpips=None,
                                     batch_size=100, device=torch.device("cpu")).by_k[0]
        rfid = _rfid(tokenizer, data.val_images, inception, reference) if reference is not None else None
        train_features = encoder_features(tokenizer, data.train_images)
        test_features = encoder_features(tokenizer, data.val_images)
        top1 = {f: probe_top1(train_features[f], data.train_labels, test_features[f], data.val_labels,
                              c=settings.probe_c) for f in features}
        results.append(RunResult(
            name=variant.name, family=variant.family, aligned=variant.aligned, preset=preset,
            nominal_k=cfg.num_keep, num_tokens=cfg.num_tokens, steps=steps, train_seconds=train_s,
            seconds_per_step=train_s / max(steps, 1), psnr=metrics.psnr, ssim=metrics.ssim, rfid=rfid,
            probe_top1=top1, final_align_loss=_last_align(run_dir)))
        log(f"{variant.name}: {train_s:.0f} s ({train_s / max(steps, 1):.2f} s/step), PSNR {metrics.psnr:.2f} dB at "
            f"K = {cfg.num_keep}, probe top-1 " + ", ".join(f"{k} {v:.3f}" for k, v in top1.items())
            + (f", rFID {rfid:.1f}" if rfid is not None else ""))

    missing = list(networks.missing) if settings.fid else ["rFID off (experiment.fid=false)"]
    notes = [n for n in (teacher_note, *missing) if n and not n.startswith("LPIPS")]
    return _report(settings, context, results, features=features, notes=notes,
                   random_teacher=random_teacher, num_heldout=len(heldout), num_train=len(data.train_images))


@torch.no_grad()
def _rfid(tokenizer, images: torch.Tensor, inception, reference: torch.Tensor, *, batch_size: int = 100) -> float:
    """FID between the reconstructions at the nominal K and the originals' features ``reference``."""
    from mergevq.metrics.fid import fid_from_features

    k = tokenizer.config.num_keep
    feats = []
    for lo in range(0, len(images), batch_size):
        x = images[lo:lo + batch_size]
        enc = tokenizer.encode(x, k)
        feats.append(inception(tokenizer.decode_codes(enc.codes, enc.assign).float().clamp(-1, 1)).float())
    return fid_from_features(torch.cat(feats), reference)


def _composed(overrides: list[str]) -> tuple[str, int]:
    """(preset, trainer.max_steps) of one run's composed config."""
    from mergevq.config import load_with_origins
    from mergevq.paths import resolve_config

    loaded = load_with_origins([resolve_config(TOKENIZER_CONFIG)], overrides)
    return str(loaded.select("model.params.tokenizer.params.preset")), int(loaded.select("trainer.max_steps"))


def _claims(settings: Settings, results: list[RunResult], features: list[str]) -> list[Claim]:
    claims = []
    by_name = {r.name: r for r in results}
    for family in settings.controls:
        aligned, control = by_name[f"{family} + VGG"], by_name[f"{family} no align"]
        for feature in features:
            a, c = aligned.probe_top1[feature], control.probe_top1[feature]
            claims.append(Claim(statement=f"{family}: alignment raises the linear-probe top-1 ({feature}) over the "
                                          "no-alignment control", held=a > c,
                                measured=f"{a:.3f} vs {c:.3f} ({100 * (a - c):+.1f} points)"))
        drop = control.psnr - aligned.psnr
        claims.append(Claim(statement=f"{family}: alignment costs at most {settings.psnr_tolerance} dB PSNR at K = "
                                      f"{aligned.nominal_k}", held=drop <= settings.psnr_tolerance,
                            measured=f"{aligned.psnr:.2f} vs {control.psnr:.2f} dB ({-drop:+.2f} dB)"))
    aligned_runs = {r.family: r for r in results if r.aligned}
    if "G" in aligned_runs and "R" in aligned_runs:
        g, r = aligned_runs["G"], aligned_runs["R"]
        feature = features[0]
        claims.append(Claim(
            statement=f"the families trade reconstruction for representation: aligned G has the higher PSNR, "
                      f"aligned R the higher probe top-1 ({feature})",
            held=g.psnr > r.psnr and r.probe_top1[feature] > g.probe_top1[feature],
            measured=f"PSNR G {g.psnr:.2f} / R {r.psnr:.2f} dB; top-1 G {g.probe_top1[feature]:.3f} / "
                     f"R {r.probe_top1[feature]:.3f}"))
    return claims


def _report(settings: Settings, context: ExperimentContext, results: list[RunResult], *, features: list[str],
            notes: list[str], random_teacher: bool, num_heldout: int, num_train: int) -> ExperimentReport:
    header = ["run", "preset", "teacher", "L / K", "steps", "s/step", "PSNR (dB)", "SSIM", "rFID",
              *[f"probe top-1 ({f})" for f in features], "final align loss"]
    rows = [[r.name, r.preset, ("random VGG" if random_teacher else "VGG-16") if r.aligned else "-",
             f"{r.num_tokens} / {r.nominal_k}", r.steps, r.seconds_per_step, r.psnr, r.ssim, r.rfid,
             *[r.probe_top1[f] for f in features], r.final_align_loss] for r in results]
    plot = _plot(results, features, context.out / "probe_vs_psnr.png")
    notes = [
        f"teacher: {'a random stand-in' if random_teacher else 'the ImageNet VGG-16 of the prepared LPIPS weights'} "
        f"(source lpips-vgg16); its feature is relu5_3 averaged over space (512-d), of the crop resized to "
        f"{settings.teacher_size} px (bicubic) and ImageNet-normalised; the student's [CLS] sees the crop with its "
        "own flip; loss T^2 KL with T = 4 at the family's align weight",
        "no align: the same overrides, data pipeline, seed and [CLS] head width, teacher null (the head then "
        "stays untrained and no loss reads the [CLS] output: the mean feature is the fair comparison)",
        f"PSNR / SSIM / rFID: EMA weights, the {num_heldout} held-out crops at the nominal K; rFID of "
        f"{num_heldout} 32 px crops is a coarse figure: compare the runs with each other only",
        f"linear probe: logistic regression (C = {settings.probe_c}, standardised features) on the frozen "
        f"encoder's features of the {num_train} training crops at the nominal K, top-1 on the {num_heldout} "
        "held-out crops (10 classes, chance 0.1); cls = the last block's [CLS] token, mean = the mean of the K "
        "kept tokens",
        "s/step: wall time of the whole training call (start-up included) / steps, on this machine",
        *notes,
    ]
    return ExperimentReport(
        name="alignment", title=TITLE, command=context.command, settings=asdict(settings),
        numbers={"runs": [asdict(r) for r in results], "random_teacher": random_teacher},
        table=markdown_table(header, rows), plots=(plot,), claims=tuple(_claims(settings, results, features)),
        seconds=context.elapsed(), notes=tuple(notes))


def _plot(results: list[RunResult], features: list[str], path: Path) -> Path:
    fig, axes = figure(len(features), size=(4.6, 3.6))
    colours: dict[str, Any] = {}
    for ax, feature in zip(axes, features):
        for r in results:
            colour = colours.setdefault(r.family, f"C{len(colours)}")
            ax.scatter(r.psnr, r.probe_top1[feature], color=colour, marker="o" if r.aligned else "x", s=50)
            ax.annotate(r.name, (r.psnr, r.probe_top1[feature]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.set_xlabel("PSNR at the nominal K (dB)")
        ax.set_ylabel(f"linear-probe top-1 ({feature})")
        ax.set_title(f"{feature} feature (o: aligned, x: no alignment)", fontsize=9)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)
