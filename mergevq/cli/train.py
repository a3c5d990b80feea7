"""``mergevq train``: training from YAML configs, for either stage: the config's ``model`` node says
what is trained (``tokenizer/*``, ``demo/tokenizer``: the tokenizer; ``ar/*``, ``demo/mergear``: MergeAR
on extracted codes).

    mergevq train CONFIG [CONFIG ...] [GROUP=NAME ...] [KEY=VALUE ...] [--config CONFIG] [--out DIR]
                  [--resume auto|PATH] [--overwrite] [--batch-size N] [--num-workers N] [--devices N]
                  [--accelerator A] [--precision P] [--seed N]

Configs are merged in order (each with its ``defaults:``; ``--config`` names one more, first), ``KEY=VALUE``
overrides come last (``+KEY=VALUE`` adds a key); the common flags win over both (each sets the config key
its help names). A config is looked up as (1) a file path as given, (2) ``$MERGEVQ_CONFIGS/NAME[.yaml]``,
(3) the source checkout's ``configs/`` (the checkout the package runs from or was installed from, while
it exists), (4) the copy packaged with mergevq. Every composed file is printed (``config: /abs/path``)
and recorded at the top of the run's ``config.yaml``.

Config groups: ``data=NAME`` picks ``configs/data/NAME.yaml`` (imagenet, folder, demo, or your own),
``trainer=NAME`` picks ``configs/trainer/NAME.yaml``, in place of the recipe's own, wherever they stand on
the command line: ``mergevq train tokenizer/GR_d64 data=folder data.params.train.params.root=/x``.
MergeAR (``ar/*``) trains on a codes folder, not an image data set: set ``codes.root=DIR``.

The run directory (``--out``, alias ``--run-dir``; default ``runs/<run.name>``) receives ``config.yaml``,
``checkpoints/`` and ``logs/``. ``--resume auto`` continues from the newest complete checkpoint there (or
starts fresh if there is none; the launch scripts pass it, so a requeued job continues); ``--resume
PATH`` from the given checkpoint. A run directory that already holds checkpoints needs ``--resume auto``
or ``--overwrite`` (start afresh: the old run directory is renamed to ``DIR.replaced-<time>``, nothing is
deleted).
"""

from __future__ import annotations

import argparse

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides


FLAG_KEYS = FlagKeys(batch_size="data.params.batch_size", num_workers="data.params.num_workers",
                     devices="trainer.devices", accelerator="trainer.accelerator", precision="trainer.precision",
                     seed="run.seed")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train the tokenizer (Stage 1) or MergeAR (Stage 2) from YAML configs",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="*", metavar="CONFIG|GROUP=NAME|KEY=VALUE",
                        help="config files (merged in order), then group choices such as data=folder and "
                             "overrides such as trainer.max_steps=100")
    parser.add_argument("--config", action="append", default=[], metavar="NAME|FILE",
                        help="the training config (repeatable; merged before the positional CONFIGs)")
    parser.add_argument("--out", "--run-dir", dest="run_dir", default=None, metavar="DIR",
                        help="run directory (default: runs/<run.name>); --run-dir is the same option")
    parser.add_argument("--resume", default=None, metavar="auto|PATH",
                        help="auto: the newest complete checkpoint of the run directory; or a checkpoint file")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a run directory that holds checkpoints (the old one is renamed "
                             "to RUN_DIR.replaced-<time>)")
    add_common_flags(parser, keys=FLAG_KEYS)
    parser.set_defaults(run=run, trailing_items="items")


def config_request(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The config names (``--config`` first, then the positional ones) and the overrides (the user's
    GROUP=NAME / KEY=VALUE items, then the common flags' keys, so the flags win)."""
    configs, overrides = split_items(list(args.items))
    return [*args.config, *configs], [*overrides, *flag_overrides(args, FLAG_KEYS)]


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Config names (no '=') and overrides (with '='), each in the given order."""
    configs = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    return configs, overrides


def run(args: argparse.Namespace) -> int:
    from mergevq.errors import ConfigError
    from mergevq.paths import resolve_config
    from mergevq.training.run import train

    configs, overrides = config_request(args)
    if not configs:
        raise ConfigError("give at least one config file, e.g. mergevq train tokenizer/GR_d64")
    result = train([resolve_config(c) for c in configs], overrides, run_dir=args.run_dir, resume=args.resume,
                   overwrite=args.overwrite)
    if not result.is_global_zero:
        return 0
    if result.moved_aside is not None:
        print(f"the previous run was moved to {result.moved_aside}")
    print(f"run directory: {result.run_dir}")
    print(f"saved config: {result.config_path}")
    if result.last_checkpoint is not None:
        print(f"last checkpoint: {result.last_checkpoint}")
    for key in sorted(k for k in result.metrics if k == "train/loss" or k.startswith(("val/", "val_ema/"))):
        print(f"{key}: {result.metrics[key]:.4f}")
    return 0
