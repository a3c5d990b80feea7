"""The ``mergevq`` command: one entry point, one subcommand per task (DESIGN §8).

This package is the only place that reads argv or YAML. Each subcommand lives in its own module with
``add_parser(subparsers)`` and ``run(args) -> int``. User errors (``MergeVQError``, ``DataError``)
are printed as one line without a traceback; set ``MERGEVQ_DEBUG=1`` to see the traceback.

One vocabulary everywhere (:mod:`mergevq.cli.common`): ``--config`` the task config, ``--out`` the output
folder, and ``--batch-size``, ``--num-workers``, ``--devices``, ``--accelerator``, ``--precision``,
``--seed`` each setting one config key of the subcommand; ``GROUP=NAME`` (e.g. ``data=folder``) picks
``configs/GROUP/NAME.yaml`` (:func:`mergevq.config.load_with_origins`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mergevq.cli import (
    convert_official,
    demo,
    evaluate_generation,
    evaluate_tokenizer,
    experiment,
    export,
    extract_codes,
    linear_probe,
    prepare_weights,
    reconstruct,
    sample,
    train,
)
from mergevq.errors import MergeVQError
from mergevq.version import __version__

# Order of DESIGN §8.
_COMMANDS = (
    train,
    export,
    convert_official,
    evaluate_tokenizer,
    reconstruct,
    extract_codes,
    sample,
    evaluate_generation,
    linear_probe,
    prepare_weights,
    demo,
    experiment,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergevq",
        description="MergeVQ tokenizer and MergeAR generator: training, evaluation, sampling.",
    )
    parser.add_argument("--version", action="version", version=f"mergevq {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in _COMMANDS:
        command.add_parser(subparsers)
    return parser


def _user_error_types() -> tuple[type[BaseException], ...]:
    from taming.data.errors import DataError

    return (MergeVQError, DataError)


# A subcommand whose positionals end in a KEY=VALUE list names that list's dest here (via
# ``set_defaults(trailing_items=...)``), so overrides may also follow its options:
# ``mergevq train demo/mergear --run-dir R trainer.max_steps=5``. argparse alone reads positionals as
# one run and would reject the items after an option.
TRAILING_ITEMS = "trailing_items"


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        dest = getattr(args, TRAILING_ITEMS, None)
        options = [e for e in extra if e.startswith("-")]
        if dest is None or options:
            parser.error(f"unrecognized arguments: {' '.join(options or extra)}")
        getattr(args, dest).extend(extra)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return int(args.run(args) or 0)
    except _user_error_types() as err:
        if os.environ.get("MERGEVQ_DEBUG"):
            raise
        print(f"mergevq {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mergevq {args.command}: interrupted", file=sys.stderr)
        return 130
