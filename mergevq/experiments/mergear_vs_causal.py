"""Experiment ``mergear_vs_causal``: does MergeAR's compressed attention cost likelihood?

One set of codes (the demo tokenizer's, training crops and their flips; the held-out crops at the
nominal K) and one MergeAR recipe (``configs/demo/mergear.yaml``: same model, steps, data order and
seed); only the attention policy differs:

* ``causal``: plain causal attention, full KV cache (the LlamaGen baseline);
* ``mergear w=row``: the MergeAR mask with the window of one grid row (the paper's setting);
* ``mergear w=N``: the same mask with a smaller window (``small_windows``).

Measured per policy: the held-out NLL (nats per token, per sub-token and total, teacher-forced with the
final weights; and over training from the validation at every epoch), the KV entries held while
sampling: the held-out codes fed through the cache, free and exact-K sampling (mean over sequences of the
peak, and its ratio to causal), tokens/s of the free sampling, and FID of
the samples against the held-out crops (FID Inception from ``mergevq prepare-weights``; None without).
The paper's claim tested: MergeAR's NLL within 2 % of causal while holding at most 0.75 of the entries.
"""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
import torch
from torch.utils.data import DataLoader

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

TITLE = "MergeAR attention vs plain causal attention (same codes, model, steps and seeds)"


@dataclass(frozen=True)
class Settings:
    tokenizer_overrides: list[str]  # overrides of configs/demo/tokenizer.yaml when the tokenizer is trained here
    ar_config: str  # the MergeAR recipe every policy trains with
    ar_overrides: list[str]  # overrides of that recipe, the same for every policy
    small_windows: list[int]  # MergeAR windows besides one grid row
    samples_per_class: int  # samples per demo class for the KV / speed / FID measurement
    sample_batch: int
    cfg_scale: float
    temperature: float
    fid: bool  # FID against the held-out crops when the Inception weights are prepared
    nll_tolerance: float  # the claim: MergeAR NLL <= (1 + tolerance) x causal NLL
    entries_bound: float  # the claim: KV entries held <= bound x causal's


@dataclass(frozen=True)
class Policy:
    name: str
    mask: str  # "mergear" | "causal"
    window: int | None  # None: one grid row (the default) for mergear, unused for causal


@dataclass(frozen=True)
class KVStats:
    """KV entries held per sequence (the most at once: mean / max over sequences), slots allocated,
    distinct indices per sequence, and tokens/s of the pass that measured them."""

    entries_mean: float
    entries_max: int
    slots: int
    unique_tokens_mean: float
    tokens_per_s: float


@dataclass(frozen=True)
class Sampled:
    indices: torch.Tensor  # (N, L)
    stats: KVStats


@dataclass(frozen=True)
class PolicyResult:
    name: str
    mask: str
    window: int | None  # the window in effect (None for causal)
    heldout_nll: float  # nats per token, sum over sub-tokens
    heldout_nll_sub: list[float]
    final_train_loss: float | None
    heldout_kv: KVStats  # the held-out codes fed through the policy's cache (teacher forcing)
    free: KVStats  # sampling at K = nominal
    exact_k: KVStats  # sampling with exact-K (at most K distinct indices per sample)
    fid: float | None  # free sampling against the held-out crops
    train_seconds: float
    curve_steps: list[int]
    curve_nll: list[float]


def policies(settings: Settings) -> list[Policy]:
    out = [Policy(name="causal", mask="causal", window=None), Policy(name="mergear w=row", mask="mergear", window=None)]
    for w in settings.small_windows:
        if w < 1:
            raise ConfigError(f"experiment.small_windows: {w} must be >= 1")
        out.append(Policy(name=f"mergear w={w}", mask="mergear", window=w))
    return out


def _read_curve(run_dir: Path) -> tuple[list[int], list[float]]:
    """The ``val/loss`` rows of the run's CSV log: (steps, NLL)."""
    files = sorted((run_dir / "logs").glob("version_*/metrics.csv"))
    steps: list[int] = []
    values: list[float] = []
    if not files:
        return steps, values
    with files[-1].open() as handle:
        for row in csv.DictReader(handle):
            if row.get("val/loss"):
                steps.append(int(row["step"]) + 1)  # Lightning logs the index of the last step run
                values.append(float(row["val/loss"]))
    return steps, values


@torch.no_grad()
def heldout_nll(model: torch.nn.Module, dataset, *, batch_size: int = 100) -> tuple[float, list[float]]:
    """Teacher-forced mean cross-entropy over ``dataset`` (CodesDataset items): (total, per sub-token)."""
    model.eval()
    sums: torch.Tensor | None = None
    count = 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out = model(batch["indices"], batch["label"], batch["num_keep"])
        subs = torch.stack([s.double() for s in out.sub_losses]) * len(batch["indices"])  # (n_sub,)
        sums = subs if sums is None else sums + subs
        count += len(batch["indices"])
    assert sums is not None
    per_sub = (sums / count).tolist()
    return float(sum(per_sub)), per_sub


@torch.no_grad()
def _forced_entries(model: torch.nn.Module, dataset, *, compressed: bool) -> KVStats:
    from mergevq.ar.sampling import teacher_forced_decode

    batch = next(iter(DataLoader(dataset, batch_size=len(dataset), shuffle=False)))
    start = time.perf_counter()
    forced = teacher_forced_decode(model, indices=batch["indices"], labels=batch["label"],
                                   num_keep=batch["num_keep"], compressed_cache=compressed)
    seconds = time.perf_counter() - start
    peak = forced.peak_cache_entries.double()
    unique = torch.tensor([len(torch.unique(row)) for row in batch["indices"]], dtype=torch.float64)
    return KVStats(entries_mean=float(peak.mean()), entries_max=int(peak.max()), slots=int(forced.cache_capacity),
                   unique_tokens_mean=float(unique.mean()), tokens_per_s=batch["indices"].numel() / max(seconds, 1e-9))


def _sample(model: torch.nn.Module, *, labels: torch.Tensor, seeds: torch.Tensor, num_keep: int, settings: Settings,
            exact_k: bool, compressed: bool) -> Sampled:
    from mergevq.ar.sampling import SamplingSettings, generate

    sampling = SamplingSettings(cfg_scale=settings.cfg_scale, temperature=settings.temperature, exact_k=exact_k)
    indices, peaks, uniques, slots, seconds = [], [], [], 0, 0.0
    for lo in range(0, len(labels), settings.sample_batch):
        part = slice(lo, lo + settings.sample_batch)
        start = time.perf_counter()
        generated = generate(model, labels=labels[part], num_keep=num_keep, seeds=seeds[part], settings=sampling,
                             compressed_cache=compressed)
        seconds += time.perf_counter() - start
        indices.append(generated.indices)
        peaks.append(generated.peak_cache_entries)
        uniques.append(generated.unique_tokens)
        slots = max(slots, int(generated.cache_capacity))
    grid = torch.cat(indices)
    peak = torch.cat(peaks).double()
    return Sampled(indices=grid, stats=KVStats(
        entries_mean=float(peak.mean()), entries_max=int(peak.max()), slots=slots,
        unique_tokens_mean=float(torch.cat(uniques).double().mean()),
        tokens_per_s=grid.numel() / max(seconds, 1e-9)))


def run(settings: Settings, context: ExperimentContext) -> ExperimentReport:
    from mergevq.data.codes import CodesDataset
    from mergevq.demo.tokenizer_stage import load_eval_networks
    from mergevq.inference.extract_codes import extract_codes
    from mergevq.metrics.fid import fid_from_features
    from mergevq.paths import resolve_config
    from mergevq.training.ar_export import load_mergear
    from mergevq.training.run import train

    out, log = context.out, context.log
    if settings.samples_per_class < 1 or settings.sample_batch < 1:
        raise ConfigError("experiment.samples_per_class and experiment.sample_batch must be >= 1")
    trained = demo_tokenizer(run_dir=out / "tokenizer_run", reuse=context.tokenizer,
                             overrides=settings.tokenizer_overrides, log=log)
    tokenizer = trained.tokenizer
    nominal = tokenizer.config.num_keep
    data = demo_data()

    start = time.perf_counter()
    train_codes = extract_codes(tokenizer, data.train, out_dir=out / "codes_train", seed=0, flip=True,
                                batch_size=200, dataset_description={"demo": "train", "images": len(data.train)})
    val_codes = extract_codes(tokenizer, data.validation, out_dir=out / "codes_heldout", k_candidates=[nominal],
                              seed=0, batch_size=200,
                              dataset_description={"demo": "validation", "images": len(data.validation)})
    log(f"codes: {train_codes.manifest.num_images} training crops (+ flips), {val_codes.manifest.num_images} held-out "
        f"crops at K = {nominal}, in {time.perf_counter() - start:.0f} s")
    heldout = CodesDataset(root=str(out / "codes_heldout"))

    networks = load_eval_networks(rfid=settings.fid)
    inception = networks.inception if settings.fid else None
    reference = inception(data.val_images) if inception is not None else None  # (N, 2048)

    num_classes = len(data.classes)
    labels = torch.arange(num_classes).repeat_interleave(settings.samples_per_class)  # (N,) class-major
    seeds = torch.arange(len(labels))
    results: list[PolicyResult] = []
    for policy in policies(settings):
        run_dir = out / "runs" / policy.name.replace(" ", "_").replace("=", "")
        window = "null" if policy.window is None else str(policy.window)
        overrides = [
            f"demo_codes.root={out / 'codes_train'}",
            f"+model.params.model.params.changes.mask={policy.mask}",
            f"+model.params.model.params.changes.window={window}",
            f"data.params.validation={{target: mergevq.data.codes.CodesDataset, params: {{root: '{out / 'codes_heldout'}'}}}}",
            "trainer.val_every_n_epochs=1",
            "+trainer.logger=csv",
            "trainer.progress_bar=false",
            *settings.ar_overrides,
        ]
        log(f"{policy.name}: training {settings.ar_config}")
        t0 = time.perf_counter()
        result = train([resolve_config(settings.ar_config)], overrides, run_dir=run_dir)
        train_s = time.perf_counter() - t0
        model = load_mergear(run_dir).eval()
        nll, nll_sub = heldout_nll(model, heldout)
        steps, curve = _read_curve(run_dir)

        compressed = policy.mask == "mergear"
        forced = _forced_entries(model, heldout, compressed=compressed)
        free = _sample(model, labels=labels, seeds=seeds, num_keep=nominal, settings=settings, exact_k=False,
                       compressed=compressed)
        exact = _sample(model, labels=labels, seeds=seeds, num_keep=nominal, settings=settings, exact_k=True,
                        compressed=compressed)
        fid = None
        if inception is not None and reference is not None:
            with torch.no_grad():
                images = tokenizer.decode_raster(free.indices).clamp(-1, 1)  # (N, 3, H, W)
            fid = fid_from_features(inception(images), reference)
        results.append(PolicyResult(
            name=policy.name, mask=policy.mask,
            window=None if policy.mask == "causal" else model.config.recent_window,
            heldout_nll=nll, heldout_nll_sub=nll_sub, final_train_loss=result.metrics.get("train/loss"),
            heldout_kv=forced, free=free.stats, exact_k=exact.stats, fid=fid, train_seconds=train_s,
            curve_steps=steps, curve_nll=curve))
        log(f"{policy.name}: held-out NLL {nll:.4f} nats/token, KV entries held-out {forced.entries_mean:.1f} / "
            f"free {free.stats.entries_mean:.1f} / exact-K {exact.stats.entries_mean:.1f}, "
            f"{free.stats.tokens_per_s:.0f} tokens/s" + (f", FID {fid:.1f}" if fid is not None else ""))

    return _report(settings, context, results, tokenizer=tokenizer, trained=trained,
                   not_measured=list(networks.missing) if settings.fid else ["FID off (experiment.fid=false)"],
                   num_samples=len(labels), num_heldout=len(heldout))


def _report(settings: Settings, context: ExperimentContext, results: list[PolicyResult], *, tokenizer, trained,
            not_measured: list[str], num_samples: int, num_heldout: int) -> ExperimentReport:
    causal = results[0]
    row = results[1]
    header = ["policy", "window", "held-out NLL (nats/token)", "NLL sub-tokens", "vs causal",
              "KV entries: held-out codes", "free sampling", "exact-K sampling", "tokens/s (free)", "FID (free)"]

    def entries(stats: KVStats, base: KVStats) -> str:
        return f"{stats.entries_mean:.1f} ({stats.entries_mean / base.entries_mean:.2f})"

    rows = [[r.name, "-" if r.window is None else r.window, r.heldout_nll,
             " / ".join(f"{v:.3f}" for v in r.heldout_nll_sub),
             f"{100 * (r.heldout_nll / causal.heldout_nll - 1):+.2f} %", entries(r.heldout_kv, causal.heldout_kv),
             entries(r.free, causal.free), entries(r.exact_k, causal.exact_k), r.free.tokens_per_s, r.fid]
            for r in results]
    nll_ratio = row.heldout_nll / causal.heldout_nll
    ratios = {kind: getattr(row, kind).entries_mean / getattr(causal, kind).entries_mean
              for kind in ("heldout_kv", "free", "exact_k")}
    claims = (
        Claim(statement=f"MergeAR (w = one grid row) held-out NLL within {100 * settings.nll_tolerance:.0f} % of causal",
              held=nll_ratio <= 1 + settings.nll_tolerance,
              measured=f"{row.heldout_nll:.4f} vs {causal.heldout_nll:.4f} nats/token ({100 * (nll_ratio - 1):+.2f} %)"),
        Claim(statement=f"MergeAR holds at most {settings.entries_bound} of the causal KV entries on the held-out "
                        f"codes (K = {tokenizer.config.num_keep})",
              held=ratios["heldout_kv"] <= settings.entries_bound,
              measured=f"{row.heldout_kv.entries_mean:.1f} vs {causal.heldout_kv.entries_mean:.1f} entries "
                       f"({ratios['heldout_kv']:.3f})"),
        Claim(statement=f"... and while sampling freely at K = {tokenizer.config.num_keep}",
              held=ratios["free"] <= settings.entries_bound,
              measured=f"{row.free.entries_mean:.1f} vs {causal.free.entries_mean:.1f} entries ({ratios['free']:.3f}; "
                       f"{row.free.unique_tokens_mean:.1f} distinct indices per sample)"),
        Claim(statement="... and while sampling with exact-K",
              held=ratios["exact_k"] <= settings.entries_bound,
              measured=f"{row.exact_k.entries_mean:.1f} vs {causal.exact_k.entries_mean:.1f} entries "
                       f"({ratios['exact_k']:.3f})"),
    )
    plot = _plot(results, context.out / "nll_curves.png")
    cfg = tokenizer.config
    notes = (
        f"codes: the demo tokenizer ({'reused: ' + str(trained.checkpoint) if trained.reused else 'trained here'}), "
        f"L = {cfg.num_tokens} tokens of {cfg.code_dim} bits on an {cfg.grid[0]}x{cfg.grid[1]} grid; training codes "
        f"with K drawn from {list(cfg.k_candidates)} (+ flips); {num_heldout} held-out crops at K = {cfg.num_keep}",
        "held-out NLL: teacher-forced cross-entropy with the final weights, nats per token (sum of the sub-token means)",
        f"sampling: {num_samples} samples (class-major, seeds 0..N-1) at K = {cfg.num_keep}, CFG "
        f"{settings.cfg_scale}, temperature {settings.temperature}; MergeAR samples with the compressed KV cache, "
        "causal with the full one; KV entries = the most entries a sequence held at once, mean over sequences "
        "(in brackets: the ratio to causal); held-out codes: the tokenizer's codes of the held-out crops fed "
        "through the cache (teacher forcing); exact-K: sampling that stops adding new indices once a sample holds K",
        "FID of a few hundred 32 px samples against the held-out crops is a coarse, biased figure: compare the "
        "policies with each other, not with published FIDs",
        *not_measured,
    )
    return ExperimentReport(
        name="mergear_vs_causal", title=TITLE, command=context.command, settings=asdict(settings),
        numbers={"policies": [asdict(r) for r in results], "nll_ratio_row_vs_causal": nll_ratio,
                 "entries_ratio_row_vs_causal": ratios,
                 "tokenizer_checkpoint": str(trained.checkpoint), "tokenizer_train_seconds": trained.train_seconds},
        table=markdown_table(header, rows), plots=(plot,), claims=claims, seconds=context.elapsed(), notes=notes)


def _plot(results: list[PolicyResult], path: Path) -> Path:
    fig, (curves, bars) = figure(2)
    for r in results:
        if r.curve_steps:
            curves.plot(r.curve_steps, r.curve_nll, marker="o", markersize=3, label=r.name)
    curves.set_xlabel("training step")
    curves.set_ylabel("held-out NLL (nats / token)")
    curves.set_title("held-out NLL during training")
    curves.legend()
    curves.grid(alpha=0.3)
    names = [r.name for r in results]
    base = results[0]
    width = 0.27
    for i, (kind, label) in enumerate((("heldout_kv", "KV entries, held-out codes"), ("free", "KV entries, free sampling"),
                                       ("exact_k", "KV entries, exact-K sampling"))):
        bars.bar([j + (i - 1) * width for j in range(len(results))],
                 [getattr(r, kind).entries_mean / getattr(base, kind).entries_mean for r in results], width=width,
                 alpha=0.75, label=f"{label} / causal")
    bars.plot(range(len(results)), [r.heldout_nll / base.heldout_nll for r in results], "o-", color="tab:red",
              label="held-out NLL / causal")
    bars.set_xticks(range(len(results)), names)
    bars.axhline(1.0, color="grey", lw=0.8)
    bars.set_title("relative to causal")
    bars.set_ylim(0, 1.25)
    bars.legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)

