"""GR-d64 training step: the authors' ``MergeVQModel`` vs ours, side by side (issue #14).

One step = forward at batch 2, 256 x 256, K = 144 kept tokens of L = 256 (their ``merge_num`` 112),
the loss L1 + 0.1·entropy + 0.25·commitment, backward, an Adam step; fp32, random init, the same
seeded images on both sides. Theirs: ``MergeVQModel`` from
``configs/gpu_s1/imagenet_mergevq_256_GR_d64_8gpu_200ep.yaml`` ``model.init_args`` with downloads off
(``workers/_authors_model.py``), torch Adam. Ours: the training module's own step
(``TokenizerModule.generator_backward`` + its fused Adam) with its ``compile`` / ``channels_last``
switch (``--compile``, ``--no-channels-last``), so the benchmark measures the code path training runs.
Each side runs in fresh processes that alternate (``_authors.alternate``); a side's figure is the
median over rounds of its per-round median. Images/s (wall clock), images per CPU-second (less
disturbed by other load on a shared machine), peak memory: RSS growth of one step
(``workers/_measure.py``).

    python benchmarks/vs_authors_train_step.py --authors-code ../MergeVQ --authors-python ../venv/bin/python
    python benchmarks/vs_authors_train_step.py      # no authors' code: our side only

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
    step = median([median(r["seconds"]) for r in rounds])
    cpu = median([median(r["cpu_seconds"]) for r in rounds])
    return {
        "step_s": step,
        "img_s": batch / step,
        "img_per_cpu_s": batch / cpu,
        "peak_rss_mb": median([r["peak_rss_mb"] for r in rounds]),
        "memory_method": rounds[-1]["memory_method"],
        "mode": rounds[-1].get("mode", ""),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_comparison_arguments(parser, rounds=3, reps=2, unit="steps")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-keep", type=int, default=144, help="K (theirs: merge_num = 256 - K)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto", help="our side's switch")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="our side's switch")
    args = parser.parse_args(argv)
    if not 0 < args.num_keep <= NUM_TOKENS:
        parser.error(f"--num-keep must be in [1, {NUM_TOKENS}], got {args.num_keep}")

    authors = find_authors_code(args)
    common = ["--batch", str(args.batch), "--threads", str(args.threads), "--reps", str(args.reps),
              "--warmup", str(args.warmup)]
    layout = "--channels-last" if args.channels_last else "--no-channels-last"

    def ours() -> dict:
        return run_worker(sys.executable, WORKERS_DIR / "ours_train_step.py",
                          [*common, "--num-keep", str(args.num_keep), "--compile", args.compile, layout],
                          pythonpath=[REPO_ROOT])

    sides = {"ours": ours}
    if authors is not None:

        def theirs() -> dict:
            return run_worker(authors.python, WORKERS_DIR / "authors_train_step.py",
                              [*common, "--merge-num", str(NUM_TOKENS - args.num_keep),
                               "--authors-root", str(authors.root)],
                              pythonpath=[authors.root])

        sides = {"authors": theirs, "ours": ours}

    print(f"GR-d64 training step (L1 + 0.1 entropy + 0.25 commitment, backward, Adam), batch {args.batch}, "
          f"256 px, K = {args.num_keep}, fp32, random init, {args.threads} threads, {platform.machine()}; "
          f"{args.rounds} alternating rounds, medians")
    results = alternate(sides, rounds=args.rounds)
    summary = {name: _summary(rounds, args.batch) for name, rounds in results.items()}
    print(f"our step: {summary['ours']['mode']}")

    rows = [[name, f"{s['step_s']:.2f}", f"{s['img_s']:.3f}", f"{s['img_per_cpu_s']:.3f}", f"{s['peak_rss_mb']:.0f}"]
            for name, s in summary.items()]
    ratios = {}
    if "authors" in summary:
        ours_s, theirs_s = summary["ours"], summary["authors"]
        ratios = {"img_s": ours_s["img_s"] / theirs_s["img_s"],
                  "img_per_cpu_s": ours_s["img_per_cpu_s"] / theirs_s["img_per_cpu_s"],
                  "peak_rss": ours_s["peak_rss_mb"] / theirs_s["peak_rss_mb"]}
        rows.append(["ours / authors", "", f"{ratios['img_s']:.2f}x", f"{ratios['img_per_cpu_s']:.2f}x",
                     f"{ratios['peak_rss']:.2f}x"])
    print_table(["side", "step s", "img/s", "img per CPU-s", "peak MB"], rows)
    print(f"peak memory: {summary['ours']['memory_method']}")
    write_json(args.json, {"benchmark": "vs_authors_train_step", "settings": {k: str(v) for k, v in vars(args).items()},
                           "rounds": results, "summary": summary, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
