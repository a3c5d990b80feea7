"""``mergevq export``: a trained model as a ``from_pretrained`` folder (``config.json`` +
``model.safetensors``), for either stage.

    mergevq export RUN_DIR [--out DIR] [--checkpoint PATH] [--raw]

Reads the newest complete checkpoint of RUN_DIR (or --checkpoint). What it writes follows the run's
``model`` target (the resolved config of the run):

* a tokenizer run (``TokenizerModule``): the EMA weights (``--raw``: the raw generator weights) to
  --out (default ``RUN_DIR/tokenizer``, ``RUN_DIR/tokenizer-raw`` with --raw); load it with
  ``MergeVQ.from_pretrained(DIR)`` or ``load_tokenizer(DIR)``;
* a MergeAR run (``ARModule``): the EMA weights when the run kept an EMA, else the raw ones
  (``--raw``: always the raw ones) to --out (default ``RUN_DIR/mergear``, ``mergear-raw``); load it
  with ``MergeAR.from_pretrained(DIR)`` or ``load_mergear(DIR)``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a from_pretrained-loadable tokenizer or MergeAR from a run",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of mergevq train")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/tokenizer or RUN_DIR/mergear)")
    parser.add_argument("--checkpoint", default=None, help="export this checkpoint instead of the newest one")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    parser.set_defaults(run=run)


def trained_module(run_dir: str, checkpoint: str | None) -> type:
    """The class the run's ``model`` node builds: from ``RUN_DIR/config.yaml`` (written by mergevq
    train), else from the embedded config of the checkpoint (``checkpoint`` or the run's newest)."""
    from mergevq.config import CONFIG_FILENAME, from_yaml
    from mergevq.errors import ConfigError
    from mergevq.training.checkpoint import (
        CHECKPOINT_DIR,
        CONFIG_KEY,
        find_resume_checkpoint,
        load_checkpoint_file,
    )

    saved = Path(run_dir) / CONFIG_FILENAME
    if saved.is_file():
        return _target_class(from_yaml(saved.read_text(encoding="utf-8"), source=str(saved)), str(saved))
    if checkpoint is None:
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run directory not found: {run_dir}")
        checkpoint = find_resume_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    state = load_checkpoint_file(checkpoint)
    if CONFIG_KEY not in state:
        raise ConfigError(f"{checkpoint} has no embedded config: not written by mergevq train")
    return _target_class(from_yaml(state[CONFIG_KEY], source=f"{checkpoint}:{CONFIG_KEY}"), str(checkpoint))


def _target_class(cfg, source: str) -> type:
    from mergevq.errors import ConfigError

    target = str(cfg.get("model", {}).get("target", ""))
    module_name, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{source}: model.target {target!r} cannot be imported") from None


def run(args: argparse.Namespace) -> int:
    from mergevq.training.ar_module import ARModule

    module = trained_module(args.run_dir, args.checkpoint)
    if isinstance(module, type) and issubclass(module, ARModule):
        from mergevq.training.ar_export import export_mergear

        directory = export_mergear(args.run_dir, out=args.out, checkpoint=args.checkpoint, raw=args.raw)
        print(f"wrote {directory} (MergeAR)")
        return 0
    from mergevq.training.export import export_tokenizer

    result = export_tokenizer(args.run_dir, out=args.out, checkpoint=args.checkpoint, raw=args.raw)
    print(f"wrote {result.directory} ({result.weights} weights of {result.checkpoint})")
    return 0
