"""Worker: our MergeAR sampler (``mergevq.ar.sampling.generate``) at the authors' GPT size, fp32 CPU,
random init.

12 layers x 768, 12 heads, 2 intra-token layers, sub-tokens (6, 12) bits, 1000 classes, a 16 x 16 grid
(256 tokens); classifier-free guidance (1.9, 2.0) per sub-token doubles the rows as on their side;
temperature 1, no top-k / top-p. One rep = one ``generate`` of ``--batch`` images. Prints one JSON line
with per-rep ``seconds``, ``tokens_per_s`` (batch x L / median seconds), the bytes of weights one
decode step reads and the process's peak RSS.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch
from _measure import emit, worker_parser

from mergevq.ar.model import MergeAR, build_config
from mergevq.ar.sampling import SamplingSettings, generate


def step_weight_bytes(model: MergeAR) -> int:
    """Bytes of weights one decode step reads: every block, the intra-token blocks once per sub-token,
    the norms and heads (embedding tables are gathered, a few rows only)."""
    def size(module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    subs = len(model.config.sub_token_bits)
    return size(model.blocks) + size(model.norm) + subs * (size(model.intra_blocks) + size(model.intra_norm)) \
        + size(model.heads)


def main() -> None:
    parser = worker_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--grid", type=int, default=16, help="side of the token grid (L = grid^2)")
    parser.add_argument("--cfg-scale", type=float, nargs="+", default=[1.9, 2.0])
    parser.add_argument("--num-keep", type=int, default=144, help="K given to MergeAR")
    parser.add_argument("--cache", choices=("compressed", "full"), default="compressed")
    parser.add_argument("--exact-k", action="store_true")
    parser.add_argument("--compile", action="store_true", help="the compiled decode step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(args.seed)
    config = build_config(preset="B", changes={"grid": (args.grid, args.grid), "num_classes": 1000})
    model = MergeAR(config=config).eval()
    settings = SamplingSettings(cfg_scale=tuple(args.cfg_scale), temperature=1.0, exact_k=args.exact_k)
    labels = torch.arange(args.batch) % config.num_classes
    seeds = torch.arange(args.batch) + args.seed
    stats: dict[str, float] = {}

    def step() -> None:
        out = generate(model, labels=labels, num_keep=args.num_keep, seeds=seeds, settings=settings,
                       compressed_cache=args.cache == "compressed", compile=args.compile)
        stats.update(unique_tokens=float(out.unique_tokens.float().mean()), cache_capacity=out.cache_capacity)

    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    length = config.num_tokens
    emit({"side": "ours", "seconds": seconds, "tokens_per_s": args.batch * length / statistics.median(seconds),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "memory_method": "ru_maxrss of the whole process (model, caches, all reps)",
          "batch": args.batch, "tokens": length, "params": sum(p.numel() for p in model.parameters()),
          "step_weight_bytes": step_weight_bytes(model), "cache": args.cache, "exact_k": args.exact_k,
          "compile": args.compile, **stats, "threads": torch.get_num_threads(), "torch": torch.__version__})


if __name__ == "__main__":
    main()
