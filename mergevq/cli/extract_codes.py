"""``mergevq extract-codes``: the Stage 2 training data (DESIGN §5 "Training data").

    mergevq extract-codes TOKENIZER [OUT_DIR] [data=NAME] [KEY=VALUE ...] [--out OUT_DIR] [--config NAME]
                          [--demo | --folder PATH] [--raw] [--overwrite] [--batch-size N] [--num-workers N]
                          [--accelerator A] [--precision P] [--seed N]

Runs TOKENIZER (an exported folder, a ``mergevq train`` run directory or a checkpoint; EMA weights
unless --raw) once over a data set and writes OUT_DIR: per image its class label, a kept-token count
K drawn from ``extract.k_candidates`` (seeded per image: the same K for any batch size or process
count) and the expanded raster index sequence t_1..t_L (int32), with ``extract.flip`` also the
flipped image's; one shard file set per process and ``manifest.json`` (tokenizer id, L, grid, bit
split, K distribution), read by ``mergevq.data.codes.CodesDataset``.

OUT_DIR: ``--out OUT_DIR`` or the second positional argument. The task config is
configs/extract/base.yaml (``--config`` names another). The data set is a config group: ImageNet train by
default (set ``data.params.train.params.root=PATH``), ``data=folder`` (``--folder PATH`` also sets the
root), ``data=demo`` (``--demo``, also ``extract.num_workers=0``: the crops are in memory) or
``data=NAME`` for your own ``configs/data/NAME.yaml``. Settings are the ``extract`` keys, e.g.
``extract.seed=1 extract.flip=false extract.k_candidates=[144,256] extract.batch_size=128``; the common
flags (--batch-size, --num-workers, --accelerator, --precision, --seed) set the extract key their help
names and win over KEY=VALUE. Every composed config file is printed (``config: /abs/path``); the
manifest records the resolved data set node (not the file paths: it is compared on re-runs, and the same
data set read through another checkout is the same extraction).

Re-running the same command is a no-op (an interrupted run resumes at the missing shards); OUT_DIR
written with another tokenizer, K candidates, seed, flip or data set is refused unless --overwrite
(alias --force), which replaces it. A non-empty OUT_DIR that is not a codes folder is refused before
any work and left untouched. Under torchrun (scripts/train_autoregressive/extract_codes.sh) each
process encodes one contiguous slice.
Options may come anywhere; KEY=VALUE overrides may also follow them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides

DEFAULT_CONFIG = "extract/base"
DEMO_OVERRIDES = ("data=demo", "extract.num_workers=0")  # --demo: the crops are in memory, no workers needed
FLAG_KEYS = FlagKeys(batch_size="extract.batch_size", num_workers="extract.num_workers",
                     accelerator="extract.accelerator", precision="extract.precision", seed="extract.seed")
_DATA_NODE = "data.params.train"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("extract-codes", help="run a tokenizer over a dataset and store Stage 2 token sequences",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tokenizer", metavar="TOKENIZER",
                        help="exported tokenizer folder, mergevq train run directory or checkpoint file")
    parser.add_argument("out_dir", nargs="?", default=None, metavar="OUT_DIR",
                        help="output folder of the codes (shards + manifest.json); or --out")
    parser.add_argument("overrides", nargs="*", metavar="GROUP=NAME|KEY=VALUE",
                        help="data=NAME and config overrides, e.g. extract.seed=1 "
                             "data.params.train.params.root=/data/imagenet")
    parser.add_argument("--out", default=None, metavar="OUT_DIR", help="output folder (the positional OUT_DIR)")
    parser.add_argument("--config", default=None, metavar="NAME|FILE",
                        help=f"the task config, a path or a name under configs/ (default: {DEFAULT_CONFIG})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--demo", action="store_true", help=f"the embedded demo crops ({' '.join(DEMO_OVERRIDES)})")
    source.add_argument("--folder", default=None, metavar="PATH",
                        help="any folder of images; class sub-folders give labels "
                             "(data=folder data.params.train.params.root=PATH)")
    parser.add_argument("--raw", action="store_true", help="a run directory / checkpoint's raw weights instead of the EMA")
    parser.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                        help="replace codes in OUT_DIR written by another extraction (--force: the old name)")
    add_common_flags(parser, keys=FLAG_KEYS)
    parser.set_defaults(run=run, trailing_items="overrides")


@dataclass(frozen=True)
class ExtractSettings:
    """The ``extract`` node of configs/extract/base.yaml."""

    k_candidates: tuple[int, ...] | None
    seed: int
    flip: bool
    image_size: int
    batch_size: int
    num_workers: int
    accelerator: str
    precision: str

    @classmethod
    def from_node(cls, node: Mapping[str, Any], *, source: str) -> ExtractSettings:
        from mergevq.errors import ConfigError

        names = [f.name for f in fields(cls)]
        unknown = sorted(set(node) - set(names))
        missing = [n for n in names if n not in node]
        if unknown or missing:
            problem = f"unknown key(s) {', '.join(unknown)}" if unknown else f"missing key(s) {', '.join(missing)}"
            raise ConfigError(f"{source}: extract has {problem}; valid keys: {', '.join(names)}")
        for name in ("seed", "image_size", "batch_size", "num_workers"):
            if isinstance(node[name], bool) or not isinstance(node[name], int):
                raise ConfigError(f"{source}: extract.{name} must be an integer, got {node[name]!r}")
        if not isinstance(node["flip"], bool):
            raise ConfigError(f"{source}: extract.flip must be true or false, got {node['flip']!r}")
        ks = node["k_candidates"]
        if ks is not None and (not isinstance(ks, (list, tuple)) or not all(
                isinstance(k, int) and not isinstance(k, bool) for k in ks)):
            raise ConfigError(f"{source}: extract.k_candidates must be null or a list of integers, got {ks!r}")
        return cls(k_candidates=None if ks is None else tuple(ks), seed=node["seed"], flip=node["flip"],
                   image_size=node["image_size"], batch_size=node["batch_size"], num_workers=node["num_workers"],
                   accelerator=str(node["accelerator"]), precision=str(node["precision"]))


def out_dir_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """OUT_DIR (``--out`` or the positional) and the user's overrides. With ``--out``, a positional
    item holding '=' is the first override (argparse gives the first positional to OUT_DIR)."""
    from mergevq.errors import ConfigError

    overrides = list(args.overrides)
    positional = args.out_dir
    if args.out is not None:
        if positional is not None and "=" not in positional:
            raise ConfigError(f"OUT_DIR given twice: --out {args.out} and {positional}; give one")
        if positional is not None:
            overrides.insert(0, positional)
        out = args.out
    elif positional is None or "=" in positional:
        raise ConfigError("give the output folder: --out OUT_DIR (or TOKENIZER OUT_DIR)")
    else:
        out = positional
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise ConfigError(f"expected KEY=VALUE overrides after TOKENIZER OUT_DIR, got {' '.join(bad)}")
    return out, overrides


def config_request(args: argparse.Namespace, image_size: int) -> tuple[str, list[str]]:
    """The task config and the overrides: the tokenizer's image size and the data choice first, the
    user's next, the common flags last (they win)."""
    _, user = out_dir_and_overrides(args)
    overrides = [f"extract.image_size={image_size}"]
    if args.demo:
        overrides += list(DEMO_OVERRIDES)
    elif args.folder is not None:
        overrides += ["data=folder", f"{_DATA_NODE}.params.root={args.folder}"]
    return args.config or DEFAULT_CONFIG, [*overrides, *user, *flag_overrides(args, FLAG_KEYS)]


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from mergevq.backend import select_backend
    from mergevq.cli.common import print_config_files
    from mergevq.config import load_with_origins
    from mergevq.paths import resolve_config
    from mergevq.distributed import init_from_env, shutdown
    from mergevq.inference.extract_codes import OUTPUT_PATTERNS, extract_codes
    from mergevq.outputs import plan_output_dir
    from mergevq.training.export import load_tokenizer

    # Before any work, on every rank: OUT_DIR is new, empty or a codes folder (also one written before
    # folders were claimed). The manifest decides reuse (it compares the request), so the claim
    # records no settings and an interrupted extraction always resumes.
    out_dir, _ = out_dir_and_overrides(args)
    plan = plan_output_dir(out_dir, command="extract-codes", settings={}, patterns=OUTPUT_PATTERNS,
                           resumable=True, overwrite=args.overwrite, flag="OUT_DIR", accept_unmarked=True)
    model = load_tokenizer(args.tokenizer, raw=args.raw)  # CPU, eval mode
    config_name, overrides = config_request(args, model.config.image_size)
    loaded = load_with_origins([resolve_config(config_name)], overrides)
    settings = ExtractSettings.from_node(OmegaConf.to_container(loaded.select("extract"), resolve=True),
                                         source=loaded.origin("extract"))
    backend = select_backend(accelerator=settings.accelerator, precision=settings.precision)
    autocast_dtype = backend.inference_autocast_dtype("mergevq extract-codes")
    ctx = init_from_env(backend=backend.ddp_process_group_backend)
    try:
        plan.apply_on_main(is_main=ctx.is_main)
        print_config_files(loaded.files, is_main=ctx.is_main)
        device = backend.device(ctx.local_rank)
        dataset = loaded.instantiate(_DATA_NODE)
        description = OmegaConf.to_container(loaded.select(_DATA_NODE), resolve=True)
        result = extract_codes(
            model.to(device).eval(), dataset, out_dir=out_dir, k_candidates=settings.k_candidates,
            seed=settings.seed, flip=settings.flip, batch_size=settings.batch_size,
            num_workers=settings.num_workers, device=device, autocast_dtype=autocast_dtype,
            dist=ctx, dataset_description=description, force=args.overwrite,
            progress=None,
        )
        if ctx.is_main:
            _print(result, world_size=ctx.world_size)
    finally:
        shutdown()
    return 0


def _print(result, *, world_size: int) -> None:
    m = result.manifest
    if result.up_to_date:
        print(f"{result.out_dir}: already holds this extraction ({m.num_images} images); nothing to do")
        return
    rate = result.images_encoded / result.seconds if result.seconds > 0 else 0.0
    print(f"wrote {result.out_dir}: {m.num_images} images"
          f"{' (+ flipped)' if m.has_flip else ''}, {len(m.shards)} shard(s), L={m.num_tokens} "
          f"grid={m.grid[0]}x{m.grid[1]}, {m.num_classes} classes")
    print(f"K counts: {', '.join(f'{k}: {c}' for k, c in sorted(m.k_counts.items()))}")
    print(f"images skipped (unreadable or over the pixel limit): {m.num_skipped}")
    print(f"rank 0: {result.images_encoded} images in {result.seconds:.1f} s ({rate:.1f} images/s"
          f"{', x2 with flip' if m.has_flip else ''}; {world_size} process(es))")
