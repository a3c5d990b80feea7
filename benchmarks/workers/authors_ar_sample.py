"""Worker: the authors' Stage-2 GPT and its ``sample`` (``taming/modules/transformer/gpt.py``), fp32 CPU,
random init (run with their venv, their checkout on PYTHONPATH).

``GPT(spatial_n_layer=12, n_head=12, dim=768, factorized_n_layer=2, token_factorization=True,
factorized_bits=[6, 12], class_num=1000, block_size=grid^2)``, eval mode; ``sample`` with one class
token per row, classifier-free guidance ``cfg_scale`` per sub-token (their CFG path: rows
``[labels, null class]``), temperature 1, no top-k / top-p, ``grid^2`` steps. One rep = one ``sample``
of ``--batch`` images. Prints one JSON line with per-rep ``seconds`` and ``tokens_per_s``.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from _measure import emit, worker_parser


def main() -> None:
    parser = worker_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--authors-root", type=Path, required=True, help="their checkout")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--grid", type=int, default=16, help="side of the token grid (steps = grid^2)")
    parser.add_argument("--cfg-scale", type=float, nargs="+", default=[1.9, 2.0])
    args = parser.parse_args()
    sys.path.insert(0, str(args.authors_root))
    from taming.modules.transformer.gpt import GPT, sample

    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(args.seed)
    length = args.grid * args.grid
    model = GPT(vocab_size=2**18, block_size=length, spatial_n_layer=12, n_head=12, dim=768, cond_dim=768,
                factorized_n_layer=2, token_factorization=True, class_num=1000, cls_token_num=1,
                factorized_k=2, factorized_bits=[6, 12]).eval()
    if min(args.cfg_scale) <= 1.0:
        raise SystemExit("authors_ar_sample: their sample() needs cfg_scale > 1 (guidance scale 1.0 crashes there)")
    labels = torch.arange(args.batch) % 1000
    x = torch.cat([labels, torch.full_like(labels, 1000)])[:, None]  # (2B, 1): conditional rows, then null
    subs = len(args.cfg_scale)

    def step() -> None:
        out = sample(x, model, steps=length, temperature=[1.0] * subs, top_k=[0] * subs, top_p=[1.0] * subs,
                     cfg_scale=list(args.cfg_scale))
        assert out[0].shape == (args.batch, length)

    for _ in range(args.warmup):
        step()
    seconds = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    emit({"side": "authors", "seconds": seconds, "tokens_per_s": args.batch * length / statistics.median(seconds),
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "memory_method": "ru_maxrss of the whole process (model, caches, all reps)",
          "batch": args.batch, "tokens": length, "params": sum(p.numel() for p in model.parameters()),
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "matmul_precision": torch.get_float32_matmul_precision()})


if __name__ == "__main__":
    main()
