"""MergeAR decoding with the compressed KV cache vs the full cache: KV bytes and tokens/s.

Two modes.

``--mode forced`` (default): step-by-step cached decoding of L tokens (prefill, then one ``decode_step``
per token: duplicate check, eviction, slot choice, all transformer blocks, and the sub-token heads of
every position) through ``mergevq.ar.sampling.teacher_forced_decode``, for a batch of *merged* raster
sequences: each row has exactly K distinct indices (K = ``--keep-ratio`` · L, default 144/256, the GR
tokenizer's nominal K) spread over the grid at random positions, which is what the tokenizer's merging
produces. (A randomly initialised model's own free samples have no repeats, so this mode feeds
sequences with the merge structure instead of sampling them; the decode work per step is the same as
in ``generate`` minus the sampling.) Kinds: ``full`` and ``comp`` (compressed) caches on the same input,
which give the same logits (tests/test_ar_cache.py).

``--mode sample``: ``generate`` itself (CFG off, temperature 1) with K = ``--keep-ratio`` · L. Kinds:
``full``, ``comp`` (compressed, the paper's free sampling: a random model makes ~L distinct tokens, so
this cache grows back towards the full one) and ``exact`` (compressed with exact-K sampling: at most K
distinct tokens, fixed capacity P + K + w).

* ``capacity``: slots per row (full: P + L - 1; compressed: P + K + w, more after growth);
* ``KV MiB``: K/V storage allocated by the static cache (all layers, the whole batch, after growth);
* ``peak``: most entries a row held at once (mean over rows);
* ``tok/s``: B · L / median wall time of the whole decode (``--reps``, after one warm-up; the kinds
  alternate run by run so that load changes on a shared machine hit all alike).

The ratio columns are each kind / full, measured in this run (at L = 256, K = 144, w = 16 the
compressed KV ratio is exactly 162 / 257 = 0.630). Noisy on a shared CPU: repeat and take medians.

    python benchmarks/bench_mergear.py                                  # tiny and B, batch 1, 16, 64, CPU
    python benchmarks/bench_mergear.py --quick                          # B on an 8x8 grid (L = 64)
    python benchmarks/bench_mergear.py --mode sample --quick --batches 1,16
    python benchmarks/bench_mergear.py --presets L --device cuda --dtype bfloat16 --compile
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _timing import median_seconds

from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import SamplingSettings, generate, teacher_forced_decode


def merged_sequences(batch: int, length: int, keep: int, *, seed: int) -> torch.Tensor:
    """(batch, length) index grids with exactly ``keep`` distinct 18-bit indices per row."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        codes = torch.randperm(2**18, generator=g)[:keep]  # the K kept tokens' indices
        assign = torch.cat([torch.arange(keep), torch.randint(0, keep, (length - keep,), generator=g)])
        rows.append(codes[assign[torch.randperm(length, generator=g)]])  # every kept token somewhere
    return torch.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,B", help="comma-separated MergeAR presets")
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--mode", choices=("forced", "sample"), default="forced")
    parser.add_argument("--grid", type=int, default=None, help="side of the raster grid (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="non-tiny presets on an 8x8 grid (L = 64)")
    parser.add_argument("--keep-ratio", type=float, default=144 / 256, help="K / L")
    parser.add_argument("--window", type=int, default=None, help="recent window w (default: one grid row)")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="the compiled decode step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    kinds = ("full", "comp") if args.mode == "forced" else ("full", "comp", "exact")

    print(f"{args.mode}: {device.type} {args.dtype}, {torch.get_num_threads()} threads, "
          f"{'compiled' if args.compile else 'eager'}, median of {args.reps} after a warm-up")
    print(f"{'preset':6} {'L':>4} {'K':>4} {'w':>3} {'batch':>5} | "
          + " | ".join(f"{kind:>5} {'cap':>4} {'KV MiB':>8} {'peak':>6} {'tok/s':>8}" for kind in kinds)
          + " | " + " ".join(f"{kind + ' KV':>8} {kind + ' speed':>10}" for kind in kinds[1:]))
    for name in args.presets.split(","):
        changes: dict[str, object] = {}
        side = args.grid or (8 if args.quick and name != "tiny" else None)
        if side:
            changes["grid"] = (side, side)
        if args.window:
            changes["window"] = args.window
        torch.manual_seed(0)
        model = MergeAR(config=build_config(preset=name, changes=changes or None)).to(device=device, dtype=dtype)
        model.eval()
        cfg = model.config
        length = cfg.num_tokens
        keep = max(1, round(args.keep_ratio * length))
        for batch in (int(b) for b in args.batches.split(",")):
            indices = merged_sequences(batch, length, keep, seed=batch).to(device)
            labels = torch.arange(batch, device=device) % cfg.num_classes
            num_keep = torch.full((batch,), keep, device=device)
            runs, stats, times = {}, {}, {kind: [] for kind in kinds}
            for kind in kinds:
                compressed = kind != "full"
                if args.mode == "forced":
                    def run(indices=indices, labels=labels, num_keep=num_keep, compressed=compressed):
                        return teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep,
                                                     compressed_cache=compressed, compile=args.compile)
                else:
                    settings = SamplingSettings(temperature=1.0, exact_k=kind == "exact")

                    def run(labels=labels, num_keep=num_keep, compressed=compressed, settings=settings):
                        return generate(model, labels=labels, num_keep=num_keep, seeds=torch.arange(batch),
                                        settings=settings, compressed_cache=compressed, compile=args.compile)

                runs[kind] = run
                out = run()  # warm-up; also the statistics
                cache = model.new_cache(batch=batch, compressed=compressed, max_unique=keep)
                mib = cache.nbytes() / 2**20 * out.cache_capacity / cache.capacity  # after any growth
                stats[kind] = (out.cache_capacity, mib, out.peak_cache_entries.float().mean().item())
                del cache
            for _ in range(args.reps):  # alternate the kinds so that load drift hits all alike
                for kind, run in runs.items():
                    times[kind].append(median_seconds(run, reps=1, device=device))
            row = {kind: (*stats[kind], batch * length / statistics.median(times[kind])) for kind in runs}
            _, full_mib, _, full_speed = row["full"]
            cells = " | ".join(f"{kind:>5} {c:>4} {m:>8.2f} {p:>6.1f} {s:>8.1f}" for kind, (c, m, p, s) in row.items())
            ratios = " ".join(f"{row[kind][1] / full_mib:>8.3f} {row[kind][3] / full_speed:>9.2f}x"
                              for kind in kinds[1:])
            print(f"{name:6} {length:>4} {keep:>4} {cfg.recent_window:>3} {batch:>5} | {cells} | {ratios}", flush=True)


if __name__ == "__main__":
    main()
