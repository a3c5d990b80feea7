"""Worker: one of the authors' GR-d64 training steps, fp32 CPU, random init (run with their venv,
their checkout on PYTHONPATH; issue #14's comparison step).

``MergeVQModel`` from their GR-d64 training config (``_authors_model``: downloads off, K fixed by
``merge_num``), train mode: ``forward(x)`` (CNN stem, merging ViT keeping K = L - merge_num tokens,
LFQ with their entropy loss, source-matrix unmerge, decoder), the loss L1 + 0.1·entropy +
0.25·commitment, backward, a torch Adam step over all their parameters (their optimizer's betas
0.5, 0.9, lr 1e-4) and ``zero_grad``. Input: seeded uniform images in [-1, 1]. Prints one JSON line
with per-rep ``seconds`` and ``cpu_seconds`` (process CPU time, all threads).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _authors_model import GR_D64_CONFIG, build_authors_tokenizer
from _measure import emit, time_reps, worker_parser


def main() -> None:
    parser = worker_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--authors-root", type=Path, required=True, help="their checkout")
    parser.add_argument("--config", type=Path, default=GR_D64_CONFIG, help="relative to the checkout")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--merge-num", type=int, default=112, help="L - K")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_authors_tokenizer(args.authors_root, config=args.config, merge_num=args.merge_num).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.5, 0.9))
    size = model.encoder.resolution
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, size, size, generator=gen) * 2 - 1  # (B, 3, H, W) in [-1, 1]

    cpu_s: list[float] = []

    def step() -> None:
        c0 = time.process_time()
        rec, entropy_loss, breakdown = model(x)  # (B, 3, H, W), scalar, LossBreakdown
        loss = (rec - x).abs().mean() + 0.1 * entropy_loss + 0.25 * breakdown.commitment
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu_s.append(time.process_time() - c0)

    seconds, peak_mb, method = time_reps(step, reps=args.reps, warmup=args.warmup)
    timed = slice(args.warmup, args.warmup + args.reps)  # not the memory step
    emit({"side": "authors", "seconds": seconds, "cpu_seconds": cpu_s[timed], "peak_rss_mb": peak_mb, "memory_method": method,
          "batch": args.batch, "merge_num": args.merge_num,
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "matmul_precision": torch.get_float32_matmul_precision()})


if __name__ == "__main__":
    main()
