"""``mergevq train``: training from YAML configs, for either stage: the config's ``model`` node says
what is trained (``tokenizer/*``, ``demo/tokenizer``: the tokenizer; ``ar/*``, ``demo/mergear``: MergeAR
on extracted codes).

    mergevq train CONFIG [CONFIG ...] [KEY=VALUE ...] [--run-dir DIR] [--resume auto|PATH] [--overwrite]

Configs are merged in order (each with its ``defaults:``), ``KEY=VALUE`` overrides come last
(``+KEY=VALUE`` adds a key). A config is a path or a name under ``configs/`` (``tokenizer/GR_d64``).
The run directory (default ``runs/<run.name>``) receives ``config.yaml``, ``checkpoints/`` and
``logs/``. ``--resume auto`` continues from the newest complete checkpoint there (or starts fresh if
there is none; the launch scripts pass it, so a requeued job continues); ``--resume PATH`` from the
given checkpoint. A run directory that already holds checkpoints needs ``--resume auto`` or
``--overwrite`` (start afresh: the old run directory is renamed to ``DIR.replaced-<time>``, nothing is
deleted).
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the tokenizer (Stage 1) or MergeAR (Stage 2) from YAML configs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", metavar="CONFIG|KEY=VALUE",
                        help="config files (merged in order), then overrides such as trainer.max_steps=100")
    parser.add_argument("--run-dir", default=None, help="run directory (default: runs/<run.name>)")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="auto: the newest complete checkpoint of the run directory; or a checkpoint file")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a run directory that holds checkpoints (the old one is renamed "
                             "to RUN_DIR.replaced-<time>)")
    parser.set_defaults(run=run, trailing_items="items")


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Config names (no '=') and overrides (with '='), each in the given order."""
    configs = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    return configs, overrides


def run(args: argparse.Namespace) -> int:
    from mergevq.errors import ConfigError
    from mergevq.paths import resolve_config
    from mergevq.training.run import train

    configs, overrides = split_items(args.items)
    if not configs:
        raise ConfigError("give at least one config file, e.g. mergevq train tokenizer/GR_d64")
    result = train([resolve_config(c) for c in configs], overrides, run_dir=args.run_dir, resume=args.resume,
                   overwrite=args.overwrite)
    if not result.is_global_zero:
        return 0
    if result.moved_aside is not None:
        print(f"the previous run was moved to {result.moved_aside}")
    print(f"run directory: {result.run_dir}")
    print(f"config: {result.config_path}")
    if result.last_checkpoint is not None:
        print(f"last checkpoint: {result.last_checkpoint}")
    for key in sorted(k for k in result.metrics if k == "train/loss" or k.startswith(("val/", "val_ema/"))):
        print(f"{key}: {result.metrics[key]:.4f}")
    return 0
