"""``mergevq export``: a trained tokenizer as a ``MergeVQ.from_pretrained`` folder.

    mergevq export RUN_DIR [--out DIR] [--checkpoint PATH] [--raw]

Reads the newest complete checkpoint of RUN_DIR (or --checkpoint) and writes ``config.json`` +
``model.safetensors`` with the EMA weights (``--raw``: the raw generator weights) to --out (default
``RUN_DIR/tokenizer``, ``RUN_DIR/tokenizer-raw`` with --raw). Load it with
``MergeVQ.from_pretrained(DIR)``.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("export", help="write a from_pretrained-loadable tokenizer (EMA weights) from a run",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="the run directory of mergevq train")
    parser.add_argument("--out", default=None, help="output folder (default: RUN_DIR/tokenizer)")
    parser.add_argument("--checkpoint", default=None, help="export this checkpoint instead of the newest one")
    parser.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mergevq.training.export import export_tokenizer

    result = export_tokenizer(args.run_dir, out=args.out, checkpoint=args.checkpoint, raw=args.raw)
    print(f"wrote {result.directory} ({result.weights} weights of {result.checkpoint})")
    return 0
