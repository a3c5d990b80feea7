"""``mergevq evaluate-generation``: gFID, KID, precision/recall (and IS) of samples vs a reference.

    mergevq evaluate-generation SAMPLES --ref REF [KEY=VALUE ...] [--config evaluation/generation]
                                [--inception FILE [--inception-has-classifier]] [--batch-size 50]
                                [--devices N] [--accelerator auto] [--kid-subset-size 1000] [--out results.json]

Every setting is a key of the ``eval`` section of the config (default configs/evaluation/generation.yaml,
which documents each); a flag sets its key and wins over a KEY=VALUE override.

SAMPLES: an ADM-layout .npz (``arr_0`` N x H x W x 3 uint8, what ``mergevq sample`` writes) or a folder
of images. REF: an ADM reference batch .npz (``mu``/``sigma`` and/or ``arr_0``) or a folder of images.
FID uses REF's stored mu/sigma when present (they are pool3 statistics of the TF FID Inception, the
network behind the default weights, so the numbers are comparable); KID and precision/recall need
REF images. Inception Score needs ``--inception FILE --inception-has-classifier`` (weights with the
1008-way classifier, e.g. torch-fidelity's pt_inception-2015-12-05 file). Without --inception the
weights of ``mergevq prepare-weights`` are used (under ``$MERGEVQ_CACHE/weights``). Under torchrun each
rank extracts the features of its share of the images; rank 0 shows a progress bar of its share
(``MERGEVQ_PROGRESS=0`` hides it). ``--out`` writes the metrics as JSON: a new file, or one an earlier
evaluate-generation wrote (replaced); a folder or another file is refused before any work.
Options may come anywhere; KEY=VALUE overrides may also follow them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, fields
from typing import Literal

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides, print_config_files

_DEFAULT_CONFIG = "evaluation/generation"
_SECTION = "eval"
_FLAG_KEYS = FlagKeys(batch_size="eval.batch_size", devices="eval.devices", accelerator="eval.accelerator")
# this command's own flags: dest -> key of the eval section
_OWN_FLAGS = {"ref": "ref", "inception": "inception_weights", "kid_subset_size": "kid_subset_size"}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("evaluate-generation", help="FID / KID / precision-recall / IS of samples vs a reference",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", metavar="SAMPLES", help="ADM-layout .npz (arr_0) or a folder of images")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. eval.batch_size=100")
    parser.add_argument("--config", default=_DEFAULT_CONFIG,
                        help=f"evaluation config, a path or a name under configs/ (default: {_DEFAULT_CONFIG})")
    parser.add_argument("--ref", default=None, metavar="REF",
                        help="ADM reference batch .npz (mu/sigma and/or arr_0) or a folder of images (eval.ref)")
    parser.add_argument("--inception", default=None, metavar="FILE",
                        help="a torch-fidelity InceptionV3 state dict (eval.inception_weights; default: the "
                             "prepare-weights file)")
    parser.add_argument("--inception-has-classifier", action="store_true",
                        help="the Inception weights have the real 1008-way classifier: also compute IS "
                             "(eval.inception_has_classifier)")
    parser.add_argument("--kid-subset-size", type=int, default=None,
                        help="KID subset size, capped at the smaller set (eval.kid_subset_size)")
    add_common_flags(parser, keys=_FLAG_KEYS)
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the metrics as JSON here")
    parser.set_defaults(run=run, trailing_items="overrides")


@dataclass(frozen=True)
class GenerationEvalSettings:
    """The ``eval`` section of configs/evaluation/generation.yaml (documented there)."""

    ref: str | None
    inception_weights: str | None
    inception_has_classifier: bool
    batch_size: int
    kid_subset_size: int
    accelerator: str
    devices: int | Literal["auto"]

    @classmethod
    def from_loaded(cls, loaded) -> GenerationEvalSettings:
        from mergevq.config import section_values
        from mergevq.errors import ConfigError

        node = section_values(cls, loaded, _SECTION)
        names = [f.name for f in fields(cls)]
        if node["ref"] is None:
            raise ConfigError(f"{_SECTION}.ref is not set: pass --ref REF or {_SECTION}.ref=REF")
        for name, least in (("batch_size", 1), ("kid_subset_size", 2)):
            if node[name] < least:
                raise ConfigError(f"{loaded.origin(f'{_SECTION}.{name}')}: {_SECTION}.{name}={node[name]}: expected "
                                  f">= {least} (--{name.replace('_', '-')})")
        return cls(**{n: node[n] for n in names})


def _own_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [f"{_SECTION}.{key}={json.dumps(getattr(args, dest))}" for dest, key in _OWN_FLAGS.items()
                 if getattr(args, dest) is not None]
    if args.inception_has_classifier:
        overrides.append(f"{_SECTION}.inception_has_classifier=true")
    return overrides


def _check_devices(devices: int | str) -> None:
    """A number is checked against the processes torchrun started on this node (the command adds none)."""
    import os

    from mergevq.errors import ConfigError

    started = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if devices != "auto" and devices != started:
        raise ConfigError(f"--devices {devices} ({_SECTION}.devices) but {started} process(es) run on this node: "
                          f"start one per device (torchrun --nproc_per_node={devices}), or use auto")


def run(args: argparse.Namespace) -> int:
    from mergevq.backend import select_backend
    from mergevq.config import load_with_origins
    from mergevq.distributed import init_from_env, shutdown
    from mergevq.errors import ConfigError
    from mergevq.inference.generation_eval import (
        COMMAND,
        MetricSettings,
        evaluate_generation,
        load_images,
        load_reference,
    )
    from mergevq.metrics.fid import InceptionFeatures
    from mergevq.outputs import check_output_file
    from mergevq.paths import resolve_config

    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise ConfigError(f"expected KEY=VALUE overrides after SAMPLES, got {' '.join(bad)}")
    loaded = load_with_origins([resolve_config(args.config)],
                               [*args.overrides, *_own_overrides(args), *flag_overrides(args, _FLAG_KEYS)])
    settings = GenerationEvalSettings.from_loaded(loaded)
    _check_devices(settings.devices)
    if args.out:
        check_output_file(args.out, command=COMMAND)
    # the inputs first: a wrong path fails in a second, before any weights are read
    samples = load_images(args.samples)
    reference = load_reference(settings.ref)
    backend = select_backend(accelerator=settings.accelerator, precision="32")
    inception = InceptionFeatures.load(path=settings.inception_weights, has_classifier=settings.inception_has_classifier,
                                       with_logits=settings.inception_has_classifier)
    ctx = init_from_env(backend=backend.ddp_process_group_backend)
    try:
        print_config_files(loaded.files, is_main=ctx.is_main)
        metrics = evaluate_generation(samples, reference, inception=inception, device=backend.device(ctx.local_rank),
                                      batch_size=settings.batch_size, ctx=ctx,
                                      settings=MetricSettings(kid_subset_size=settings.kid_subset_size))
        if ctx.is_main:
            if args.out:
                metrics.write_json(args.out)
            _print(metrics)
    finally:
        shutdown()
    return 0


def _print(metrics) -> None:
    def fmt(value, digits=4):
        return "-" if value is None else f"{value:.{digits}f}"

    source = "REF mu/sigma" if metrics.fid_from_stored_stats else f"{metrics.num_reference_images} REF images"
    print(f"samples: {metrics.num_samples} images ({metrics.samples_skipped} unreadable skipped)")
    print(f"FID: {metrics.fid:.4f} (vs {source})")
    print(f"KID: {fmt(metrics.kid_mean, 6)} +- {fmt(metrics.kid_std, 6)}")
    print(f"precision: {fmt(metrics.precision)}  recall: {fmt(metrics.recall)}")
    print(f"IS: {fmt(metrics.inception_score_mean, 2)} +- {fmt(metrics.inception_score_std, 2)}")
    if metrics.reference_skipped:
        print(f"reference: {metrics.reference_skipped} unreadable images skipped")
    for note in metrics.notes:
        print(f"note: {note}")
