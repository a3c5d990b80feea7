"""``mergevq linear-probe``: linear probe of a frozen tokenizer encoder (DESIGN §6 "Representation").

    mergevq linear-probe TOKENIZER [CONFIG ...] [data=NAME] [KEY=VALUE ...] [--config NAME]
                         [--demo | --folder ROOT] [--num-keep K] [--feature cls|mean] [--out FILE.json] [--raw]
                         [--batch-size N] [--num-workers N] [--accelerator A] [--precision P] [--seed N]

TOKENIZER: an exported folder, a ``mergevq train`` run directory (EMA weights unless --raw) or a
checkpoint. The encoder keeps K tokens; its [CLS] token or the mean of the kept tokens feeds a
BatchNorm(affine=False) + linear head trained with MAE's recipe (the task config
``configs/probe/linear.yaml``, or ``--config``: LARS or SGD, warmup + cosine, epochs and batch size under
``probe``). The data set is a config group: ImageNet by default (set ``data.params.train.params.root`` and
``data.params.validation.params.root``), ``data=folder`` (``--folder ROOT`` also sets ROOT/train and
ROOT/val, each with one sub-folder per class), ``data=demo`` (``--demo``, also ``--config probe/demo``:
the 10 demo classes with a short SGD recipe) or ``data=NAME`` for your own ``configs/data/NAME.yaml``.
The common flags set the key their help names (``--batch-size``: images per encoder call) and win over
KEY=VALUE. Prints top-1 / top-5 on the validation set and writes them, with the settings, the composed
config files and timings, to a JSON file (``--out``; default: ``linear_probe/K<K>_<feature>.json`` beside
the tokenizer): a new file, or one an earlier linear-probe wrote (replaced); a folder or another file is
refused before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides

DEFAULT_CONFIG = "probe/linear"
DEMO_CONFIG = "probe/demo"  # --demo without --config: the short SGD recipe for the demo classes
FLAG_KEYS = FlagKeys(batch_size="probe.extract_batch_size", num_workers="data.params.num_workers",
                     accelerator="probe.accelerator", precision="probe.precision", seed="probe.seed")
_COMMAND = "linear-probe"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("linear-probe", help="linear probe of the frozen encoder's [CLS] or pooled features",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", metavar="TOKENIZER", help="exported tokenizer folder, run directory or checkpoint")
    parser.add_argument("items", nargs="*", metavar="CONFIG|GROUP=NAME|KEY=VALUE",
                        help="extra config files (merged after the task config), then data=NAME and overrides "
                             "such as probe.epochs=10")
    parser.add_argument("--config", default=None, metavar="NAME|FILE",
                        help=f"the task config (default: {DEFAULT_CONFIG}; with --demo: {DEMO_CONFIG})")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--demo", action="store_true",
                      help=f"the embedded demo classes (data=demo, and --config {DEMO_CONFIG} unless given)")
    data.add_argument("--folder", default=None, metavar="ROOT",
                      help="labelled image folder: ROOT/train/<class>/* and ROOT/val/<class>/* (data=folder)")
    parser.add_argument("--num-keep", type=int, default=None, metavar="K", help="kept tokens (probe.num_keep)")
    parser.add_argument("--feature", default=None, metavar="cls|mean", help="feature (probe.feature)")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="where to write the result JSON")
    parser.add_argument("--raw", action="store_true", help="probe the raw weights of a run instead of the EMA")
    add_common_flags(parser, keys=FLAG_KEYS)
    parser.set_defaults(run=run, trailing_items="items")


def _settings(loaded):
    """The ``probe`` section as ProbeSettings; an unknown key is a one-line error naming its file."""
    from omegaconf import DictConfig, OmegaConf

    from mergevq.errors import ConfigError
    from mergevq.training.probe_module import ProbeSettings

    node = loaded.select("probe") if "probe" in loaded.cfg else None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"the config loaded from {', '.join(loaded.files)} has no 'probe' mapping")
    values = OmegaConf.to_container(node, resolve=True)
    names = [f.name for f in dataclasses.fields(ProbeSettings)]
    for key in values:
        if key not in names:
            raise ConfigError(f"{loaded.origin(f'probe.{key}')}: unknown key 'probe.{key}'; valid keys: {', '.join(names)}")
    return ProbeSettings(**values)


def config_request(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The config names (the task config, then the extra CONFIGs) and the overrides (the data choice of
    --demo / --folder, the user's items, --num-keep / --feature, then the common flags' keys)."""
    from mergevq.cli.train import split_items

    configs, overrides = split_items(list(args.items))
    task = args.config or (DEMO_CONFIG if args.demo else DEFAULT_CONFIG)
    chosen: list[str] = []
    if args.demo:
        chosen = ["data=demo"]
    elif args.folder is not None:
        root = Path(args.folder).expanduser()
        chosen = ["data=folder", f"data.params.train.params.root={root / 'train'}",
                  f"data.params.validation.params.root={root / 'val'}"]
    overrides = [*chosen, *overrides]
    if args.num_keep is not None:
        overrides.append(f"probe.num_keep={args.num_keep}")
    if args.feature is not None:
        overrides.append(f"probe.feature={json.dumps(args.feature)}")
    return [task, *configs], [*overrides, *flag_overrides(args, FLAG_KEYS)]


def _default_out(tokenizer: str, num_keep: int, feature: str) -> Path:
    source = Path(tokenizer).expanduser()
    folder = source if source.is_dir() else source.parent
    return folder / "linear_probe" / f"K{num_keep}_{feature}.json"


def run(args: argparse.Namespace) -> int:
    from mergevq.cli.common import print_config_files
    from mergevq.config import load_with_origins
    from mergevq.errors import ConfigError
    from mergevq.fileio import atomic_write
    from mergevq.outputs import check_output_file
    from mergevq.paths import resolve_config
    from mergevq.training.export import load_tokenizer
    from mergevq.training.probe_module import fit_linear_probe

    if args.out is not None:
        check_output_file(args.out, command=_COMMAND)
    configs, overrides = config_request(args)
    tokenizer = load_tokenizer(args.tokenizer, raw=args.raw)
    # The data sets resize to the tokenizer's input size; a user value would only break the encoder.
    overrides.append(f"probe.image_size={tokenizer.config.image_size}")
    loaded = load_with_origins([resolve_config(c) for c in configs], overrides)
    print_config_files(loaded.files)
    settings = _settings(loaded)
    # the default file name needs K: resolved (and checked) as the probe will, so a refusal comes before any work
    num_keep = tokenizer.check_num_keep(tokenizer.config.num_keep if settings.num_keep is None else settings.num_keep)
    out = args.out if args.out is not None else _default_out(args.tokenizer, num_keep, settings.feature)
    out = check_output_file(out, command=_COMMAND)
    loaded.validate("data")
    datamodule = loaded.instantiate("data")
    if datamodule.train_dataset is None or datamodule.val_dataset is None:
        raise ConfigError(f"{loaded.origin('data')}: the linear probe needs both data.params.train and "
                          "data.params.validation")

    result = fit_linear_probe(
        tokenizer=tokenizer, train=datamodule.train_dataset, validation=datamodule.val_dataset, settings=settings,
        num_workers=datamodule.num_workers,
        train_loader=None if settings.precompute else datamodule.train_dataloader(),
    )
    record = {"command": _COMMAND, "tokenizer": str(args.tokenizer), "configs": list(loaded.files),
              "settings": dataclasses.asdict(settings), **result.to_dict()}
    with atomic_write(out, text=True) as handle:
        json.dump(record, handle, indent=2)
    print(f"linear probe of {args.tokenizer} at K={result.num_keep}, feature={result.feature} "
          f"(D={result.feature_dim}, {result.num_classes} classes, {result.num_train} train / {result.num_val} val "
          f"images, {result.epochs} epochs, {result.optimizer_steps} steps)")
    print(f"top-1: {result.top1:.2f} %")
    print(f"top-5: {result.top5:.2f} %")
    print(f"features: {result.extract_seconds:.1f} s, training: {result.train_seconds:.1f} s")
    print(f"wrote {out}")
    return 0
