"""``mergevq sample``: class-conditional MergeAR samples as PNGs and one ADM-layout npz.

    mergevq sample --ar AR --tokenizer TOK --out DIR [KEY=VALUE ...] [--config sample/base]
                   [--per-class 50] [--classes 0 1 ...] [--seed 0] [--num-keep K]
                   [--cfg-scale S[,S2]] [--cfg-schedule constant|linear] [--temperature T[,T2]]
                   [--top-k K[,K2]] [--top-p P[,P2]] [--full-cache] [--exact-k] [--[no-]compile]
                   [--write both|png|npz]
                   [--batch-size 32] [--devices N] [--accelerator auto] [--precision 32] [--overwrite]

Every setting is a key of the ``sample`` section of the config (default configs/sample/base.yaml,
which documents each); a flag sets its key (``--top-k 5`` = ``sample.top_k=5``) and wins over a
KEY=VALUE override, which wins over the file. ``--config sample/xl_authors`` is the authors' XL recipe.

AR / TOK: an exported folder, a ``mergevq train`` run directory (newest checkpoint, EMA weights) or a
checkpoint file. Samples ``--per-class`` images of every class (or of ``--classes``), class-major;
sample i gets a seed derived from (``--seed``, i), so the images do not depend on ``--batch-size`` or
on the number of processes. K (``--num-keep``, default the tokenizer's nominal K) is the merge
instruction given to MergeAR.

Per-sub-token settings: ``--cfg-scale``, ``--temperature``, ``--top-k`` and ``--top-p`` take one value
(every sub-token) or a comma list with one value per sub-token, sub-token 0 first, as the authors'
sampler reads them: ``-t 1.1,1.0 --cfg-scale 1.75,1.85`` is temperature 1.1 and guidance 1.75 on
sub-token 0, 1.0 and 1.85 on sub-token 1. ``--cfg-scale 1.75 1.85`` (space) is the same pair.

``--exact-k``: once a sample holds K distinct indices, later tokens may only repeat one of them (each
sub-token is drawn from the values consistent with an index already produced), so every image is a
true K-token image and the compressed KV cache has the fixed size P + K + w. Off by default (the paper
samples freely and a sample may hold more than K distinct indices). Recorded in the folder's claim:
the two modes never share a folder. ``--compile`` / ``--no-compile``: the compiled decode step
(default: on for CUDA, off for CPU); the same samples up to float rounding.

Writes ``DIR/samples.npz`` (``arr_0`` N x H x W x 3 uint8 in sample order, ``arr_1`` labels; the input
of ``mergevq evaluate-generation`` and of guided-diffusion's evaluator), ``DIR/png/<i>_<label>.png`` and
``DIR/sample.json`` (settings, config files, counts, KV-cache statistics, speed). Under torchrun each
rank samples a contiguous share; DIR must be on a disk every node sees. Rank 0 shows a progress bar
(samples done / total, tokens/s; ``MERGEVQ_PROGRESS=0`` hides it).

Resuming: a run that was killed or failed is continued by running the same command again (any
--batch-size, any number of processes): finished samples are kept, the others are generated with
their own seeds, and the npz equals an uninterrupted run's. A finished DIR is left as it is. DIR
holding samples of other settings (weights, classes, seed, K, sampling options, cache, precision,
--exact-k, --write) is refused unless --overwrite, which replaces them; any other non-empty DIR is refused.
Options may come anywhere; KEY=VALUE overrides may also follow them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides, print_config_files

_DEFAULT_CONFIG = "sample/base"
_SECTION = "sample"
_WRITE = {"both": (True, True), "png": (True, False), "npz": (False, True)}  # -> (png, npz)
_FLAG_KEYS = FlagKeys(batch_size="sample.batch_size", devices="sample.devices", accelerator="sample.accelerator",
                      precision="sample.precision", seed="sample.seed")
# Flags of this command only: dest -> key of the sample section. The common ones are in _FLAG_KEYS.
_OWN_FLAGS = ("ar", "tokenizer", "out", "per_class", "classes", "num_keep", "cfg_scale", "cfg_schedule",
              "temperature", "top_k", "top_p", "write")
_PER_SUB_TOKEN = {"cfg_scale": float, "temperature": float, "top_k": int, "top_p": float}
_MULTI_VALUE = ("cfg_scale", "classes")  # flags that take several values, spaced or comma-separated


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="class-conditional MergeAR sampling to PNGs and an ADM-layout npz",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. sample.top_k=[0,0] sample.classes=[207]")
    parser.add_argument("--config", default=_DEFAULT_CONFIG,
                        help=f"sampling config, a path or a name under configs/ (default: {_DEFAULT_CONFIG})")
    parser.add_argument("--ar", default=None, metavar="AR",
                        help="MergeAR: export folder, run directory or .ckpt (sample.ar)")
    parser.add_argument("--tokenizer", default=None, metavar="TOK",
                        help="tokenizer: export folder, run directory or .ckpt (sample.tokenizer)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (sample.out)")
    parser.add_argument("--per-class", type=int, default=None, help="samples per class (sample.per_class)")
    parser.add_argument("--classes", nargs="+", default=None, metavar="C",
                        help="class ids to sample, 207 360 or 207,360 (sample.classes; default: all of the "
                             "MergeAR's classes)")
    parser.add_argument("--num-keep", type=int, default=None, help="K given to MergeAR (sample.num_keep)")
    parser.add_argument("--cfg-scale", nargs="+", default=None, metavar="S",
                        help="classifier-free guidance scale: one value or one per sub-token, "
                             "1.75,1.85 or 1.75 1.85; 1 = off (sample.cfg_scale)")
    parser.add_argument("--cfg-schedule", choices=("constant", "linear"), default=None,
                        help="constant, or linear from 1 to the scale over the tokens (sample.cfg_schedule)")
    parser.add_argument("--temperature", "-t", default=None, metavar="T[,T2]",
                        help="one value or a comma list per sub-token; 0 = greedy (sample.temperature)")
    parser.add_argument("--top-k", "-k", default=None, metavar="K[,K2]",
                        help="one value or a comma list per sub-token; 0 = off (sample.top_k)")
    parser.add_argument("--top-p", "-p", default=None, metavar="P[,P2]",
                        help="one value or a comma list per sub-token; 1 = off (sample.top_p)")
    parser.add_argument("--full-cache", action="store_true",
                        help="keep every K/V, no duplicate eviction (sample.cache=full)")
    parser.add_argument("--exact-k", action="store_true",
                        help="at most K distinct indices per sample: once K are produced, only repeat them "
                             "(sample.exact_k=true)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="compiled decode step (sample.compile; default: on for CUDA, off for CPU)")
    parser.add_argument("--write", choices=tuple(_WRITE), default=None, help="what to write (sample.write)")
    add_common_flags(parser, keys=_FLAG_KEYS)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace samples in DIR made with other settings (same settings resume)")
    parser.set_defaults(run=run, trailing_items="overrides")


# --------------------------------------------------------------------------------------------------
# flags -> overrides


def _number_list(items: list[str] | str, *, name: str, kind: type) -> float | int | list:
    """``"1.1,1.0"`` or ``["1.75", "1.85"]`` -> a number (one value) or a list (one per sub-token)."""
    from mergevq.errors import ConfigError

    texts = [t for item in ([items] if isinstance(items, str) else items) for t in item.split(",")]
    try:
        values = [kind(t) for t in texts]
    except ValueError:
        raise ConfigError(f"{_flag(name)} {','.join(texts)}: expected one {kind.__name__} or a comma list of "
                          f"{kind.__name__}s{' (one per sub-token)' if name in _PER_SUB_TOKEN else ''}") from None
    return values[0] if len(values) == 1 else values


def _own_overrides(args: argparse.Namespace) -> list[str]:
    """``sample.KEY=VALUE`` (JSON values: paths with spaces, lists) for each of this command's flags given."""
    overrides = []
    for name in _OWN_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name in _PER_SUB_TOKEN:
            value = _number_list(value, name=name, kind=_PER_SUB_TOKEN[name])
        elif name == "classes":
            value = _number_list(value, name=name, kind=int)
            value = value if isinstance(value, list) else [value]
        overrides.append(f"{_SECTION}.{name}={json.dumps(value)}")
    if args.full_cache:
        overrides.append(f"{_SECTION}.cache=full")
    if args.exact_k:
        overrides.append(f"{_SECTION}.exact_k=true")
    if args.compile is not None:
        overrides.append(f"{_SECTION}.compile={json.dumps(args.compile)}")
    return overrides


def _split_trailing(args: argparse.Namespace) -> None:
    """``--cfg-scale 1.5 2 sample.seed=3``: argparse hands the KEY=VALUE item to the flag that takes
    several values; it belongs to the overrides."""
    for name in _MULTI_VALUE:
        items = getattr(args, name)
        if items is not None:
            args.overrides.extend(item for item in items if "=" in item)
            setattr(args, name, [item for item in items if "=" not in item] or None)


# --------------------------------------------------------------------------------------------------
# the sample section


@dataclass(frozen=True)
class SampleSettings:
    """The ``sample`` section of configs/sample/base.yaml (documented there)."""

    ar: str | None
    tokenizer: str | None
    out: str | None
    per_class: int
    classes: list[int] | None
    seed: int
    num_keep: int | None
    cfg_scale: float | list[float]
    temperature: float | list[float]
    top_k: int | list[int]
    top_p: float | list[float]
    cfg_schedule: Literal["constant", "linear"]
    cache: Literal["compressed", "full"]
    exact_k: bool
    compile: bool | None
    write: Literal["both", "png", "npz"]
    batch_size: int
    devices: int | Literal["auto"] | None
    accelerator: str
    precision: str

    @classmethod
    def from_loaded(cls, loaded) -> SampleSettings:
        """From a :class:`mergevq.config.LoadedConfig`; errors name the file that set the key."""
        from mergevq.config import section_values
        from mergevq.errors import ConfigError

        node = section_values(cls, loaded, _SECTION)
        names = [f.name for f in fields(cls)]
        for name in ("ar", "tokenizer", "out"):
            if node[name] is None:
                raise ConfigError(f"{_SECTION}.{name} is not set: pass {_flag(name)} or {_SECTION}.{name}=...")
        for name in ("per_class", "batch_size", "devices"):
            if isinstance(node[name], int) and node[name] < 1:
                raise ConfigError(f"{loaded.origin(f'{_SECTION}.{name}')}: {_SECTION}.{name}={node[name]} "
                                  "must be >= 1")
        return cls(**{n: node[n] for n in names})

    def sampling(self):
        """The :class:`mergevq.ar.sampling.SamplingSettings`; a bad value is a one-line ConfigError."""
        from mergevq.ar.sampling import SamplingSettings
        from mergevq.errors import ConfigError

        def given(value):
            return tuple(value) if isinstance(value, list) else value

        try:
            return SamplingSettings(cfg_scale=given(self.cfg_scale), cfg_schedule=self.cfg_schedule,
                                    temperature=given(self.temperature), top_k=given(self.top_k),
                                    top_p=given(self.top_p), exact_k=self.exact_k)
        except ValueError as err:
            raise ConfigError(f"sampling settings: {err}") from None


def per_sub_token(settings, *, num_sub_tokens: int) -> dict[str, list]:
    """Each per-sub-token setting as its list of ``num_sub_tokens`` values; a list of another length is
    a one-line ConfigError naming the flag, the key, the count given and the model's count."""
    from mergevq.ar.sampling import PER_SUB_TOKEN
    from mergevq.errors import ConfigError

    values = {}
    for name in PER_SUB_TOKEN:
        try:
            values[name] = list(settings.values(name, num_sub_tokens))
        except ValueError:
            given = getattr(settings, name)
            raise ConfigError(f"{_flag(name)} ({_SECTION}.{name}) has {len(given)} values "
                              f"{','.join(str(v) for v in given)} but this MergeAR has {num_sub_tokens} sub-tokens: "
                              f"give one value, or {num_sub_tokens} comma-separated values (one per sub-token)") from None
    return values


def _check_devices(devices: int | str | None) -> None:
    """``sample.devices`` is how many processes the launcher starts on this node; the command runs
    in each of them and cannot add any, so a number that differs is an error, not a silent change.
    null / auto: whatever the launcher started."""
    from mergevq.errors import ConfigError

    if devices is None or devices == "auto":
        return
    started = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if devices != started:
        raise ConfigError(f"--devices {devices} (sample.devices) but {started} process(es) run on this node: start "
                          f"one per device, e.g. torchrun --nproc_per_node={devices} -m mergevq sample ... "
                          "(scripts/evaluation/sample_gpu.sh), or leave sample.devices null")


# --------------------------------------------------------------------------------------------------
# run


def run(args: argparse.Namespace) -> int:
    from mergevq.backend import select_backend
    from mergevq.config import load_with_origins
    from mergevq.distributed import init_from_env, shutdown
    from mergevq.errors import ConfigError
    from mergevq.inference.sample import class_labels, sample_to_disk
    from mergevq.paths import resolve_config
    from mergevq.training.ar_export import load_mergear
    from mergevq.training.export import load_tokenizer

    _split_trailing(args)
    bad = [item for item in args.overrides if "=" not in item]
    if bad:
        raise ConfigError(f"expected KEY=VALUE overrides, got {' '.join(bad)}")
    # the user's overrides, then the flags: an explicit flag wins
    overrides = [*args.overrides, *_own_overrides(args), *flag_overrides(args, _FLAG_KEYS)]
    loaded = load_with_origins([resolve_config(args.config)], overrides)
    config = SampleSettings.from_loaded(loaded)
    settings = config.sampling()
    _check_devices(config.devices)
    backend = select_backend(accelerator=config.accelerator, precision=config.precision)
    autocast_dtype = backend.inference_autocast_dtype("mergevq sample")
    model = load_mergear(config.ar)
    tokenizer = load_tokenizer(config.tokenizer)
    resolved = per_sub_token(settings, num_sub_tokens=len(model.config.sub_token_bits))
    classes = config.classes if config.classes is not None else range(model.config.num_classes)
    labels = class_labels(classes=list(classes), per_class=config.per_class)
    num_keep = config.num_keep if config.num_keep is not None else tokenizer.config.num_keep
    write_png, write_npz = _WRITE[config.write]
    config_files = [str(Path(f).resolve()) for f in loaded.files]

    ctx = init_from_env(backend=backend.ddp_process_group_backend)
    try:
        print_config_files(config_files, is_main=ctx.is_main)
        device = backend.device(ctx.local_rank)
        run_info = {"ar": str(config.ar), "tokenizer": str(config.tokenizer), "seed": config.seed,
                    "per_class": config.per_class, "classes": config.classes, "num_classes": len(classes),
                    "settings": {**resolved, "cfg_schedule": settings.cfg_schedule},
                    "config_files": config_files, "world_size": ctx.world_size, "precision": backend.precision}
        result = sample_to_disk(model.to(device), tokenizer.to(device), labels=labels, num_keep=num_keep,
                                settings=settings, seed=config.seed, out_dir=config.out,
                                batch_size=config.batch_size, device=device, context=ctx, write_png=write_png,
                                write_npz=write_npz, compressed_cache=config.cache == "compressed",
                                compile=config.compile,
                                autocast_dtype=autocast_dtype, overwrite=args.overwrite, run_info=run_info,
                                progress=_report_resume(config.out) if ctx.is_main else None)
        if ctx.is_main:
            _print(result)
    finally:
        shutdown()
    return 0


def _report_resume(out: str):
    """A progress callback that says, once, how much of an interrupted run is kept (the bar counts the rest)."""
    def report(progress) -> None:
        if progress.done == 0 and progress.already_done:
            print(f"sample: resuming {out}: {progress.already_done} of {progress.total} samples were done, "
                  f"{progress.total - progress.already_done} to go", file=sys.stderr, flush=True)
    return report


def _print(result) -> None:
    if result.up_to_date:
        print(f"{result.out_dir} already holds these {result.num_samples} samples; nothing to do")
        return
    resumed = f" ({result.num_resumed} kept from an interrupted run)" if result.num_resumed else ""
    print(f"wrote {result.num_samples} samples ({result.image_shape[0]}x{result.image_shape[1]}){resumed} to "
          f"{result.out_dir}; generated {result.num_generated} in {result.seconds:.1f} s "
          f"({result.images_per_second:.2f} images/s)")
    print(f"KV cache ({'compressed' if result.compressed_cache else 'full'}): mean peak "
          f"{result.mean_peak_cache_entries:.1f} entries of L={result.num_tokens} tokens "
          f"(+ prefix), mean unique tokens {result.mean_unique_tokens:.1f} at K={result.num_keep}")

