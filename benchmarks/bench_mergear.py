"""MergeAR decoding with the compressed KV cache vs the full cache: KV bytes and tokens/s.

What is measured: step-by-step cached decoding of L tokens (prefill, then one ``decode_step`` per
token: duplicate check, eviction, slot choice, all transformer blocks, and the sub-token heads of every
position) through ``mergevq.ar.sampling.teacher_forced_decode``, for a batch of *merged* raster
sequences: each row has exactly K distinct indices (K = ``--keep-ratio`` · L, default 144/256, the
GR tokenizer's nominal K) spread over the grid at random positions, which is what the tokenizer's
merging produces. (A randomly initialised model's own samples have no repeats, so the benchmark feeds
sequences with the merge structure instead of sampling them; the decode work per step is the same as in
``generate`` minus the sampling.) Both caches run on the same input and give the same logits
(tests/test_ar_cache.py).

* ``KV MiB``: K/V storage allocated by the static cache (all layers, the whole batch);
  ``capacity``: slots per row (full: P + L - 1; compressed: P + K + w);
* ``peak``: most entries a row held at once (mean over rows; compressed <= P + K + w);
* ``tok/s``: B · L / median wall time of the whole decode (``--reps``, after one warm-up; the two
  kinds alternate run by run so that load changes on a shared machine hit both alike).

The ratio columns are compressed / full, measured in this run. Noisy on a shared CPU.

    python benchmarks/bench_mergear.py                                  # tiny and B, batch 1, 16, 64, CPU
    python benchmarks/bench_mergear.py --quick                          # B on an 8x8 grid (L = 64)
    python benchmarks/bench_mergear.py --presets L --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics

import torch
from _timing import median_seconds

from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import teacher_forced_decode


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
    parser.add_argument("--grid", type=int, default=None, help="side of the raster grid (default: the preset's)")
    parser.add_argument("--quick", action="store_true", help="non-tiny presets on an 8x8 grid (L = 64)")
    parser.add_argument("--keep-ratio", type=float, default=144 / 256, help="K / L of the fed sequences")
    parser.add_argument("--window", type=int, default=None, help="recent window w (default: one grid row)")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    print(f"{device.type} {args.dtype}, {torch.get_num_threads()} threads, median of {args.reps} after a warm-up")
    print(f"{'preset':6} {'L':>4} {'K':>4} {'w':>3} {'batch':>5} | {'capacity':>13} {'KV MiB':>17} "
          f"{'peak':>13} {'tok/s':>17} | {'KV ratio':>8} {'speed':>6}")
    print(f"{'':26} | {'full':>6} {'comp':>6} {'full':>8} {'comp':>8} {'full':>6} {'comp':>6} "
          f"{'full':>8} {'comp':>8} |")
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
            runs, stats, times = {}, {}, {"full": [], "comp": []}
            for kind, compressed in (("full", False), ("comp", True)):
                def run(model=model, indices=indices, labels=labels, num_keep=num_keep, compressed=compressed):
                    return teacher_forced_decode(model, indices=indices, labels=labels, num_keep=num_keep,
                                                 compressed_cache=compressed)

                runs[kind] = run
                out = run()  # warm-up; also the statistics
                cache = model.new_cache(batch=batch, compressed=compressed, max_unique=keep)
                mib = cache.nbytes() / 2**20 * out.cache_capacity / cache.capacity  # after any growth
                stats[kind] = (out.cache_capacity, mib, out.peak_cache_entries.float().mean().item())
                del cache
            for _ in range(args.reps):  # alternate the kinds so that load drift hits both alike
                for kind, run in runs.items():
                    times[kind].append(median_seconds(run, reps=1, device=device))
            row = {kind: (*stats[kind], batch * length / statistics.median(times[kind])) for kind in runs}
            (cf, mf, pf, sf), (cc, mc, pc, sc) = row["full"], row["comp"]
            print(f"{name:6} {length:>4} {keep:>4} {cfg.recent_window:>3} {batch:>5} | {cf:>6} {cc:>6} "
                  f"{mf:>8.2f} {mc:>8.2f} {pf:>6.1f} {pc:>6.1f} {sf:>8.1f} {sc:>8.1f} | {mc / mf:>8.3f} "
                  f"{sc / sf:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
