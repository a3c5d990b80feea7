"""Demo Stage 2: extract the demo tokenizer's codes (with flips), train a tiny MergeAR on them, sample
a grid per demo class with the compressed KV cache, and compare it with the full cache: KV entries
held versus L, tokens/s, and whether the two give the same tokens (they must: the compressed cache
only drops entries the MergeAR mask never attends to: the demo feeds the compressed-cache samples
through both caches and reports the largest logit difference)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mergevq.ar.sampling import (
    Generated,
    SamplingSettings,
    generate,
    teacher_forced_decode,
)
from mergevq.inference.extract_codes import extract_codes
from mergevq.tokenizer.model import MergeVQ
from mergevq.training.ar_export import load_mergear
from mergevq.training.run import train
from mergevq.visual import labelled_rows, save_png, to_uint8

CODES_SUBDIR = "codes"
RUN_SUBDIR = "mergear_run"
CODES_ROOT_KEY = "demo_codes.root"  # where configs/demo/mergear.yaml reads its codes folder


@dataclass(frozen=True)
class CacheRun:
    """One sampling pass over the demo labels with one cache kind."""

    seconds: float
    tokens_per_s: float
    peak_entries_mean: float
    peak_entries_max: int
    capacity: int  # KV slots allocated per sample


@dataclass(frozen=True)
class GeneratorStage:
    run_dir: Path
    codes_dir: Path
    num_sequences: int
    train_seconds: float
    final_loss: float | None
    compressed: CacheRun
    full: CacheRun
    identical_samples: int  # samples whose tokens the two caches sampled identically
    max_logit_diff: float  # the compressed-cache samples fed through both caches: largest |logit| difference
    unique_tokens_mean: float
    num_tokens: int  # L
    prefix: int
    window: int
    samples_path: Path
    metrics_path: Path


def _timed_generate(model, *, labels, num_keep, seeds, settings, compressed: bool) -> tuple[Generated, CacheRun]:
    start = time.perf_counter()
    out = generate(model, labels=labels, num_keep=num_keep, seeds=seeds, settings=settings,
                   compressed_cache=compressed)
    seconds = time.perf_counter() - start
    peak = out.peak_cache_entries.double()
    run = CacheRun(seconds=seconds, tokens_per_s=out.indices.numel() / max(seconds, 1e-9),
                   peak_entries_mean=float(peak.mean()), peak_entries_max=int(peak.max()),
                   capacity=int(out.cache_capacity))
    return out, run


def run_generator_stage(*, tokenizer: MergeVQ, train_images: Dataset, class_names: list[str], config: Path,
                        overrides: list[str], out: Path, samples_per_class: int, cfg_scale: float,
                        temperature: float,
                        log: Callable[[str], object] = print) -> GeneratorStage:
    """``train_images``: the demo training crops without random flips (items ``{"image",
    "class_label"}``); the flipped sequences are stored by the extraction itself."""
    codes_dir = out / CODES_SUBDIR  # fresh: ``mergevq demo`` claimed ``out`` (outputs.py) before Stage 1
    run_dir = out / RUN_SUBDIR
    start = time.perf_counter()
    extraction = extract_codes(tokenizer, train_images, out_dir=codes_dir, seed=0, flip=True, batch_size=200,
                               dataset_description={"demo": "train", "images": len(train_images)})
    manifest = extraction.manifest
    log(f"stage 2: extracted {manifest.num_images} code sequences (+ flips) of L = {manifest.num_tokens} tokens "
        f"in {time.perf_counter() - start:.0f} s, K drawn from {list(manifest.k_candidates)} into {codes_dir}")

    log(f"stage 2: training the tiny MergeAR ({config}) into {run_dir}")
    start = time.perf_counter()
    result = train([config], [f"{CODES_ROOT_KEY}={codes_dir}", *overrides], run_dir=run_dir)
    train_s = time.perf_counter() - start
    model = load_mergear(run_dir)

    num_classes = len(class_names)
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)  # (N,) class-major
    seeds = torch.arange(len(labels))
    settings = SamplingSettings(cfg_scale=(cfg_scale,) * len(model.config.sub_token_bits), temperature=temperature)
    num_keep = tokenizer.config.num_keep
    generated, compressed = _timed_generate(model, labels=labels, num_keep=num_keep, seeds=seeds,
                                            settings=settings, compressed=True)
    full_generated, full = _timed_generate(model, labels=labels, num_keep=num_keep, seeds=seeds,
                                           settings=settings, compressed=False)
    with torch.no_grad():
        images = tokenizer.decode_raster(generated.indices).clamp(-1, 1)  # (N, 3, H, W)
        # Sampling amplifies float rounding (a draw on a CDF boundary flips and the rest of the sample
        # follows), so the caches are compared on the same tokens: their logits must agree.
        keep = torch.full_like(labels, num_keep)
        forced = [teacher_forced_decode(model, indices=generated.indices, labels=labels, num_keep=keep,
                                        compressed_cache=kind).logits for kind in (True, False)]
    max_logit_diff = max(float((a - b).abs().max()) for a, b in zip(*forced, strict=True))
    picture = labelled_rows(to_uint8(images), class_names, ncol=samples_per_class, scale=3)  # a row per class
    samples_path = save_png(picture, out / "samples.png")

    cfg = model.config
    prefix = 2 if cfg.merge_token else 1
    window = cfg.window if cfg.window is not None else cfg.grid[1]
    loss = result.metrics.get("train/loss")
    stage = GeneratorStage(
        run_dir=run_dir, codes_dir=codes_dir, num_sequences=manifest.num_images * (2 if manifest.has_flip else 1),
        train_seconds=train_s, final_loss=loss, compressed=compressed, full=full,
        identical_samples=int((generated.indices == full_generated.indices).all(dim=1).sum()),
        max_logit_diff=max_logit_diff,
        unique_tokens_mean=float(generated.unique_tokens.double().mean()), num_tokens=cfg.num_tokens,
        prefix=prefix, window=window, samples_path=samples_path, metrics_path=out / "mergear_metrics.json")
    report = {
        "codes": {"folder": str(codes_dir), "images": manifest.num_images, "flip": manifest.has_flip,
                  "k_counts": {str(k): v for k, v in manifest.k_counts.items()}},
        "model": {"config": cfg.to_dict(), "parameters": model.parameter_count()},
        "train_seconds": round(train_s, 1),
        "train_metrics": {k: round(v, 5) for k, v in sorted(result.metrics.items())},
        "sampling": {"samples": len(labels), "per_class": samples_per_class, "num_keep": num_keep,
                     "cfg_scale": cfg_scale, "temperature": temperature, "classes": class_names,
                     "compressed_cache": asdict(compressed), "full_cache": asdict(full),
                     "identical_samples": stage.identical_samples, "max_logit_diff": max_logit_diff,
                     "unique_tokens_mean": stage.unique_tokens_mean,
                     "num_tokens": cfg.num_tokens, "prefix": prefix, "window": window},
    }
    stage.metrics_path.write_text(json.dumps(report, indent=2) + "\n")
    return stage

