"""``mergevq demo``: the end-to-end CPU demo on the embedded real-image data.

Today it builds the demo dataset through the same config path training uses
(``configs/data/demo.yaml`` -> ``ImageDataModule``), runs one epoch of each split through the
DataLoaders, and writes a picture of the crops per class and a JSON of what it measured. Tokenizer
training (issue #4), its evaluation (#5) and MergeAR (#6) join the demo as they land.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PENDING_STAGES = (
    "Stage 1 (tokenizer training, reconstructions, merge groups): arrives with issue #4",
    "tokenizer evaluation (rFID, LPIPS, K sweep): arrives with issue #5",
    "Stage 2 (MergeAR training, compressed-KV-cache sampling): arrives with issue #6",
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the CPU demo end to end on the embedded demo images",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--config", default="data/demo.yaml",
                        help="data config, a path or a name under configs/ (default: data/demo.yaml)")
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
    for line in PENDING_STAGES:
        print(f"not yet in the demo: {line}")
    return 0
