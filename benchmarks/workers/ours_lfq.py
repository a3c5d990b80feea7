"""Worker: our LFQ entropy loss, forward + backward (``mergevq.tokenizer.quantizer.LFQ``), fp32 CPU.

Input ``z = z_scale * N(0, 1)`` of shape (images, tokens, 18), seeded, the same values the authors'
worker uses (transposed to their channels-first layout). Prints one JSON line (see ``_measure``).
"""

from __future__ import annotations

import torch
from _measure import emit, time_reps, worker_parser

from mergevq.tokenizer.quantizer import LFQ

DIM = 18
TAU = 0.01


def main() -> None:
    parser = worker_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=144)
    parser.add_argument("--z-scale", type=float, default=0.01)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")

    gen = torch.Generator().manual_seed(args.seed)
    z0 = args.z_scale * torch.randn(args.images, args.tokens, DIM, generator=gen)  # (B, N, d)
    lfq = LFQ(dim=DIM, entropy_temperature=TAU)
    values: dict[str, float] = {}

    def step() -> None:
        z = z0.clone().requires_grad_(True)
        out = lfq(z)
        out.entropy_loss.backward()
        values["per_sample_entropy"] = float(out.per_sample_entropy.detach())
        values["codebook_entropy"] = float(out.codebook_entropy.detach())

    seconds, peak_mb, method = time_reps(step, reps=args.reps, warmup=args.warmup, memory_steps=5)
    emit({"side": "ours", "seconds": seconds, "peak_rss_mb": peak_mb, "memory_method": method,
          "threads": torch.get_num_threads(), "torch": torch.__version__, **values})


if __name__ == "__main__":
    main()
