"""LFQ entropy loss, forward + backward: the authors' dense LFQ vs ours, side by side.

Shape: the G+R Stage 1 batch, 16 images x 144 kept tokens x 18 bits (2^18 codes), tau = 0.01, fp32,
the same seeded input on both sides. Theirs (``taming/modules/vqvae/lookup_free_quantize.py``) forms
an (N, 2^18) softmax; ours (``mergevq.tokenizer.quantizer.LFQ``) factorises the entropy over
sub-tokens. Each side runs in fresh processes that alternate (``_authors.alternate``); a side's
figure is the median over rounds of its per-round median. Peak memory: RSS growth of one step from a
trimmed heap (``workers/_measure.py``), median over rounds.

The authors' side needs ~12 GB and ~30 s per call on a 2-core CPU: it runs ``--authors-reps``
(default 1) timed calls per round, only once at least ``--min-free-gb`` GiB are free.

    python benchmarks/vs_authors_lfq.py --authors-code ../MergeVQ --authors-python ../venv/bin/python
    python benchmarks/vs_authors_lfq.py            # no authors' code: our side only

Prints one markdown table; ``--json PATH`` also writes every round's raw figures.
"""

from __future__ import annotations

import argparse
import platform
import sys

from _authors import (
    REPO_ROOT,
    WORKERS_DIR,
    add_comparison_arguments,
    alternate,
    find_authors_code,
    median,
    print_table,
    run_worker,
    wait_for_memory,
    write_json,
)

SPEED_TARGET = 400.0  # ours at least this many times faster (issue #14)
MEMORY_TARGET = 300.0  # and at least this many times less peak memory


def _summary(rounds: list[dict]) -> dict:
    return {
        "seconds": median([median(r["seconds"]) for r in rounds]),
        "peak_rss_mb": median([r["peak_rss_mb"] for r in rounds]),
        "per_sample_entropy": rounds[-1]["per_sample_entropy"],
        "codebook_entropy": rounds[-1]["codebook_entropy"],
        "memory_method": rounds[-1]["memory_method"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_comparison_arguments(parser, rounds=2, reps=10, unit="calls (theirs: --authors-reps)", warmup=None)
    parser.add_argument("--authors-reps", type=int, default=1, help="timed calls of theirs per round")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=144)
    parser.add_argument("--z-scale", type=float, default=0.01, help="z = z_scale * N(0, 1)")
    parser.add_argument("--min-free-gb", type=float, default=14.0, help="free memory their side waits for")
    parser.add_argument("--wait-free-s", type=float, default=900.0, help="how long it waits at most")
    args = parser.parse_args(argv)

    authors = find_authors_code(args)
    shape = ["--images", str(args.images), "--tokens", str(args.tokens), "--z-scale", str(args.z_scale),
             "--threads", str(args.threads)]

    def ours() -> dict:
        return run_worker(sys.executable, WORKERS_DIR / "ours_lfq.py",
                          [*shape, "--reps", str(args.reps), "--warmup", "1"], pythonpath=[REPO_ROOT])

    sides = {"ours": ours}
    if authors is not None:

        def theirs() -> dict:
            if not wait_for_memory(args.min_free_gb, timeout=args.wait_free_s):
                raise SystemExit(f"vs_authors_lfq: fewer than {args.min_free_gb:g} GiB free after "
                                 f"{args.wait_free_s:g} s; not starting the authors' dense LFQ")
            return run_worker(authors.python, WORKERS_DIR / "authors_lfq.py",
                              [*shape, "--reps", str(args.authors_reps), "--warmup", "0"],
                              pythonpath=[authors.root])

        sides = {"authors": theirs, "ours": ours}

    print(f"LFQ entropy loss fwd+bwd, {args.images} x {args.tokens} tokens x 18 bits, tau 0.01, fp32, "
          f"{args.threads} threads, {platform.machine()}; {args.rounds} alternating rounds, medians")
    results = alternate(sides, rounds=args.rounds)
    summary = {name: _summary(rounds) for name, rounds in results.items()}

    rows = []
    for name, s in summary.items():
        rows.append([name, f"{s['seconds'] * 1e3:.1f}", f"{s['peak_rss_mb']:.1f}",
                     f"{s['per_sample_entropy']:.5f}", f"{s['codebook_entropy']:.5f}"])
    ratios = {}
    if "authors" in summary:
        ours_s, theirs_s = summary["ours"], summary["authors"]
        ratios = {"speed": theirs_s["seconds"] / ours_s["seconds"],
                  "memory": theirs_s["peak_rss_mb"] / max(ours_s["peak_rss_mb"], 1e-3)}
        rows.append(["authors / ours", f"{ratios['speed']:.0f}x", f"{ratios['memory']:.0f}x", "", ""])
    print_table(["side", "ms per call", "peak MB", "E[H(p_n)]", "H(mean p)"], rows)
    for name, s in summary.items():
        print(f"peak memory, {name}: {s['memory_method']}")
    if ratios:
        print(f"targets: speed >= {SPEED_TARGET:.0f}x {'met' if ratios['speed'] >= SPEED_TARGET else 'NOT met'}, "
              f"memory >= {MEMORY_TARGET:.0f}x {'met' if ratios['memory'] >= MEMORY_TARGET else 'NOT met'}")
        print("H(mean p) differs by definition: theirs is -sum p log(p + 1e-5), ours the exact entropy")
    write_json(args.json, {"benchmark": "vs_authors_lfq", "settings": {k: str(v) for k, v in vars(args).items()},
                           "rounds": results, "summary": summary, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
