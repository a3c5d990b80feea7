"""AR sampling at the authors' GPT size: their ``sample`` vs our ``generate``, side by side, with the
weight-read floor of batch 1.

Both sides: 12 layers x 768, 12 heads, 2 intra-token layers, sub-tokens (6, 12) bits, 1000 classes,
256 tokens (16 x 16), classifier-free guidance (1.9, 2.0) per sub-token (two rows per image),
temperature 1, fp32, random init. Theirs: ``taming/modules/transformer/gpt.py`` ``GPT`` + ``sample``
(``workers/authors_ar_sample.py``); ours: ``mergevq.ar.sampling.generate`` with the compressed cache
in the paper's free mode (``workers/ours_ar_sample.py``; ``--cache full``, ``--exact-k``, ``--compile``
for the other paths). Each side runs in fresh processes that alternate (``_authors.alternate``); a
side's tokens/s is batch x 256 / the median over rounds of its per-round median time.

The floor: at batch 1 a decode step is bound by reading the weights once (every block, the intra-token
blocks once per sub-token, the heads). The script measures this machine's memory bandwidth (a copy of
a 512 MiB tensor with the workers' thread count, bytes read + written / time, the best of 5: other load
only slows it down) and prints ``step weight bytes / bandwidth`` next to our batch-1 time per step.

    python benchmarks/vs_authors_ar.py --authors-code ../MergeVQ --authors-python ../venv/bin/python
    python benchmarks/vs_authors_ar.py --batches 1 --rounds 1 --grid 8     # quick, L = 64
    python benchmarks/vs_authors_ar.py                                      # no authors' code: ours only

Prints one markdown table; ``--json PATH`` also writes every round's raw figures.
"""

from __future__ import annotations

import argparse
import platform
import sys

import torch
from _authors import (
    REPO_ROOT,
    WORKERS_DIR,
    add_comparison_arguments,
    alternate,
    find_authors_code,
    median,
    print_table,
    run_worker,
    write_json,
)
from _flops import measured_bandwidth


def _seconds(rounds: list[dict]) -> float:
    return median([median(r["seconds"]) for r in rounds])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_comparison_arguments(parser, rounds=3, reps=1, unit="sample calls")
    parser.add_argument("--batches", default="1,8", help="comma-separated images per sample call")
    parser.add_argument("--grid", type=int, default=16, help="token grid side (256 tokens at 16)")
    parser.add_argument("--cache", choices=("compressed", "full"), default="compressed", help="our KV cache")
    parser.add_argument("--exact-k", action="store_true", help="our exact-K mode (K = --num-keep)")
    parser.add_argument("--num-keep", type=int, default=144)
    parser.add_argument("--compile", action="store_true", help="our compiled decode step")
    args = parser.parse_args(argv)

    authors = find_authors_code(args)
    common = ["--threads", str(args.threads), "--reps", str(args.reps), "--warmup", str(args.warmup),
              "--grid", str(args.grid), "--cfg-scale", "1.9", "2.0"]
    ours_flags = ["--cache", args.cache, "--num-keep", str(args.num_keep),
                  *(["--exact-k"] if args.exact_k else []), *(["--compile"] if args.compile else [])]
    length = args.grid**2
    print(f"AR sampling, 12x768 (+2 intra layers), {length} tokens, CFG (1.9, 2.0), fp32, random init, "
          f"{args.threads} threads, {platform.machine()}; ours: {args.cache} cache"
          f"{', exact-K' if args.exact_k else ''}{', compiled' if args.compile else ''}; "
          f"{args.rounds} alternating rounds, medians")
    rows, summary, raw = [], {}, {}
    for batch in (int(b) for b in args.batches.split(",")):
        def ours(batch=batch) -> dict:
            return run_worker(sys.executable, WORKERS_DIR / "ours_ar_sample.py",
                              [*common, *ours_flags, "--batch", str(batch)], pythonpath=[REPO_ROOT])

        sides = {"ours": ours}
        if authors is not None:
            def theirs(batch=batch) -> dict:
                return run_worker(authors.python, WORKERS_DIR / "authors_ar_sample.py",
                                  [*common, "--batch", str(batch), "--authors-root", str(authors.root)],
                                  pythonpath=[authors.root])

            sides = {"authors": theirs, "ours": ours}
        results = alternate(sides, rounds=args.rounds)
        raw[batch] = results
        tok_s = {name: batch * length / _seconds(r) for name, r in results.items()}
        summary[batch] = {"tokens_per_s": tok_s,
                          "ratio": tok_s["ours"] / tok_s["authors"] if "authors" in tok_s else None,
                          "step_ms_ours": 1e3 * _seconds(results["ours"]) / length}
        theirs_s = f"{tok_s['authors']:.1f}" if "authors" in tok_s else "-"
        ratio = f"{summary[batch]['ratio']:.2f}x" if summary[batch]["ratio"] else "-"
        rows.append([str(batch), theirs_s, f"{tok_s['ours']:.1f}", ratio,
                     f"{summary[batch]['step_ms_ours']:.1f}"])
    print_table(["batch", "authors tok/s", "ours tok/s", "ours / authors", "ours ms/step"], rows)

    step_bytes = raw[next(iter(raw))]["ours"][-1]["step_weight_bytes"]
    torch.set_num_threads(args.threads)
    bandwidth = measured_bandwidth(torch.device("cpu"), nbytes=512 * 2**20)
    floor_ms = 1e3 * step_bytes / bandwidth
    print(f"weight-read floor: {step_bytes / 2**20:.0f} MiB of weights per step / {bandwidth / 1e9:.1f} GB/s "
          f"(copy of 512 MiB) = {floor_ms:.1f} ms per step, {1e3 / floor_ms:.1f} steps/s")
    if 1 in summary:
        ms = summary[1]["step_ms_ours"]
        print(f"ours at batch 1: {ms:.1f} ms per step = {ms / floor_ms:.2f}x the floor")
    write_json(args.json, {"benchmark": "vs_authors_ar", "settings": {k: str(v) for k, v in vars(args).items()},
                           "rounds": {str(b): r for b, r in raw.items()},
                           "summary": {str(b): s for b, s in summary.items()},
                           "floor": {"step_weight_bytes": step_bytes, "bandwidth_bytes_s": bandwidth,
                                     "floor_ms_per_step": floor_ms}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
