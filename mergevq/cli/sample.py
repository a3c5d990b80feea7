"""``mergevq sample``: class-conditional MergeAR samples as PNGs and one ADM-layout npz.

    mergevq sample --ar AR --tokenizer TOK --out DIR [--per-class 50] [--classes 0 1 ...] [--seed 0]
                   [--num-keep K] [--cfg-scale S [S2]] [--cfg-schedule constant|linear] [--temperature 1]
                   [--top-k 0] [--top-p 1] [--full-cache] [--write both|png|npz] [--batch-size 32]
                   [--accelerator auto] [--precision 32] [--overwrite]

AR / TOK: an exported folder, a ``mergevq train`` run directory (newest checkpoint, EMA weights) or a
checkpoint file. Samples ``--per-class`` images of every class (or of ``--classes``), class-major;
sample i gets a seed derived from (``--seed``, i), so the images do not depend on ``--batch-size`` or
on the number of processes. K (``--num-keep``, default the tokenizer's nominal K) is the merge
instruction given to MergeAR. ``--cfg-scale``: one value for every sub-token or one per sub-token.

Writes ``DIR/samples.npz`` (``arr_0`` N x H x W x 3 uint8 in sample order, ``arr_1`` labels; the input
of ``mergevq evaluate-generation`` and of guided-diffusion's evaluator), ``DIR/png/<i>_<label>.png`` and
``DIR/sample.json`` (settings, counts, KV-cache statistics, speed). Under torchrun each rank samples
a contiguous share; DIR must be on a disk every node sees.

Resuming: a run that was killed or failed is continued by running the same command again (any
--batch-size, any number of processes): finished samples are kept, the others are generated with
their own seeds, and the npz equals an uninterrupted run's. A finished DIR is left as it is. DIR
holding samples of other settings (weights, classes, seed, K, sampling options, cache, precision,
--write) is refused unless --overwrite, which replaces them; any other non-empty DIR is refused.
"""

from __future__ import annotations

import argparse
import sys
import time

_WRITE = {"both": (True, True), "png": (True, False), "npz": (False, True)}  # -> (png, npz)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("sample", help="class-conditional MergeAR sampling to PNGs and an ADM-layout npz",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ar", required=True, metavar="AR", help="MergeAR: export folder, run directory or .ckpt")
    parser.add_argument("--tokenizer", required=True, metavar="TOK",
                        help="tokenizer: export folder, run directory or .ckpt")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--per-class", type=int, default=50, help="samples per class (default 50)")
    parser.add_argument("--classes", type=int, nargs="+", default=None,
                        help="class ids to sample (default: all of the MergeAR's classes)")
    parser.add_argument("--seed", type=int, default=0, help="global seed; sample i uses a seed from (seed, i)")
    parser.add_argument("--num-keep", type=int, default=None, help="K given to MergeAR (default: tokenizer's K)")
    parser.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0],
                        help="classifier-free guidance scale, one value or one per sub-token (1 = off)")
    parser.add_argument("--cfg-schedule", choices=("constant", "linear"), default="constant")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--full-cache", action="store_true", help="keep every K/V (no duplicate eviction)")
    parser.add_argument("--write", choices=tuple(_WRITE), default="both", help="what to write (default both)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch and rank")
    parser.add_argument("--accelerator", default="auto", help="auto | cpu | cuda | npu")
    parser.add_argument("--precision", default="32", help="32 | bf16-mixed | 16-mixed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace samples in DIR made with other settings (same settings resume)")
    parser.set_defaults(run=run)


class _Progress:
    """Lines on stderr (rank 0): how many samples an interrupted run had finished, then one every
    ~10 % of this process's share."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.started = time.perf_counter()
        self.next_report = 0.1

    def __call__(self, progress) -> None:
        if progress.done == 0:
            self.started = time.perf_counter()  # the rate counts generation, not loading and hashing
            if progress.already_done:
                print(f"sample: resuming {self.out}: {progress.already_done} of {progress.total} samples were "
                      f"done, {progress.total - progress.already_done} to go", file=sys.stderr, flush=True)
            return
        share = progress.done / max(progress.assigned, 1)
        if share >= self.next_report or progress.done == progress.assigned:
            rate = progress.done / max(time.perf_counter() - self.started, 1e-9)
            print(f"sample: {progress.done}/{progress.assigned} samples ({rate:.2f} samples/s)", file=sys.stderr,
                  flush=True)
            while self.next_report <= share:
                self.next_report += 0.1


def run(args: argparse.Namespace) -> int:
    from mergevq.ar.sampling import SamplingSettings
    from mergevq.backend import select_backend
    from mergevq.distributed import init_from_env, shutdown
    from mergevq.errors import ConfigError
    from mergevq.inference.sample import class_labels, sample_to_disk
    from mergevq.training.ar_export import load_mergear
    from mergevq.training.export import load_tokenizer

    backend = select_backend(accelerator=args.accelerator, precision=args.precision)
    model = load_mergear(args.ar)
    tokenizer = load_tokenizer(args.tokenizer)
    bits = model.config.sub_token_bits
    scales = tuple(args.cfg_scale) * len(bits) if len(args.cfg_scale) == 1 else tuple(args.cfg_scale)
    if len(scales) != len(bits):
        raise ConfigError(f"--cfg-scale takes 1 or {len(bits)} values (one per sub-token), got {len(args.cfg_scale)}")
    try:
        settings = SamplingSettings(cfg_scale=scales, cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                                    top_k=args.top_k, top_p=args.top_p)
    except ValueError as err:
        raise ConfigError(f"sampling settings: {err}") from None
    classes = args.classes if args.classes is not None else range(model.config.num_classes)
    labels = class_labels(classes=list(classes), per_class=args.per_class)
    num_keep = args.num_keep if args.num_keep is not None else tokenizer.config.num_keep
    write_png, write_npz = _WRITE[args.write]

    ctx = init_from_env(backend=backend.ddp_process_group_backend)
    try:
        device = backend.device(ctx.local_rank)
        run_info = {"ar": str(args.ar), "tokenizer": str(args.tokenizer), "seed": args.seed,
                    "per_class": args.per_class, "classes": args.classes, "num_classes": len(classes),
                    "settings": {"cfg_scale": list(settings.cfg_scale), "cfg_schedule": settings.cfg_schedule,
                                 "temperature": settings.temperature, "top_k": settings.top_k,
                                 "top_p": settings.top_p},
                    "world_size": ctx.world_size, "precision": backend.precision}
        result = sample_to_disk(model.to(device), tokenizer.to(device), labels=labels, num_keep=num_keep,
                                settings=settings, seed=args.seed, out_dir=args.out, batch_size=args.batch_size,
                                device=device, context=ctx, write_png=write_png, write_npz=write_npz,
                                compressed_cache=not args.full_cache, autocast_dtype=backend.autocast_dtype,
                                overwrite=args.overwrite, run_info=run_info,
                                progress=_Progress(args.out) if ctx.is_main else None)
        if ctx.is_main:
            _print(result)
    finally:
        shutdown()
    return 0


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
