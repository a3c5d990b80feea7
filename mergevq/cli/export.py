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

The output folder must be new, empty or an earlier export (which is replaced); any other folder is
refused. The run's config was written by somebody else: it may only name mergevq's own builders
(``mergevq.trust``), and nothing it names is imported to decide what to export.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mergevq.config import LoadedConfig


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a from_pretrained-loadable tokenizer or MergeAR from a run",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of mergevq train")
    parser.add_argument("--out", default=None,
                        help="output folder: new, empty or an earlier export (default: RUN_DIR/tokenizer or "
                             "RUN_DIR/mergear)")
    parser.add_argument("--checkpoint", default=None, help="export this checkpoint instead of the newest one")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    parser.set_defaults(run=run)


def trained_module(run_dir: str, checkpoint: str | None) -> str:
    """The dotted name of the training module the run's ``model`` node names (``mergevq.trust``
    ``TOKENIZER_MODULE`` or ``AR_MODULE``): from ``RUN_DIR/config.yaml`` (written by mergevq train),
    else from the embedded config of the checkpoint (``checkpoint`` or the run's newest). Looked up in
    the allow-list, never imported."""
    from mergevq.config import CONFIG_FILENAME, from_yaml_with_origins
    from mergevq.errors import ConfigError, TrainingError
    from mergevq.training.checkpoint import (
        CHECKPOINT_DIR,
        CONFIG_KEY,
        find_resume_checkpoint,
        is_complete_checkpoint,
        load_checkpoint_file,
    )

    saved = Path(run_dir) / CONFIG_FILENAME
    if saved.is_file():
        try:
            text = saved.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{saved}: cannot read the run's config: {exc}") from None
        return _training_module(from_yaml_with_origins(text, source=str(saved)))
    if checkpoint is None:
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run directory not found: {run_dir}")
        checkpoint = find_resume_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    elif not Path(checkpoint).is_file():
        raise ConfigError(f"checkpoint file not found: {checkpoint}")
    elif not is_complete_checkpoint(checkpoint):
        raise TrainingError(f"{checkpoint} is incomplete or not a torch checkpoint")
    state = load_checkpoint_file(checkpoint)
    if not isinstance(state.get(CONFIG_KEY), str):
        raise ConfigError(f"{checkpoint} has no embedded config ({CONFIG_KEY}): not written by mergevq train")
    return _training_module(from_yaml_with_origins(state[CONFIG_KEY], source=f"{checkpoint}:{CONFIG_KEY}"))


def _training_module(loaded: LoadedConfig) -> str:
    from mergevq.errors import ConfigError
    from mergevq.trust import AR_MODULE, TOKENIZER_MODULE, TRUSTED_TARGETS

    target = loaded.target("model", allowed=TRUSTED_TARGETS)
    if target not in (TOKENIZER_MODULE, AR_MODULE):
        raise ConfigError(f"{loaded.origin('model.target')}: key 'model.target': {target!r} is not a training "
                          f"module; expected {TOKENIZER_MODULE} or {AR_MODULE}")
    return target


def run(args: argparse.Namespace) -> int:
    from mergevq.trust import AR_MODULE

    if trained_module(args.run_dir, args.checkpoint) == AR_MODULE:
        from mergevq.training.ar_export import export_mergear

        directory = export_mergear(args.run_dir, out=args.out, checkpoint=args.checkpoint, raw=args.raw)
        print(f"wrote {directory} (MergeAR)")
        return 0
    from mergevq.training.export import export_tokenizer

    result = export_tokenizer(args.run_dir, out=args.out, checkpoint=args.checkpoint, raw=args.raw)
    print(f"wrote {result.directory} ({result.weights} weights of {result.checkpoint})")
    return 0
