"""Throughput and peak memory of one full Stage 1 training step (generator + discriminator).

One step = tokenizer forward at the nominal K (plus the student view through the encoder and a
frozen DINOv2-B teacher on the weak view), L1 + LPIPS-VGG + GAN + entropy + commitment + alignment +
recovery losses, backward, Adam step; then the PatchGAN hinge + LeCAM step. The networks are
randomly initialised (same compute as the real ones; nothing is downloaded).

    python benchmarks/bench_train_step.py                                  # GR-d64, 256 px, batch 2, CPU
    python benchmarks/bench_train_step.py --device cuda --precision bf16 --batch 16
    python benchmarks/bench_train_step.py --compile off --no-channels-last   # the plain eager NCHW step

``--compile`` / ``--channels-last`` are the training module's own switch (``model.params.compile``,
``model.params.channels_last``; mergevq/training/speed.py): the step measured is the one training runs.

CPU peak memory is the process's peak resident set size (ru_maxrss) measured after the run; on CUDA
it is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import resource

import torch
from _timing import median_seconds

from mergevq.tokenizer.alignment import Teacher
from mergevq.tokenizer.model import preset
from mergevq.training.tokenizer_module import TokenizerModule
from taming.modules.discriminator.patchgan import PatchGANDiscriminator


def random_teacher(with_teacher: bool) -> Teacher | None:
    """A randomly initialised DINOv2-B teacher (same compute as the real one, nothing downloaded), or None."""
    if not with_teacher:
        return None
    from transformers import Dinov2Config, Dinov2Model

    return Teacher(model=Dinov2Model(Dinov2Config()), source="transformers")  # ViT-B/14, 768-d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="GR-d64")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--no-teacher", action="store_true", help="leave out the DINOv2 teacher and student view")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="model.params.compile (auto: compile on CUDA only)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="model.params.channels_last")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = TokenizerModule(
        tokenizer=preset(args.preset), discriminator=PatchGANDiscriminator(), teacher=random_teacher(not args.no_teacher),
        perceptual={"net": "vgg", "weights_path": None, "random_init": True},
        compile=args.compile, channels_last=args.channels_last,
    ).to(device).train()
    print(module.prepare_step(device).describe())
    (opt_g, opt_d), _ = module.configure_optimizers()
    size = module.tokenizer.config.image_size
    batch = {"image": torch.rand(args.batch, 3, size, size, device=device) * 2 - 1}
    if not args.no_teacher:
        batch["teacher_image"] = torch.randn(args.batch, 3, 224, 224, device=device)
        batch["student_image"] = torch.rand(args.batch, 3, 224, 224, device=device) * 2 - 1
    num_keep = module.tokenizer.config.num_keep
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            g = module.generator_backward(batch, num_keep)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        with autocast:
            module.discriminator_backward(batch["image"], g.reconstruction)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, reps=args.reps, device=device)
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB allocated"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB resident"
    if not module.step_speed.compile and module.prepare_step(device).compile:
        print(module.step_speed.describe() + " (compile failed, see the warning)")
    counts = module.tokenizer.parameter_counts()
    print(f"{args.preset} ({counts['total'] / 1e6:.1f}M params) at {size}px, batch {args.batch}, K={num_keep}, "
          f"{device.type} {args.precision}, {torch.get_num_threads()} threads, teacher={'off' if args.no_teacher else 'DINOv2-B'}")
    print(f"step time {seconds:.2f} s (median of {args.reps}) -> {args.batch / seconds:.2f} images/s; peak {peak}")


if __name__ == "__main__":
    main()
