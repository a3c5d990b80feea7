"""``mergevq demo``: the end-to-end CPU demo on the embedded real-image data.

Data: builds the demo dataset through the same config path training uses (the ``data`` section
of ``configs/demo/tokenizer.yaml``, from ``configs/data/demo.yaml`` -> ``ImageDataModule``), runs one
epoch of each split through the DataLoaders, and writes a picture of the crops per class
(``demo_data.png``) and a JSON of what it measured (``demo_data.json``).

Stage 1: trains the tiny tokenizer with that config through ``mergevq.training.run.train`` into
``OUT/tokenizer_run/`` (about 5 minutes on 2 CPU cores), then evaluates the EMA weights on the
held-out crops over a K sweep (L and every training K) with the code of ``mergevq evaluate-tokenizer``:
per-image PSNR and SSIM, LPIPS-VGG and rFID (when ``mergevq prepare-weights`` has prepared the offline
weights; otherwise the demo says so), codebook usage and entropy, images/s. Writes
``reconstructions.png`` (originals, then one row per K labelled with K and its mean PSNR),
``merge_groups.png`` (one labelled row per K: each crop next to its merge groups, one colour per
group), ``metrics.json`` and ``k_sweep.md``.

Stage 2: extracts the codes of the demo training crops (and their flips) with that tokenizer into
``OUT/codes/``, trains a tiny MergeAR (``configs/demo/mergear.yaml``) into ``OUT/mergear_run/``, samples
a grid per class with the compressed KV cache (``samples.png``, one row per class, labelled with it) and samples the
same seeds again with the full cache: ``mergear_metrics.json`` reports the KV entries held versus L and
the tokens/s of both.

Overrides (``KEY=VALUE``) apply to the Stage 1 config, e.g. ``trainer.max_steps=20`` for a quick run;
``--ar-set KEY=VALUE`` (repeatable) applies to the MergeAR config. ``--seed N`` sets ``run.seed`` of
both stages (the training order, flips and initialisation; the demo crops themselves are chosen by
``demo_data.seed``). Every composed config file is printed (``config: /abs/path``) and recorded in
``demo_data.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mergevq.cli.common import FlagKeys, add_common_flags, flag_overrides

# --seed: the run seed of both stages (each stage's config has run.seed)
FLAG_KEYS = FlagKeys(seed="run.seed")


# What the demo writes into --out (a re-run removes exactly these before it starts).
DEMO_ENTRIES = ("demo_data.png", "demo_data.json", "tokenizer_run", "k_sweep.md", "metrics.json", "reconstructions.png",
                "merge_groups.png", "codes", "mergear_run", "samples.png", "mergear_metrics.json")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="run the CPU demo end to end on the embedded demo images",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    parser.add_argument("--config", default="demo/tokenizer.yaml", metavar="NAME|FILE",
                        help="demo config (data + Stage 1 run), a path or a name under configs/ "
                             "(default: demo/tokenizer.yaml)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training (default: torch's, one per core). On a machine "
                             "other jobs keep busy, --threads 1 avoids the slow-down of oversubscribed threads")
    parser.add_argument("--data-only", action="store_true",
                        help="stop after the data stage (no tokenizer training)")
    parser.add_argument("--rfid", action=argparse.BooleanOptionalAction, default=True,
                        help="compute rFID in the K sweep when the Inception weights are prepared (default: on; "
                             "Inception at 299 px runs at a few images/s on a CPU, ~3 minutes here)")
    parser.add_argument("--tokenizer-only", action="store_true",
                        help="stop after Stage 1 (no MergeAR)")
    parser.add_argument("--ar-config", default="demo/mergear.yaml",
                        help="the Stage 2 MergeAR config (default: demo/mergear.yaml)")
    parser.add_argument("--ar-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the MergeAR config, e.g. --ar-set trainer.max_steps=50 (repeatable)")
    parser.add_argument("--samples-per-class", type=int, default=8,
                        help="MergeAR samples per demo class in samples.png (default: 8)")
    parser.add_argument("--cfg-scale", type=float, default=2.0,
                        help="classifier-free guidance scale for the demo samples (default: 2.0)")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="sampling temperature for the demo samples (default: 0.7; 0 = greedy)")
    add_common_flags(parser, keys=FLAG_KEYS)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. demo_data.resolution=64")
    parser.set_defaults(run=run, trailing_items="overrides")


def stage_overrides(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The overrides of the Stage 1 config (KEY=VALUE items) and of the MergeAR config (--ar-set), each
    followed by the common flags' keys (they win)."""
    flags = flag_overrides(args, FLAG_KEYS)
    return [*args.overrides, *flags], [*args.ar_set, *flags]


def _epoch(loader) -> dict:
    """One pass over a loader: counts, skips and speed (the data path training will use)."""
    start = time.perf_counter()
    images = skipped = batches = 0
    for batch in loader:
        batches += 1
        skipped += batch["num_skipped"]
        images += len(batch["image"]) if "image" in batch else 0
    seconds = time.perf_counter() - start
    return {"batches": batches, "images": images, "skipped": skipped, "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 1)}


def _per_class_picture(train, validation, *, per_row_train: int = 8, per_row_val: int = 4):
    """One row per class: the first training crops, then (after a blank cell) held-out crops."""
    import numpy as np

    from mergevq.visual import grid

    blank = np.full_like(train.images[:1], 255)
    cells = []
    for label in range(train.num_classes):
        tr = train.images[train.labels == label][:per_row_train]
        va = validation.images[validation.labels == label][:per_row_val]
        cells += [tr, blank, va]
    return grid(np.concatenate(cells), ncol=per_row_train + 1 + per_row_val, scale=3)


def run(args: argparse.Namespace) -> int:
    from mergevq.cli.common import print_config_files
    from mergevq.config import load_with_origins
    from mergevq.outputs import claim_output_dir
    from mergevq.paths import resolve_config
    from mergevq.visual import save_png

    out = Path(args.out)
    start = time.perf_counter()
    overrides, _ = stage_overrides(args)
    loaded = load_with_origins([resolve_config(args.config)], overrides)
    print_config_files(loaded.files)
    # A re-run replaces its own earlier output (and only that); any other non-empty folder is refused.
    claim_output_dir(out, command="demo", settings={"config": str(args.config), "overrides": overrides},
                     patterns=DEMO_ENTRIES, resumable=False)
    loaded.validate("data")
    datamodule = loaded.instantiate("data")
    build_s = time.perf_counter() - start
    train, validation = datamodule.train_dataset, datamodule.val_dataset
    print(f"demo data: {len(train)} training and {len(validation)} held-out crops of "
          f"{train.num_classes} photos at {train.images.shape[1]} px (built or loaded in {build_s:.1f} s)")

    metrics = {
        "config": str(resolve_config(args.config)),
        "config_files": list(loaded.files),
        "classes": list(train.classes),
        "resolution": int(train.images.shape[1]),
        "build_seconds": round(build_s, 3),
        "train": _epoch(datamodule.train_dataloader()),
        "validation": _epoch(datamodule.val_dataloader()),
    }
    picture = save_png(_per_class_picture(train, validation), out / "demo_data.png")
    report = out / "demo_data.json"
    report.write_text(json.dumps(metrics, indent=2) + "\n")
    for split in ("train", "validation"):
        m = metrics[split]
        print(f"{split}: {m['images']} images in {m['batches']} batches, {m['skipped']} skipped, "
              f"{m['images_per_s']} images/s through the DataLoader")
    print(f"wrote {picture} (one row per class: training crops | held-out crops)")
    print(f"wrote {report}")
    if not args.data_only:
        stage1 = _stage1(args, out, validation)
        if not args.tokenizer_only:
            _stage2(args, out, stage1.tokenizer, loaded, classes=list(train.classes))
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def _stage1(args: argparse.Namespace, out: Path, validation):
    import torch

    from mergevq.demo.tokenizer_stage import (
        PREPARE_HINT,
        load_eval_networks,
        run_tokenizer_stage,
    )
    from mergevq.errors import ConfigError
    from mergevq.paths import resolve_config

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    networks = load_eval_networks(rfid=args.rfid)
    images = torch.from_numpy(validation.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, H, W)
    stage = run_tokenizer_stage(config=resolve_config(args.config), overrides=stage_overrides(args)[0], out=out,
                                validation_images=images, networks=networks)
    evaluation, cfg = stage.evaluation, stage.tokenizer.config
    table = evaluation.markdown_table()
    table_path = out / "k_sweep.md"
    table_path.write_text(
        f"K sweep of the demo tokenizer (EMA weights, {cfg.num_tokens} tokens of {cfg.code_dim} bits, "
        f"nominal K = {cfg.num_keep}) on {evaluation.num_images} held-out {evaluation.resolution[0]} px crops\n\n"
        f"{table}\n")
    print(f"stage 1: K sweep on {evaluation.num_images} held-out crops (PSNR and SSIM per image, then the mean):")
    print(table)
    if not args.rfid:
        print("rFID not computed (--no-rfid)")
    for line in networks.missing:
        print(line)
    if networks.missing:
        print(f"({PREPARE_HINT})")
    for path in stage.pictures:
        print(f"wrote {path}")
    print(f"wrote {table_path}")
    print(f"wrote {stage.metrics_path}")
    print(f"training run (checkpoint, config, logs): {stage.run_dir}")
    return stage


def _stage2(args: argparse.Namespace, out: Path, tokenizer, loaded, *, classes: list[str]) -> None:
    from omegaconf import OmegaConf

    from mergevq.config import instantiate
    from mergevq.demo.generator_stage import run_generator_stage
    from mergevq.errors import ConfigError
    from mergevq.paths import resolve_config

    if args.samples_per_class < 1:
        raise ConfigError(f"--samples-per-class must be >= 1, got {args.samples_per_class}")
    # the training crops as stored, without random flips: the extraction stores each flip itself
    node = OmegaConf.to_container(loaded.select("data.params.train"), resolve=True)
    node["params"]["flip"] = False
    plain = instantiate(OmegaConf.create(node), key="data.params.train", origins=loaded.origins)
    stage = run_generator_stage(tokenizer=tokenizer, train_images=plain, class_names=classes,
                                config=resolve_config(args.ar_config), overrides=stage_overrides(args)[1], out=out,
                                samples_per_class=args.samples_per_class, cfg_scale=args.cfg_scale,
                                temperature=args.temperature)
    c, f = stage.compressed, stage.full
    loss = f"{stage.final_loss:.3f} nats" if stage.final_loss is not None else "-"
    print(f"stage 2: MergeAR trained on {stage.num_sequences} sequences in {stage.train_seconds:.0f} s "
          f"(last training loss {loss})")
    print(f"stage 2: sampled {len(classes)} classes x {args.samples_per_class} at K = {tokenizer.config.num_keep} "
          f"(CFG {args.cfg_scale}, temperature {args.temperature}), "
          f"L = {stage.num_tokens}, window {stage.window}, prefix {stage.prefix}:")
    print(f"  {'cache':>10}  {'KV entries (mean / max)':>24}  {'slots':>5}  {'tokens/s':>9}")
    print(f"  {'compressed':>10}  {c.peak_entries_mean:>15.1f} / {c.peak_entries_max:<6}  {c.capacity:>5}  {c.tokens_per_s:>9.0f}")
    print(f"  {'full':>10}  {f.peak_entries_mean:>15.1f} / {f.peak_entries_max:<6}  {f.capacity:>5}  {f.tokens_per_s:>9.0f}")
    print(f"  compressed cache holds {100 * c.peak_entries_mean / f.peak_entries_mean:.0f}% of the full cache's entries "
          f"(unique tokens per sample {stage.unique_tokens_mean:.1f}, bound prefix + unique + window); on the "
          f"same tokens the two caches' logits differ by at most {stage.max_logit_diff:.1e}; "
          f"{stage.identical_samples} of {len(classes) * args.samples_per_class} samples identical")
    print(f"wrote {stage.samples_path} (one row per class: {', '.join(classes)})")
    print(f"wrote {stage.metrics_path}")
    print(f"MergeAR run (checkpoint, config, logs): {stage.run_dir}")
