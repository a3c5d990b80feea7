"""``mergevq convert-official``: an authors' MergeVQ tokenizer checkpoint as a ``from_pretrained`` folder.

    mergevq convert-official CKPT --variant {G_d32,G_d64,GR_d32,GR_d64,GR_d96,R} --out DIR [--weights auto|ema|raw]
    mergevq convert-official CKPT --authors-config AUTHORS_CONFIG --out DIR [--weights auto|ema|raw]

CKPT: a checkpoint of the authors' ``MergeVQModel`` (their Lightning ``.ckpt``, a bare state dict in a
torch file, or a ``.safetensors`` state dict). It is read weights-only: tensors and plain values, never
pickled code. The weights: the EMA copy when the checkpoint has one, else the raw ones (``auto``, the
default); ``ema`` insists on the EMA copy, ``raw`` takes the raw weights. The discriminator, LPIPS and
DINOv2 teacher entries are dropped and counted; any other key that does not fit the variant is an error.

--variant names one of the authors' six released configurations (our preset of that name, with
``recovery_depth=0``: decoding needs the merge assignment that ``encode`` returns). --authors-config takes the
authors' own description instead: their training / eval YAML (its ``model.init_args``), or a JSON
with ``constructor_args`` (the reference generator's ``config.json``), ``init_args`` or a bare
``ddconfig``; its ``merge_num`` sets the nominal K.

The folder (``config.json`` + ``model.safetensors``) loads with ``MergeVQ.from_pretrained(DIR)``. It must be new,
empty or an earlier output of this command (replaced).
"""

from __future__ import annotations

import argparse

COMMAND = "convert-official"
VARIANTS = ("G_d32", "G_d64", "GR_d32", "GR_d64", "GR_d96", "R")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(COMMAND, help="convert an authors' MergeVQ tokenizer checkpoint to an export folder",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", metavar="CKPT", help="the authors' checkpoint (.ckpt / .pt / .safetensors)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--variant", choices=VARIANTS, help="the authors' released configuration it was trained with")
    # not --config: that names a mergevq task config in every other subcommand
    which.add_argument("--authors-config", dest="authors_config", metavar="AUTHORS_CONFIG",
                       help="the authors' YAML (model.init_args) or a JSON with constructor_args / ddconfig")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder: new, empty or an earlier convert-official output")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="auto (default): EMA weights when present, else raw; ema: require them; raw")
    parser.set_defaults(run=run)


def read_official_config(path: str):
    """The :class:`MergeVQConfig` of an authors' YAML or JSON config file (see the module docstring)."""
    import json
    from pathlib import Path

    import yaml

    from mergevq.errors import ConfigError
    from mergevq.tokenizer.official import config_from_official

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the authors' config ({str(err).splitlines()[0]})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    if isinstance(data, dict) and isinstance(data.get("constructor_args"), dict):
        data = data["constructor_args"]
    try:
        return config_from_official(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def run(args: argparse.Namespace) -> int:
    import torch

    from mergevq.outputs import plan_output_dir
    from mergevq.tokenizer.init import load_state_dict_file
    from mergevq.tokenizer.model import CONFIG_FILE, WEIGHTS_FILE, MergeVQ
    from mergevq.tokenizer.official import convert_state_dict, resolve_config

    config = resolve_config(args.variant) if args.variant else read_official_config(args.authors_config)
    settings = {"checkpoint": str(args.checkpoint), "variant": args.variant, "authors_config": args.authors_config,
                "weights": args.weights}
    plan = plan_output_dir(args.out, command=COMMAND, settings=settings, patterns=[CONFIG_FILE, WEIGHTS_FILE],
                           resumable=False)  # refuse a foreign folder before the slow read
    converted = convert_state_dict(load_state_dict_file(args.checkpoint), config, weights=args.weights)
    with torch.device("meta"):  # no initialisation: every saved tensor comes from the checkpoint
        model = MergeVQ(config=config)
    model.load_state_dict(converted.state_dict, strict=True, assign=True)
    plan.apply()
    directory = model.save_pretrained(args.out)
    print(f"converted {args.checkpoint} ({args.variant or args.authors_config}): {converted.summary()}")
    print(f"wrote {directory}")
    return 0
