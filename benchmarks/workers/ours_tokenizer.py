"""Worker: our GR-d64 tokenizer (``mergevq.tokenizer.model.preset("GR-d64")``), encode then decode,
fp32 CPU, random init.

Eval mode, inference mode; ``encode(x, K)`` then ``decode(indices, assign)`` of the same batch, K
the preset's nominal 144 unless ``--num-keep`` says otherwise. Input: seeded uniform images in
[-1, 1]. Prints one JSON line with per-rep ``encode_seconds``, ``decode_seconds``, ``seconds`` (their
sum) and ``cpu_seconds`` (process CPU time of the rep, all threads).
"""

from __future__ import annotations

import argparse
import time

import torch
from _measure import emit, time_reps, worker_parser

from mergevq.tokenizer.model import MergeVQ, preset


def main() -> None:
    parser = worker_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="GR-d64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-keep", type=int, default=None, help="K (default: the preset's)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="MergeVQ.set_channels_last: NHWC CNN stem and decoder CNN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(args.seed)
    model = MergeVQ(config=preset(args.preset)).eval()
    model.set_channels_last(args.channels_last)
    cfg = model.config
    k = args.num_keep or cfg.num_keep
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1  # (B, 3, H, W)
    encode_s: list[float] = []
    decode_s: list[float] = []
    cpu_s: list[float] = []  # process CPU time (all threads) of each encode + decode
    shapes: dict[str, list[int]] = {}

    def step() -> None:
        c0 = time.process_time()
        t0 = time.perf_counter()
        enc = model.encode(x, k)  # indices (B, K), assign (B, L)
        t1 = time.perf_counter()
        rec = model.decode(enc.indices, enc.assign)  # (B, 3, H, W)
        t2 = time.perf_counter()
        cpu_s.append(time.process_time() - c0)
        encode_s.append(t1 - t0)
        decode_s.append(t2 - t1)
        shapes.update(indices=list(enc.indices.shape), reconstruction=list(rec.shape))

    with torch.inference_mode():
        seconds, peak_mb, method = time_reps(step, reps=args.reps, warmup=args.warmup)
    timed = slice(args.warmup, args.warmup + args.reps)  # not the memory step
    emit({"side": "ours", "seconds": seconds, "encode_seconds": encode_s[timed],
          "decode_seconds": decode_s[timed],
          "cpu_seconds": cpu_s[timed], "peak_rss_mb": peak_mb, "memory_method": method,
          "batch": args.batch, "channels_last": args.channels_last, "num_keep": shapes["indices"][1], **shapes,
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "matmul_precision": torch.get_float32_matmul_precision()})


if __name__ == "__main__":
    main()
