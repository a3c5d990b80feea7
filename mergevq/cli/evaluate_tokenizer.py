"""``mergevq evaluate-tokenizer``: rFID, PSNR, SSIM, LPIPS, codebook usage and images/s of a trained
tokenizer over a validation set, for a sweep of kept-token counts K (DESIGN §6).

    mergevq evaluate-tokenizer [--num-keep 256,196,144] [--folder PATH | --demo] [--config NAME] [--out DIR]
                               [--raw] [--batch-size N] [--num-workers N] [--devices N] [--accelerator A]
                               [--precision P] TOKENIZER [CONFIG ...] [data=NAME] [KEY=VALUE ...]

(options may come anywhere; KEY=VALUE overrides may also follow them.)

TOKENIZER: an exported folder, a ``mergevq train`` run directory (newest checkpoint, EMA weights
unless --raw) or a checkpoint file. The task config is ``configs/evaluation/tokenizer.yaml``
(``--config`` names another); the data set is a config group: ImageNet val by default (set
data.params.validation.params.root=PATH), ``data=folder`` (``--folder PATH`` also sets the root),
``data=demo`` (``--demo`` also takes ``evaluation/tokenizer_demo``: the tiny tokenizers' K sweep on the
CPU) or ``data=NAME`` for your own ``configs/data/NAME.yaml``. Further CONFIG files are merged after it
and KEY=VALUE overrides come last (eval.batch_size=64, eval.max_images=1000, eval.rfid=false,
eval.inception_weights=FILE, eval.lpips_weights=FILE, eval.precision=bf16-mixed, eval.protocol=official
...); the common flags (--batch-size ...) set the eval key their help names and win over both. Every
composed config file is printed (``config: /abs/path``) and recorded in the JSON.

eval.protocol: ``ours`` (default): per-image PSNR / SSIM on the float reconstructions, rFID with
torch-fidelity on uint8-rounded images. ``official``: in addition, PSNR / SSIM / rFID computed the way
the authors' evaluation script does (mergevq/metrics/official_protocol.py: batch PSNR over
eval.official_batch_size images on truncated 8-bit images, rFID on float images resized like
pytorch-fid) as ``psnr_official`` / ``ssim_official`` / ``rfid_official``, from the same
reconstructions in the same pass; our rFID is then not computed (one Inception pass).

Writes ``tokenizer_eval.json`` (every number, the settings, the tokenizer source, the config files) and
``tokenizer_eval.md`` (one row per K) into --out (default: ``eval_tokenizer/`` next to the
tokenizer) and prints the table. --out must be new, empty or an earlier evaluate-tokenizer output
(replaced once the new numbers are ready); another folder or a file is refused before any work.
Several processes: launch with torchrun (or
scripts/evaluation/evaluation_mergevq.sh); the set is sharded and the results equal one process's.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides

__all__ = ["EvalSetup", "FLAG_KEYS", "add_parser", "check_eval_protocol", "config_request", "default_out_dir",
           "prepare_eval", "run", "run_settings"]

DEFAULT_CONFIG = "evaluation/tokenizer"
DEMO_CONFIG = "evaluation/tokenizer_demo"  # --demo without --config: the tiny tokenizers' settings
FLAG_KEYS = FlagKeys(batch_size="eval.batch_size", num_workers="eval.num_workers", devices="eval.devices",
                     accelerator="eval.accelerator", precision="eval.precision")
JSON_FILE = "tokenizer_eval.json"
TABLE_FILE = "tokenizer_eval.md"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared with ``mergevq reconstruct``."""
    parser.add_argument("tokenizer", metavar="TOKENIZER",
                        help="exported tokenizer folder, mergevq train run directory or checkpoint file")
    parser.add_argument("items", nargs="*", metavar="CONFIG|GROUP=NAME|KEY=VALUE",
                        help="extra config files (merged after the task config), then data=NAME and overrides "
                             "such as eval.batch_size=64")
    parser.add_argument("--config", default=None, metavar="NAME|FILE",
                        help=f"the task config (default: {DEFAULT_CONFIG}; with --demo: {DEMO_CONFIG})")
    parser.add_argument("--num-keep", default=None, metavar="K[,K...]",
                        help="kept-token counts to sweep, e.g. 256,196,144 (default: eval.num_keep)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--folder", default=None, metavar="PATH",
                        help="evaluate this folder of images (data=folder data.params.validation.params.root=PATH)")
    source.add_argument("--demo", action="store_true",
                        help=f"the embedded 32 px demo crops (data=demo, and --config {DEMO_CONFIG} unless given)")
    parser.add_argument("--raw", action="store_true", help="a run directory's raw weights instead of the EMA")
    add_common_flags(parser, keys=FLAG_KEYS)


def config_request(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The config names (the task config, then the extra CONFIGs) and the overrides (the data choice of
    --demo / --folder, the user's items, then the common flags' keys)."""
    from mergevq.cli.train import split_items

    configs, overrides = split_items(list(args.items))
    task = args.config or (DEMO_CONFIG if args.demo else DEFAULT_CONFIG)
    chosen = []
    if args.demo:
        chosen = ["data=demo"]
    elif args.folder is not None:
        chosen = ["data=folder", f"data.params.validation.params.root={args.folder}"]
    return [task, *configs], [*chosen, *overrides, *flag_overrides(args, FLAG_KEYS)]


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What the command line asked for, recorded in the output folder's claim (mergevq.outputs)."""
    configs, overrides = config_request(args)
    return {"tokenizer": str(Path(args.tokenizer).expanduser().resolve()), "raw": bool(args.raw),
            "num_keep": args.num_keep, "configs": configs, "overrides": overrides}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate-tokenizer", help="rFID / PSNR / SSIM / LPIPS / codebook usage over a K sweep",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser)
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default: eval_tokenizer/ next to TOKENIZER)")
    parser.set_defaults(run=run, trailing_items="items")


@dataclass(frozen=True)
class EvalSetup:
    """What both evaluation commands build from the command line (on every rank)."""

    model: Any  # MergeVQ in eval mode on ``device``
    dataset: Any  # the validation set (first eval.max_images items)
    num_keep: tuple[int, ...]
    settings: dict  # the resolved ``eval`` node
    data_node: dict  # the resolved ``data.params.validation`` node
    config_files: tuple[str, ...]
    device: Any  # torch.device
    autocast_dtype: Any  # torch.dtype | None
    context: Any  # DistContext


def default_out_dir(tokenizer: str, name: str) -> Path:
    """``<folder of TOKENIZER>/<name>``: inside an export / run directory, beside a checkpoint file."""
    source = Path(tokenizer).expanduser()
    return (source.parent if source.is_file() else source) / name


def prepare_eval(args: argparse.Namespace) -> EvalSetup:
    """Config, process group, tokenizer, data set and K list of an evaluation command."""
    from omegaconf import OmegaConf
    from torch.utils.data import Subset

    from mergevq.backend import select_backend
    from mergevq.cli.common import print_config_files
    from mergevq.config import load_with_origins
    from mergevq.distributed import init_from_env
    from mergevq.errors import ConfigError
    from mergevq.inference.tokenizer_eval import check_num_keep_list, parse_num_keep
    from mergevq.paths import resolve_config
    from mergevq.training.export import load_tokenizer

    configs, overrides = config_request(args)
    files = [resolve_config(c) for c in configs]
    loaded = load_with_origins(files, overrides)
    settings = OmegaConf.to_container(loaded.select("eval"), resolve=True)
    check_eval_protocol(settings)

    backend = select_backend(accelerator=str(settings["accelerator"]), precision=str(settings["precision"]),
                             devices=settings["devices"])
    autocast_dtype = backend.inference_autocast_dtype("mergevq evaluate-tokenizer")
    context = init_from_env(backend=backend.ddp_process_group_backend)
    print_config_files(loaded.files, is_main=context.is_main)
    device = backend.device(context.local_rank)
    model = load_tokenizer(args.tokenizer, raw=args.raw).to(device)
    resolution = settings["resolution"]
    if resolution is None:  # the tokenizer's own size; the data nodes read it through ${eval.resolution}
        resolution = model.config.image_size
        loaded = load_with_origins(files, [*overrides, f"eval.resolution={resolution}"])
        settings = OmegaConf.to_container(loaded.select("eval"), resolve=True)
        check_eval_protocol(settings)
    elif resolution != model.config.image_size:
        raise ConfigError(f"eval.resolution={resolution}, but the tokenizer takes {model.config.image_size} px "
                          f"images (its decoder grid is fixed); leave eval.resolution null")
    num_keep = check_num_keep_list(model, parse_num_keep(args.num_keep if args.num_keep is not None
                                                         else settings["num_keep"]))
    dataset = loaded.instantiate("data.params.validation")
    max_images = settings["max_images"]
    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ConfigError(f"eval.max_images={max_images!r}: expected a positive integer or null")
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    if isinstance(settings["batch_size"], bool) or not isinstance(settings["batch_size"], int):
        raise ConfigError(f"eval.batch_size={settings['batch_size']!r}: expected a positive integer")
    settings["num_keep"] = list(num_keep)  # what runs, recorded in the JSON
    return EvalSetup(model=model, dataset=dataset, num_keep=tuple(num_keep), settings=settings,
                     data_node=OmegaConf.to_container(loaded.select("data.params.validation"), resolve=True),
                     config_files=loaded.files, device=device, autocast_dtype=autocast_dtype,
                     context=context)


def check_eval_protocol(settings: dict) -> None:
    """``eval.protocol`` (ours | official) and, for official, ``eval.official_batch_size``: one-line
    ConfigErrors before any model or image is loaded."""
    from mergevq.metrics.official_protocol import (
        check_official_batch_size,
        check_protocol,
    )

    if check_protocol(settings["protocol"]) == "official":
        check_official_batch_size(settings["official_batch_size"])


def run(args: argparse.Namespace) -> int:
    from mergevq.distributed import barrier, shutdown
    from mergevq.fileio import atomic_write
    from mergevq.inference.tokenizer_eval import evaluate_tokenizer
    from mergevq.metrics.fid import InceptionFeatures
    from mergevq.metrics.official_protocol import (
        OfficialInceptionFeatures,
        OfficialProtocol,
    )
    from mergevq.outputs import plan_output_dir
    from mergevq.pretrained import load_lpips

    out = Path(args.out) if args.out is not None else default_out_dir(args.tokenizer, "eval_tokenizer")
    # every rank refuses a bad --out before any work; rank 0 replaces an earlier output only at the end
    plan = plan_output_dir(out, command="evaluate-tokenizer", settings=run_settings(args),
                           patterns=(JSON_FILE, TABLE_FILE), resumable=False)
    try:
        setup = prepare_eval(args)
        settings = setup.settings
        official = settings["protocol"] == "official"
        # protocol official: rFID only the authors' way (float images, pytorch-fid's resize), one Inception pass
        inception = (InceptionFeatures.load(path=settings["inception_weights"]).to(setup.device)
                     if settings["rfid"] and not official else None)
        official_protocol = None
        if official:
            official_protocol = OfficialProtocol(
                batch_size=settings["official_batch_size"],
                inception=(OfficialInceptionFeatures.load(path=settings["inception_weights"]).to(setup.device)
                           if settings["rfid"] else None),
            )
        lpips = (load_lpips(str(settings["lpips_net"]), path=settings["lpips_weights"]).to(setup.device)
                 if settings["lpips"] else None)
        result = evaluate_tokenizer(
            setup.model, setup.dataset, num_keep=setup.num_keep, inception=inception, lpips=lpips,
            batch_size=settings["batch_size"], device=setup.device, context=setup.context,
            autocast_dtype=setup.autocast_dtype, num_workers=settings["num_workers"], official=official_protocol,
        )
        if setup.context.is_main:
            plan.apply()
            report = {"tokenizer": str(Path(args.tokenizer).expanduser().resolve()), "raw": bool(args.raw),
                      "config_files": list(setup.config_files), "eval": settings, "data": setup.data_node,
                      "result": result.to_dict()}
            with atomic_write(out / JSON_FILE, text=True) as handle:
                json.dump(report, handle, indent=2)
            table = result.markdown_table()
            if result.official_batch_size is not None:
                table += ("\n\nThe authors' protocol (eval.protocol=official: batch PSNR over "
                          f"{result.official_batch_size} images, rFID on float images):\n\n"
                          + result.official_table())
            with atomic_write(out / TABLE_FILE, text=True) as handle:
                handle.write(table + "\n")
            print(table)
            skipped = f", {result.num_skipped} skipped (unreadable or over the pixel limit)" if result.num_skipped else ""
            print(f"{result.num_images} images{skipped}, {result.world_size} process(es), "
                  f"{result.sweep_images_per_s:.1f} images/s over the sweep ({result.total_seconds:.1f} s)")
            print(f"wrote {out / JSON_FILE} and {out / TABLE_FILE}")
        barrier()
    finally:
        shutdown()
    return 0
