"""``mergevq linear-probe``: linear probe of a frozen tokenizer encoder (DESIGN §6 "Representation").

    mergevq linear-probe TOKENIZER [CONFIG ...] [KEY=VALUE ...] [--demo | --folder ROOT]
                         [--num-keep K] [--feature cls|mean] [--out FILE.json] [--raw]

TOKENIZER: an exported folder, a ``mergevq train`` run directory (EMA weights unless --raw) or a
checkpoint. The encoder keeps K tokens; its [CLS] token or the mean of the kept tokens feeds a
BatchNorm(affine=False) + linear head trained with MAE's recipe (``configs/probe/linear.yaml``:
LARS or SGD, warmup + cosine, epochs and batch size under ``probe``). Data: ImageNet by default
(``probe/imagenet``; set ``data.params.train.params.root`` and ``data.params.validation.params.root``),
``--folder ROOT`` for ROOT/train/<class>/* and ROOT/val/<class>/*, ``--demo`` for the 10 demo classes.
Prints top-1 / top-5 on the validation set and writes them, with the settings and timings, to a
JSON file (default: ``linear_probe/K<K>_<feature>.json`` beside the tokenizer): a new file, or one
an earlier linear-probe wrote (replaced); a folder or another file is refused before any work.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

_DEFAULT_CONFIG = "probe/imagenet"
_COMMAND = "linear-probe"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("linear-probe", help="linear probe of the frozen encoder's [CLS] or pooled features",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", metavar="TOKENIZER", help="exported tokenizer folder, run directory or checkpoint")
    parser.add_argument("items", nargs="*", metavar="CONFIG|KEY=VALUE",
                        help=f"config files (default {_DEFAULT_CONFIG}), then overrides such as probe.epochs=10")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--demo", action="store_true", help="the embedded demo classes (config probe/demo)")
    data.add_argument("--folder", default=None, metavar="ROOT",
                      help="labelled image folder: ROOT/train/<class>/* and ROOT/val/<class>/* (config probe/folder)")
    parser.add_argument("--num-keep", type=int, default=None, metavar="K", help="kept tokens (probe.num_keep)")
    parser.add_argument("--feature", default=None, metavar="cls|mean", help="feature (probe.feature)")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="where to write the result JSON")
    parser.add_argument("--raw", action="store_true", help="probe the raw weights of a run instead of the EMA")
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


def _default_out(tokenizer: str, num_keep: int, feature: str) -> Path:
    source = Path(tokenizer).expanduser()
    folder = source if source.is_dir() else source.parent
    return folder / "linear_probe" / f"K{num_keep}_{feature}.json"


def run(args: argparse.Namespace) -> int:
    from mergevq.config import load_with_origins
    from mergevq.errors import ConfigError
    from mergevq.fileio import atomic_write
    from mergevq.outputs import check_output_file
    from mergevq.paths import resolve_config
    from mergevq.training.export import load_tokenizer
    from mergevq.training.probe_module import fit_linear_probe

    if args.out is not None:
        check_output_file(args.out, command=_COMMAND)
    configs = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    if args.demo or args.folder is not None:
        if configs:
            raise ConfigError("--demo / --folder choose the config; give either them or CONFIG files, not both")
        configs = ["probe/demo" if args.demo else "probe/folder"]
    if args.folder is not None:
        root = Path(args.folder).expanduser()
        overrides = [f"data.params.train.params.root={root / 'train'}",
                     f"data.params.validation.params.root={root / 'val'}", *overrides]
    if args.num_keep is not None:
        overrides.append(f"probe.num_keep={args.num_keep}")
    if args.feature is not None:
        overrides.append(f"probe.feature={json.dumps(args.feature)}")

    tokenizer = load_tokenizer(args.tokenizer, raw=args.raw)
    # The data sets resize to the tokenizer's input size; a user value would only break the encoder.
    overrides.append(f"probe.image_size={tokenizer.config.image_size}")
    loaded = load_with_origins([resolve_config(c) for c in configs or [_DEFAULT_CONFIG]], overrides)
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
