"""``mergevq experiment NAME``: one of the paper's claims measured at demo scale on 2 CPU cores.

Experiments (settings in ``configs/experiments/NAME.yaml``; README "What the method does at small
scale" shows the measured results and plots):

  mergear_vs_causal  MergeAR's attention mask against plain causal attention on the same codes:
                     held-out NLL per sub-token over steps, KV entries held at sampling, tokens/s, FID
  alignment          G vs G+R vs R vs no alignment with a real offline teacher (VGG-16 of LPIPS):
                     linear-probe top-1, PSNR and rFID at the nominal K
  k_sweep            PSNR, SSIM, LPIPS and rFID against K from one checkpoint, with the learned
                     recovery's PSNR and assignment accuracy
  recovery           the learned recovery's assignment accuracy and PSNR against training length

Each writes ``report.json``, ``report.md`` and PNG plots into ``--out``. ``--quick`` runs the same code
with a few steps (the CI form). ``--tokenizer RUN`` reuses a trained demo tokenizer (a checkpoint or a
run folder of ``configs/demo/tokenizer.yaml``) where the experiment would otherwise train one.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from mergevq.experiments import EXPERIMENTS


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("experiment", help="measure one of the paper's claims at demo scale (CPU)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(EXPERIMENTS), metavar="NAME",
                        help=f"one of: {', '.join(EXPERIMENTS)}")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default: experiments/NAME)")
    parser.add_argument("--config", default=None, metavar="NAME|FILE",
                        help="settings file (default: configs/experiments/NAME.yaml)")
    parser.add_argument("--quick", action="store_true", help="a few steps of everything (CI form)")
    parser.add_argument("--tokenizer", default=None, metavar="CKPT|RUN_DIR",
                        help="reuse this demo tokenizer instead of training one (experiments that start from one)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="settings overrides, e.g. experiment.ar_steps=500")
    parser.set_defaults(run=run, trailing_items="overrides")


def run(args: argparse.Namespace) -> int:
    import torch

    from mergevq.cli.common import print_config_files
    from mergevq.errors import ConfigError
    from mergevq.experiments import experiment_module
    from mergevq.experiments.common import ExperimentContext, load_settings, write_report
    from mergevq.outputs import claim_output_dir
    from mergevq.paths import resolve_config

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    module = experiment_module(args.name)
    config = resolve_config(args.config or f"experiments/{args.name}.yaml")
    loaded = load_settings(module.Settings, config, quick=args.quick, overrides=args.overrides)
    print_config_files(loaded.files)
    out = Path(args.out or f"experiments/{args.name}")
    if args.tokenizer and out.resolve() in (Path(args.tokenizer).resolve(), *Path(args.tokenizer).resolve().parents):
        raise ConfigError(f"--tokenizer {args.tokenizer} lies inside --out {out}, which this run replaces; "
                          "copy it elsewhere first")
    claim_output_dir(out, command=f"experiment {args.name}",
                     settings={"config": str(config), "overrides": list(loaded.overrides),
                               "tokenizer": args.tokenizer},
                     patterns=("*",), resumable=False)
    context = ExperimentContext(out=out, command=" ".join(["mergevq", *map(shlex.quote, sys.argv[1:])])
                                if sys.argv[1:2] == ["experiment"] else f"mergevq experiment {args.name}",
                                tokenizer=Path(args.tokenizer) if args.tokenizer else None, quick=args.quick,
                                log=print, started=time.perf_counter())
    report = module.run(loaded.settings, context)
    json_path, md_path = write_report(report, out)
    print(report.table)
    for claim in report.claims:
        print(f"claim: {claim.statement}: {'held' if claim.held else 'did not hold'} ({claim.measured})")
    for path in (*report.plots, json_path, md_path):
        print(f"wrote {path}")
    print(f"experiment {args.name} finished in {report.seconds / 60:.1f} min")
    return 0
