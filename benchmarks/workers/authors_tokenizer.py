"""Worker: the authors' GR-d64 tokenizer, encode then decode, fp32 CPU, random init (run with their
venv, their checkout on PYTHONPATH).

``MergeVQModel`` from their GR-d64 training config (``_authors_model``), eval mode, inference mode;
``encode(x)`` (CNN stem, merging ViT keeping K = L - merge_num tokens, LFQ) then ``decode(quant)``
(source-matrix unmerge, decoder). Input: seeded uniform images in [-1, 1]. One rep = one encode +
one decode of the same batch; their decode reads the merge source the preceding encode left.
Prints one JSON line with per-rep ``encode_seconds``, ``decode_seconds``, ``seconds`` (their sum) and
``cpu_seconds`` (process CPU time of the rep, all threads).
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
    model = build_authors_tokenizer(args.authors_root, config=args.config, merge_num=args.merge_num).eval()
    size = model.encoder.resolution
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, size, size, generator=gen) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    encode_s: list[float] = []
    decode_s: list[float] = []
    cpu_s: list[float] = []  # process CPU time (all threads) of each encode + decode
    shapes: dict[str, list[int]] = {}

    def step() -> None:
        c0 = time.process_time()
        t0 = time.perf_counter()
        quant, _, _, _ = model.encode(x)  # (B, 18, k, k): the K kept tokens
        t1 = time.perf_counter()
        rec = model.decode(quant)  # (B, 3, H, W)
        t2 = time.perf_counter()
        cpu_s.append(time.process_time() - c0)
        encode_s.append(t1 - t0)
        decode_s.append(t2 - t1)
        shapes.update(quant=list(quant.shape), reconstruction=list(rec.shape))

    with torch.inference_mode():
        seconds, peak_mb, method = time_reps(step, reps=args.reps, warmup=args.warmup)
    timed = slice(args.warmup, args.warmup + args.reps)  # not the memory step
    emit({"side": "authors", "seconds": seconds, "encode_seconds": encode_s[timed],
          "decode_seconds": decode_s[timed],
          "cpu_seconds": cpu_s[timed], "peak_rss_mb": peak_mb, "memory_method": method,
          "batch": args.batch, "num_keep": shapes["quant"][2] * shapes["quant"][3], **shapes,
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "matmul_precision": torch.get_float32_matmul_precision()})


if __name__ == "__main__":
    main()
