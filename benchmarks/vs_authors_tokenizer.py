"""GR-d64 tokenizer encode + decode: the authors' ``MergeVQModel`` vs ours, side by side.

Batch 2 at 256 x 256, K = 144 kept tokens of L = 256 (their ``ddconfig.merge_num`` = 112), fp32,
random init, eval + inference mode, the same seeded images on both sides. Theirs: built from
``configs/gpu_s1/imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml`` ``model.init_args`` with downloads
switched off (``workers/_authors_model.py``); ours: ``mergevq.tokenizer.model.preset("GR-d64")``.
Each side runs in fresh processes that alternate (``_authors.alternate``); a side's figure is the
median over rounds of its per-round median. Images/s for encode, decode and both (wall clock), and
images per CPU-second of encode + decode, which other load on a shared machine disturbs less. Peak
memory: RSS growth of one encode + decode (``workers/_measure.py``).

    python benchmarks/vs_authors_tokenizer.py --authors-code ../MergeVQ --authors-python ../venv/bin/python
    python benchmarks/vs_authors_tokenizer.py      # no authors' code: our side only

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
    write_json,
)

NUM_TOKENS = 256  # L: GR-d64 at 256 px has a 16 x 16 token grid on both sides


def _summary(rounds: list[dict], batch: int) -> dict:
    enc = median([median(r["encode_seconds"]) for r in rounds])
    dec = median([median(r["decode_seconds"]) for r in rounds])
    both = median([median(r["seconds"]) for r in rounds])
    cpu = median([median(r["cpu_seconds"]) for r in rounds])
    return {
        "encode_img_s": batch / enc,
        "decode_img_s": batch / dec,
        "both_img_s": batch / both,
        "both_img_per_cpu_s": batch / cpu,
        "peak_rss_mb": median([r["peak_rss_mb"] for r in rounds]),
        "num_keep": rounds[-1]["num_keep"],
        "memory_method": rounds[-1]["memory_method"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_comparison_arguments(parser, rounds=3, reps=2, unit="encode + decode")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-keep", type=int, default=144, help="K (theirs: merge_num = 256 - K)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="our side: MergeVQ.set_channels_last (NHWC CNN stem and decoder CNN)")
    args = parser.parse_args(argv)
    if not 0 < args.num_keep <= NUM_TOKENS:
        parser.error(f"--num-keep must be in [1, {NUM_TOKENS}], got {args.num_keep}")

    authors = find_authors_code(args)
    common = ["--batch", str(args.batch), "--threads", str(args.threads), "--reps", str(args.reps),
              "--warmup", str(args.warmup)]

    def ours() -> dict:
        return run_worker(sys.executable, WORKERS_DIR / "ours_tokenizer.py",
                          [*common, "--num-keep", str(args.num_keep),
                           "--channels-last" if args.channels_last else "--no-channels-last"],
                          pythonpath=[REPO_ROOT])

    sides = {"ours": ours}
    if authors is not None:

        def theirs() -> dict:
            return run_worker(authors.python, WORKERS_DIR / "authors_tokenizer.py",
                              [*common, "--merge-num", str(NUM_TOKENS - args.num_keep),
                               "--authors-root", str(authors.root)],
                              pythonpath=[authors.root])

        sides = {"authors": theirs, "ours": ours}

    print(f"GR-d64 encode + decode, batch {args.batch}, 256 px, K = {args.num_keep}, fp32, random init, "
          f"{args.threads} threads, {platform.machine()}; ours {'channels_last' if args.channels_last else 'NCHW'}; "
          f"{args.rounds} alternating rounds, medians")
    results = alternate(sides, rounds=args.rounds)
    summary = {name: _summary(rounds, args.batch) for name, rounds in results.items()}
    for name, s in summary.items():
        if s["num_keep"] != args.num_keep:
            raise SystemExit(f"vs_authors_tokenizer: the {name} side kept {s['num_keep']} tokens, expected "
                             f"--num-keep {args.num_keep}")

    rows = [[name, f"{s['encode_img_s']:.3f}", f"{s['decode_img_s']:.3f}", f"{s['both_img_s']:.3f}",
             f"{s['peak_rss_mb']:.0f}"] for name, s in summary.items()]
    ratios = {}
    if "authors" in summary:
        ours_s, theirs_s = summary["ours"], summary["authors"]
        ratios = {key: ours_s[key] / theirs_s[key] for key in ("encode_img_s", "decode_img_s", "both_img_s")}
        memory = ours_s["peak_rss_mb"] / theirs_s["peak_rss_mb"]
        rows.append(["ours / authors", *(f"{ratios[k]:.2f}x" for k in ratios), f"{memory:.2f}x"])
    print_table(["side", "encode img/s", "decode img/s", "enc+dec img/s", "peak MB"], rows)
    cpu = ", ".join(f"{name} {s['both_img_per_cpu_s']:.3f}" for name, s in summary.items())
    if ratios:
        ratios["both_img_per_cpu_s"] = summary["ours"]["both_img_per_cpu_s"] / summary["authors"]["both_img_per_cpu_s"]
        cpu += f"; ours / authors {ratios['both_img_per_cpu_s']:.2f}x"
    print(f"enc+dec images per CPU-second (all threads; less sensitive to other load on the machine): {cpu}")
    print(f"peak memory: {summary[next(iter(summary))]['memory_method']}")
    write_json(args.json, {"benchmark": "vs_authors_tokenizer", "settings": {k: str(v) for k, v in vars(args).items()},
                           "rounds": results, "summary": summary, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
