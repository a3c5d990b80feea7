"""``mergevq demo``: the end-to-end CPU demo on the embedded real-image data."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the CPU demo end to end on the embedded demo images",
                                   description=__doc__)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
