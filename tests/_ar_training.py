"""Tiny Stage 2 runs for the MergeAR training / export / script tests (CPU, seconds per run).

``write_codes`` writes a codes folder in the ``mergevq extract-codes`` layout (through
``mergevq.data.codes``' own writers) holding sequences with real merges: each image keeps K distinct
indices and every raster position repeats the index of the kept token it was merged into.
``write_config`` writes a run config: the tiny MergeAR preset on a 4x4 grid, no dropout (so a run
is a deterministic function of the data order), AdamW + warmup/cosine in optimizer steps.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mergevq.data.codes import CodesManifest, ShardArrays, ShardRecord, shard_name, write_manifest, write_shard

GRID = (4, 4)
NUM_CLASSES = 8


def merged_sequences(count: int, *, grid: tuple[int, int] = GRID, code_dim: int = 18,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` expanded raster sequences (count, L) int32 with K_i unique indices each, labels
    (count,) = i % NUM_CLASSES and the K of each."""
    rng = np.random.default_rng(seed)
    length = grid[0] * grid[1]
    tokens = np.zeros((count, length), np.int32)
    keeps = np.zeros(count, np.int32)
    for i in range(count):
        k = int(rng.integers(length // 2, length + 1))
        kept = rng.choice(2**code_dim, size=k, replace=False)
        # positions 0..k-1 of a random order hold the kept tokens; the rest merge into one of them
        owner = np.concatenate([np.arange(k), rng.integers(0, k, size=length - k)])
        tokens[i] = kept[owner[rng.permutation(length)]]
        keeps[i] = k
    labels = (np.arange(count) % NUM_CLASSES).astype(np.int64)
    return tokens, labels, keeps


def write_codes(root: Path, *, count: int = 8, grid: tuple[int, int] = GRID, num_classes: int = NUM_CLASSES,
                seed: int = 0, flip: bool = False) -> Path:
    """A codes folder of ``count`` merged sequences; ``flip``: also the mirrored grids, as
    ``extract-codes`` stores them for flipped images."""
    tokens, labels, keeps = merged_sequences(count, grid=grid, seed=seed)
    mirrored = tokens.reshape(count, *grid)[:, :, ::-1].reshape(count, -1).copy() if flip else None
    root.mkdir(parents=True, exist_ok=True)
    k_counts = {int(k): int((keeps == k).sum()) for k in np.unique(keeps)}
    record = ShardRecord(name=shard_name(0, 1), rank=0, world_size=1, count=count, num_skipped=0,
                         k_counts=k_counts, max_label=int(labels.max()), request="test")
    write_shard(root, record, ShardArrays(tokens=tokens, flip=mirrored, labels=labels, num_keep=keeps,
                                          source_index=np.arange(count, dtype=np.int64)))
    manifest = CodesManifest(
        tokenizer_id="test", num_tokens=grid[0] * grid[1], grid=grid, code_dim=18, sub_token_bits=(6, 12),
        num_classes=num_classes, k_candidates=tuple(sorted(k_counts)), k_counts=k_counts, num_images=count,
        has_flip=flip, shards=(record,),
    )
    write_manifest(root, manifest)
    return root


BASE: dict[str, Any] = {
    "run": {"name": "tiny_ar", "seed": 0},
    "trainer": {
        "accelerator": "cpu", "precision": "32", "devices": 1, "num_nodes": 1, "strategy": "auto",
        "max_epochs": 1000, "max_steps": 6, "log_every_n_steps": 1, "val_every_n_epochs": 1000,
        "limit_val_batches": 1.0, "checkpoint_every_n_steps": 3, "keep_checkpoints": -1, "progress_bar": False,
    },
    "model": {
        "target": "mergevq.training.ar_module.ARModule",
        "params": {
            "model": {"target": "mergevq.ar.model.build_config",
                      "params": {"preset": "tiny", "changes": {"grid": list(GRID), "num_classes": NUM_CLASSES,
                                                               "class_dropout": 0.0, "token_dropout": 0.0}}},
            "lr": 3.0e-3,
            "betas": [0.9, 0.95],
            "weight_decay": 0.05,
            "schedule": {"warmup_steps": 2, "decay": "cosine", "total_steps": None, "min_lr_ratio": 0.1},
            "grad_clip": 1.0,
            "ema_decay": None,
        },
    },
    "data": {
        "target": "mergevq.data.codes.CodesDataModule",
        "params": {
            "batch_size": 8,  # the whole code set: one optimizer step per epoch
            "num_workers": 0,
            "seed": 0,
            "train": {"target": "mergevq.data.codes.CodesDataset", "params": {"root": None}},
            "validation": None,
        },
    },
}


def write_config(folder: Path, *, codes: Path, name: str = "config.yaml", **sections: dict[str, Any]) -> Path:
    """BASE on the codes folder ``codes`` with ``trainer={...}``, ``params={...}`` (model.params),
    ``changes={...}`` (the MergeAR config changes) and ``data={...}`` (data.params) merged in."""
    cfg = copy.deepcopy(BASE)
    cfg["data"]["params"]["train"]["params"]["root"] = str(codes)
    cfg["trainer"].update(sections.pop("trainer", {}))
    cfg["model"]["params"].update(sections.pop("params", {}))
    cfg["model"]["params"]["model"]["params"]["changes"].update(sections.pop("changes", {}))
    cfg["data"]["params"].update(sections.pop("data", {}))
    cfg.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
