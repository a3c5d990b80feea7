"""Worker: one of our GR-d64 training steps, fp32 CPU, random init (issue #14's comparison step).

The step runs through :class:`~mergevq.training.tokenizer_module.TokenizerModule` exactly as training
does (its ``compile`` / ``channels_last`` switch, its fused Adam from ``configure_optimizers``):
``generator_backward`` at K = 144 with the loss L1 + 0.1·entropy + 0.25·commitment (every other
weight 0, so the learned recovery and the [CLS] head, whose losses are off, are not computed), then
the generator's Adam step and ``zero_grad``. Input: seeded uniform images in [-1, 1]. Prints one
JSON line with per-rep ``seconds`` and ``cpu_seconds`` (process CPU time, all threads).
"""

from __future__ import annotations

import time
import argparse

import torch
from _measure import emit, time_reps, worker_parser

from mergevq.tokenizer.model import preset
from mergevq.training.tokenizer_module import TokenizerModule
from taming.modules.discriminator.patchgan import PatchGANDiscriminator

# L1 + 0.1 entropy + 0.25 commitment, nothing else
STEP_WEIGHTS = {"l1": 1.0, "perceptual": 0.0, "gan": 0.0, "entropy": 0.1, "commit": 0.25, "align": 0.0,
                "recovery": 0.0, "lecam": 0.0}


def main() -> None:
    parser = worker_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--preset", default="GR-d64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-keep", type=int, default=None, help="K (default: the preset's)")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_float32_matmul_precision("highest")
    torch.manual_seed(args.seed)
    module = TokenizerModule(
        tokenizer=preset(args.preset), discriminator=PatchGANDiscriminator(), teacher=None,
        perceptual={"net": "alex", "weights_path": None, "random_init": True}, loss_weights=STEP_WEIGHTS,
        compile=args.compile, channels_last=args.channels_last,
    ).train()
    (opt_g, _), _ = module.configure_optimizers()
    cfg = module.tokenizer.config
    k = args.num_keep or cfg.num_keep
    gen = torch.Generator().manual_seed(args.seed)
    batch = {"image": torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1}
    speed = module.prepare_step(torch.device("cpu"))

    cpu_s: list[float] = []

    def step() -> None:
        c0 = time.process_time()
        module.generator_backward(batch, k)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        cpu_s.append(time.process_time() - c0)

    seconds, peak_mb, method = time_reps(step, reps=args.reps, warmup=args.warmup)
    timed = slice(args.warmup, args.warmup + args.reps)  # not the memory step
    emit({"side": "ours", "seconds": seconds, "cpu_seconds": cpu_s[timed], "peak_rss_mb": peak_mb, "memory_method": method,
          "batch": args.batch, "num_keep": k, "mode": module.step_speed.describe(), "requested": speed.describe(),
          "threads": torch.get_num_threads(), "torch": torch.__version__,
          "matmul_precision": torch.get_float32_matmul_precision()})


if __name__ == "__main__":
    main()
