"""Tiny Stage 1 run configs for the training, checkpoint and export tests (CPU, seconds per run).

Data: the embedded demo crops at 32 px, 2 training crops per photo (20 images: 5 batches of 4 per
epoch, so with ``accumulate_grad_batches=2`` an epoch is 3 training steps: 2 + 2 + 1 micro-batches).
LPIPS: AlexNet with a random backbone (no weight file). Discriminator: PatchGAN ndf 8, 2 layers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

BASE: dict[str, Any] = {
    "run": {"name": "tiny", "seed": 0},
    "trainer": {
        "accelerator": "cpu", "precision": "32", "devices": 1, "num_nodes": 1, "strategy": "auto",
        "max_epochs": 2, "max_steps": -1, "log_every_n_steps": 1, "val_every_n_epochs": 1,
        "limit_val_batches": 1.0, "checkpoint_every_n_steps": 2, "keep_checkpoints": 3, "progress_bar": False,
    },
    "model": {
        "target": "mergevq.training.tokenizer_module.TokenizerModule",
        "params": {
            "tokenizer": {"target": "mergevq.tokenizer.model.build_config",
                          "params": {"preset": "tiny-GR", "changes": {}}},
            "discriminator": {"target": "taming.modules.discriminator.patchgan.PatchGANDiscriminator",
                              "params": {"ndf": 8, "n_layers": 2}},
            "teacher": None,
            "perceptual": {"net": "alex", "weights_path": None, "random_init": True},
            "loss_weights": {"l1": 1.0, "perceptual": 1.0, "gan": 0.1, "entropy": 0.1, "commit": 0.25,
                             "align": 1.0, "recovery": 1.0, "lecam": 0.01},
            "disc_start_step": 0,
            "align_temperature": 4.0,
            "k_std": 0.8,
            "k_floor": 0.0,
            "lr": 1.0e-4,
            "disc_lr": 1.0e-4,
            "betas": [0.5, 0.9],
            "weight_decay": 0.0,
            "lr_drop_epochs": [1],
            "lr_drop_factor": 0.1,
            "accumulate_grad_batches": 2,
            "grad_clip": 1.0,
            "ema_decay": 0.9,
            "max_bad_steps": 5,
        },
    },
    "data": {
        "target": "mergevq.data.datamodule.ImageDataModule",
        "params": {
            "batch_size": 4,
            "num_workers": 0,
            "train": {"target": "mergevq.data.demo.DemoImages",
                      "params": {"split": "train", "resolution": 32, "train_per_photo": 2, "val_per_photo": 1,
                                 "flip": True}},
            "validation": {"target": "mergevq.data.demo.DemoImages",
                           "params": {"split": "validation", "resolution": 32, "train_per_photo": 2,
                                      "val_per_photo": 1}},
        },
    },
}

STEPS_PER_EPOCH = 3


def write_config(folder: Path, *, name: str = "config.yaml", **sections: dict[str, Any]) -> Path:
    """BASE with ``sections`` merged in (``trainer={...}``, ``params={...}`` for model.params,
    ``data={...}`` replacing the data section) written as YAML."""
    cfg = copy.deepcopy(BASE)
    cfg["trainer"].update(sections.pop("trainer", {}))
    cfg["model"]["params"].update(sections.pop("params", {}))
    if "data" in sections:
        cfg["data"] = sections.pop("data")
    cfg.update(sections)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def preset(name: str) -> dict[str, Any]:
    return {"tokenizer": {"target": "mergevq.tokenizer.model.build_config", "params": {"preset": name, "changes": {}}}}
