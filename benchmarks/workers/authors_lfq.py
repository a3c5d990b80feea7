"""Worker: the authors' LFQ entropy loss, forward + backward, fp32 CPU (run with their venv, their
checkout on PYTHONPATH).

Their ``taming/modules/vqvae/lookup_free_quantize.py`` ``LFQ(dim=18, codebook_size=2**18)`` in
training mode: a dense softmax over all 2^18 codes per token, then ``entropy_aux_loss.backward()``.
Same seeded input as ``ours_lfq.py``, transposed to their (B, d, N) layout. Prints one JSON line.
"""

from __future__ import annotations

import torch
from _measure import emit, time_reps, worker_parser
from taming.modules.vqvae.lookup_free_quantize import LFQ

DIM = 18


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
    z0 = z0.transpose(1, 2).contiguous()  # (B, d, N): their channels-first input
    lfq = LFQ(dim=DIM, codebook_size=2**DIM).train()  # entropy loss only in training mode
    values: dict[str, float] = {}

    def step() -> None:
        z = z0.clone().requires_grad_(True)
        (_, entropy_aux_loss, _), breakdown = lfq(z, return_loss_breakdown=True)
        entropy_aux_loss.backward()
        values["per_sample_entropy"] = float(breakdown.per_sample_entropy.detach())
        values["codebook_entropy"] = float(breakdown.codebook_entropy.detach())

    seconds, peak_mb, method = time_reps(step, reps=args.reps, warmup=args.warmup)
    emit({"side": "authors", "seconds": seconds, "peak_rss_mb": peak_mb, "memory_method": method,
          "threads": torch.get_num_threads(), "torch": torch.__version__, **values})


if __name__ == "__main__":
    main()
