"""``mergevq demo``: the end-to-end CPU demo on the embedded real-image data.

Data: builds the demo dataset through the same config path training uses (the ``data`` section
of ``configs/demo/tokenizer.yaml``, from ``configs/data/demo.yaml`` -> ``ImageDataModule``), runs one
epoch of each split through the DataLoaders, and writes a picture of the crops per class
(``demo_data.png``) and a JSON of what it measured (``demo_data.json``).

Stage 1: trains the tiny tokenizer with that config through ``mergevq.training.run.train`` into
``OUT/tokenizer_run/`` (about 3 minutes on 2 CPU cores), then evaluates the EMA weights on the
held-out crops at K = L, the nominal K and the smallest training K: per-image PSNR (mean, std),
codebook usage, and the PSNR when the learned recovery predicts the assignment. Writes
``reconstructions.png`` (originals, then one row per K), ``merge_groups.png`` (the merge groups at
the nominal K, one colour per group, over a few held-out crops) and ``metrics.json``.

Overrides (``KEY=VALUE``) apply to the whole config, e.g. ``trainer.max_steps=20`` for a quick run.
Tokenizer evaluation (#5) and MergeAR (#6) join the demo as they land.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PENDING_STAGES = (
    "tokenizer evaluation (rFID, LPIPS, K sweep): arrives with issue #5",
    "Stage 2 (MergeAR training, compressed-KV-cache sampling): arrives with issue #6",
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the CPU demo end to end on the embedded demo images",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--config", default="demo/tokenizer.yaml",
                        help="demo config (data + Stage 1 run), a path or a name under configs/ "
                             "(default: demo/tokenizer.yaml)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training (default: torch's, one per core). On a machine "
                             "other jobs keep busy, --threads 1 avoids the slow-down of oversubscribed threads")
    parser.add_argument("--data-only", action="store_true",
                        help="stop after the data stage (no tokenizer training)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. demo_data.resolution=64")
    parser.set_defaults(run=run)


def _epoch(loader) -> dict:
    """One pass over a loader: counts, skips and speed (the data path training will use)."""
    start = time.perf_counter()
    images = skipped = batches = 0
    for batch in loader:
        batches += 1
        skipped += batch["num_skipped"]
        images += len(batch["image"]) if "image" in batch else 0
    seconds = time.perf_counter() - start
    return {"batches": batches, "images": images, "skipped": skipped, "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 1)}


def _per_class_picture(train, validation, *, per_row_train: int = 8, per_row_val: int = 4):
    """One row per class: the first training crops, then (after a blank cell) held-out crops."""
    import numpy as np

    from mergevq.visual import grid

    blank = np.full_like(train.images[:1], 255)
    cells = []
    for label in range(train.num_classes):
        tr = train.images[train.labels == label][:per_row_train]
        va = validation.images[validation.labels == label][:per_row_val]
        cells += [tr, blank, va]
    return grid(np.concatenate(cells), ncol=per_row_train + 1 + per_row_val, scale=3)


def run(args: argparse.Namespace) -> int:
    from mergevq.config import load_with_origins
    from mergevq.paths import resolve_config
    from mergevq.visual import save_png

    out = Path(args.out)
    start = time.perf_counter()
    loaded = load_with_origins([resolve_config(args.config)], args.overrides)
    loaded.validate("data")
    datamodule = loaded.instantiate("data")
    build_s = time.perf_counter() - start
    train, validation = datamodule.train_dataset, datamodule.val_dataset
    print(f"demo data: {len(train)} training and {len(validation)} held-out crops of "
          f"{train.num_classes} photos at {train.images.shape[1]} px (built or loaded in {build_s:.1f} s)")

    metrics = {
        "config": str(resolve_config(args.config)),
        "classes": list(train.classes),
        "resolution": int(train.images.shape[1]),
        "build_seconds": round(build_s, 3),
        "train": _epoch(datamodule.train_dataloader()),
        "validation": _epoch(datamodule.val_dataloader()),
        "pending": list(PENDING_STAGES),
    }
    picture = save_png(_per_class_picture(train, validation), out / "demo_data.png")
    report = out / "demo_data.json"
    report.write_text(json.dumps(metrics, indent=2) + "\n")
    for split in ("train", "validation"):
        m = metrics[split]
        print(f"{split}: {m['images']} images in {m['batches']} batches, {m['skipped']} skipped, "
              f"{m['images_per_s']} images/s through the DataLoader")
    print(f"wrote {picture} (one row per class: training crops | held-out crops)")
    print(f"wrote {report}")
    if not args.data_only:
        _stage1(args, out, validation)
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    for line in PENDING_STAGES:
        print(f"not yet in the demo: {line}")
    return 0


# --------------------------------------------------------------------------------------------------
# Stage 1: tokenizer training and its pictures / metrics
# --------------------------------------------------------------------------------------------------

RUN_SUBDIR = "tokenizer_run"



def _evaluate(tokenizer, images, ks: list[int], *, batch_size: int = 100) -> dict:
    """Per-image PSNR and code usage of ``tokenizer`` on ``images`` (N, 3, H, W) at each K; the
    reconstructions, assignments and learned-recovery PSNR come along for the pictures."""
    import torch

    from mergevq.metrics.recon import psnr_per_image

    codebook = tokenizer.quantizer.codebook_size
    results: dict = {}
    with torch.no_grad():
        for k in ks:
            recs, learned, assigns, indices = [], [], [], []
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size]
                enc = tokenizer.encode(x, k)
                recs.append(tokenizer.decode_codes(enc.codes, enc.assign).clamp(-1, 1))
                if tokenizer.recovery is not None:
                    learned.append(tokenizer.decode(enc.indices).clamp(-1, 1))
                assigns.append(enc.assign)
                indices.append(enc.indices)
            rec = torch.cat(recs)
            psnr = psnr_per_image(rec, images)
            codes = torch.cat(indices)
            unique = int(torch.unique(codes).numel())
            entry = {
                "psnr_mean": round(float(psnr.mean()), 3),
                "psnr_std": round(float(psnr.std()), 3),
                "unique_codes": unique,
                "codebook_usage": unique / codebook,  # distinct codes over the held-out set / 2^18
                "unique_per_token": round(unique / codes.numel(), 4),  # distinct / tokens produced
            }
            if learned:
                entry["psnr_mean_learned_recovery"] = round(float(psnr_per_image(torch.cat(learned), images).mean()), 3)
            results[k] = {"metrics": entry, "reconstruction": rec, "assign": torch.cat(assigns)}
    return results


def _stage1(args: argparse.Namespace, out: Path, validation) -> dict:
    import shutil

    import numpy as np
    import torch

    from mergevq.errors import ConfigError
    from mergevq.paths import resolve_config
    from mergevq.training.export import tokenizer_from_checkpoint
    from mergevq.training.run import train
    from mergevq.visual import grid, merge_groups_picture, reconstruction_grid, save_png

    run_dir = out / RUN_SUBDIR
    if run_dir.exists():  # a fresh run every time: old checkpoints must not be resumed or reported
        shutil.rmtree(run_dir)
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    print(f"stage 1: training the tiny tokenizer ({args.config}) into {run_dir} "
          f"({torch.get_num_threads()} CPU threads)")
    start = time.perf_counter()
    result = train([resolve_config(args.config)], args.overrides, run_dir=run_dir)
    train_s = time.perf_counter() - start
    if result.last_checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint into {run_dir}")
    tokenizer = tokenizer_from_checkpoint(result.last_checkpoint).eval()  # EMA weights
    config = tokenizer.config

    start = time.perf_counter()
    images = torch.from_numpy(validation.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, H, W)
    ks = sorted({config.num_tokens, config.num_keep, min(config.k_candidates)}, reverse=True)
    evaluated = _evaluate(tokenizer, images, ks)
    eval_s = time.perf_counter() - start

    # a few held-out crops, one per photo while there are enough
    per_photo = max(1, len(images) // max(validation.num_classes, 1))
    pick = list(range(0, len(images), per_photo))[:10]
    recon = reconstruction_grid(images[pick], {k: evaluated[k]["reconstruction"][pick] for k in ks})
    recon_path = save_png(recon, out / "reconstructions.png")
    nominal = config.num_keep
    groups = [merge_groups_picture(images[i], evaluated[nominal]["assign"][i], config.grid, scale=4)
              for i in pick[:6]]
    groups_path = save_png(grid(np.stack(groups), ncol=len(groups)), out / "merge_groups.png")

    metrics = {
        "tokenizer": {"preset_config": config.to_dict(), "weights": "EMA",
                      "checkpoint": str(result.last_checkpoint), "num_tokens": config.num_tokens,
                      "nominal_k": nominal, "smallest_k": min(config.k_candidates)},
        "validation_images": int(len(images)),
        "psnr_definition": "10 log10(4 / MSE) per image in [-1, 1] (= 10 log10(1 / MSE) in [0, 1]), then the mean",
        "by_k": {str(k): evaluated[k]["metrics"] for k in ks},
        "train_seconds": round(train_s, 1),
        "eval_seconds": round(eval_s, 1),
        "train_metrics": {k: round(v, 5) for k, v in sorted(result.metrics.items())},
    }
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")

    print(f"stage 1: trained in {train_s:.0f} s; held-out PSNR of the EMA tokenizer on {len(images)} crops "
          f"({config.num_tokens} tokens, {config.code_dim} bits each):")
    print(f"  {'K':>4}  {'PSNR dB':>8}  {'(learned recovery)':>18}  {'unique codes':>12}")
    for k in ks:
        m = evaluated[k]["metrics"]
        tag = " = L" if k == config.num_tokens else (" nominal" if k == nominal else " smallest")
        learned = m.get("psnr_mean_learned_recovery")
        learned_text = f"{learned:.2f}" if learned is not None else "-"
        print(f"  {k:>4}  {m['psnr_mean']:>8.2f}  {learned_text:>18}  {m['unique_codes']:>12}{tag}")
    print(f"wrote {recon_path} (rows: originals, then K = {', '.join(map(str, ks))})")
    print(f"wrote {groups_path} (merge groups at K = {nominal}, one colour per group)")
    print(f"wrote {metrics_path}")
    print(f"training run (checkpoint, config, logs): {run_dir}")
    return metrics
