"""Encode / decode throughput of a MergeVQ tokenizer at several kept-token counts K.

Merging must make encode + decode faster, not slower, than keeping all L tokens: the ViT blocks
after each merge see fewer tokens, while the decoder always works on the L recovered positions.

    python benchmarks/bench_tokenizer.py                       # GR-d64, 256 px, batch 2, CPU
    python benchmarks/bench_tokenizer.py --device cuda --batch 64 --precision bf16
    python benchmarks/bench_tokenizer.py --device cuda --batch 16 --ks 256,144,100

Prints one table measured in this run; ratios are relative to K = L.
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from _timing import median_seconds

from mergevq.tokenizer.model import MergeVQ, preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="GR-d64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--ks", default=None,
                        help="comma-separated K values (default: L, the nominal K and the smallest K of the schedule)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: torch.autocast(bfloat16) around encode and decode, fp32 weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="channels_last CNN, as the inference commands load the tokenizer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MergeVQ(config=preset(args.preset)).to(device).eval()
    model.set_channels_last(args.channels_last)
    cfg = model.config
    ks = [int(k) for k in args.ks.split(",")] if args.ks else [cfg.num_tokens, cfg.num_keep, min(cfg.k_candidates)]
    x = torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1

    rows = []
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
                else contextlib.nullcontext())
    with torch.inference_mode(), autocast:
        for k in ks:
            model.encode(x, k)  # warm-up (allocator, kernels)
            enc = model.encode(x, k)
            t_enc = median_seconds(lambda: model.encode(x, k), reps=args.reps, device=device)
            t_dec = median_seconds(lambda: model.decode(enc.indices, enc.assign), reps=args.reps, device=device)
            rows.append((k, t_enc, t_dec))

    base = rows[0][1] + rows[0][2]
    print(f"{args.preset} at {cfg.image_size}px, batch {args.batch}, {device.type} {args.precision}, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    print(f"{'K':>5} {'encode img/s':>13} {'decode img/s':>13} {'enc+dec img/s':>14} {'vs K=' + str(ks[0]):>9}")
    for k, t_enc, t_dec in rows:
        print(f"{k:>5} {args.batch / t_enc:>13.2f} {args.batch / t_dec:>13.2f} "
              f"{args.batch / (t_enc + t_dec):>14.2f} {base / (t_enc + t_dec):>8.2f}x")


if __name__ == "__main__":
    main()
