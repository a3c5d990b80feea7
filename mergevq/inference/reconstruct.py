"""The reconstruction pass behind ``mergevq reconstruct``: original / reconstruction PNG pairs and the
merge groups of every image at each requested K.

Output layout (``out_dir``)::

    original/<name>.png        the model input (resized + centre-cropped), as the tokenizer saw it
    K<k>/<name>.png            its reconstruction keeping k tokens (exact assignment, clamped)
    groups_K<k>/<name>.png     the merge groups at k (one colour per kept token, boundaries dark)
    pairs/<name>.png           the original above its reconstructions (largest K first), labelled

``<name>`` is the data set index (6 digits) plus the source file's stem when the data set gives
paths, so pairs match by file name across folders, and ``original/`` vs ``K<k>/`` can be handed to
any folder-based FID tool (torch-fidelity's ``calculate_metrics(input1=..., input2=...)`` gives the
rFID that ``evaluate-tokenizer`` reports). Ranks write disjoint contiguous shards; every image is
copied to the host once per batch. The command claims ``out_dir`` first (:mod:`mergevq.outputs`,
names :data:`OUTPUT_PATTERNS`): an earlier reconstruction there is replaced, never mixed with this one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from mergevq.distributed import DistContext, all_reduce_sum, shard
from mergevq.errors import ConfigError
from mergevq.inference.tokenizer_eval import (
    SINGLE_PROCESS,
    check_num_keep_list,
)
from mergevq.tokenizer.model import MergeVQ
from mergevq.inference.progress import loader_items, progress_bar, track
from mergevq.visual import merge_groups_picture, reconstruction_grid, save_png, to_uint8
from taming.data.base import collate_skip_none

__all__ = ["OUTPUT_PATTERNS", "ORIGINALS", "PAIRS", "ReconstructionResult", "groups_folder", "image_name",
           "reconstruct_images", "reconstruction_folder"]

ORIGINALS = "original"
PAIRS = "pairs"
OUTPUT_PATTERNS = (ORIGINALS, PAIRS, "K[0-9]*", "groups_K[0-9]*")  # every top-level name written into out_dir


def reconstruction_folder(num_keep: int) -> str:
    return f"K{num_keep}"


def groups_folder(num_keep: int) -> str:
    return f"groups_K{num_keep}"


def image_name(index: int, path: str | None) -> str:
    """``000042`` or ``000042_<file stem>``: unique (the data set index) and recognisable."""
    return f"{index:06d}" if not path else f"{index:06d}_{Path(path).stem}"


@dataclass(frozen=True)
class ReconstructionResult:
    out_dir: Path
    num_keep: tuple[int, ...]
    num_images: int  # written, all ranks
    num_skipped: int  # unreadable, all ranks
    seconds: float  # wall time on this rank


@torch.no_grad()
def reconstruct_images(
    model: MergeVQ,
    dataset: Dataset,
    *,
    num_keep: Sequence[int],
    out_dir: str | os.PathLike,
    batch_size: int,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    autocast_dtype: torch.dtype | None = None,
    num_workers: int = 0,
    group_scale: int | None = None,
) -> ReconstructionResult:
    """Write the layout of the module docstring for every image of ``dataset`` (items ``{"image",
    "index", ["path"]}``; unreadable ones skipped and counted). ``group_scale``: pixel repetition of
    the merge-group and pair pictures (default: enough to make them about 256 px, so small images
    keep visible group boundaries). Under torch.distributed every rank writes its own shard into
    the same ``out_dir``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    ks = check_num_keep_list(model, num_keep)
    start = time.perf_counter()
    out = Path(out_dir)
    part = shard(len(dataset), rank=context.rank, world_size=context.world_size)
    loader = DataLoader(Subset(dataset, part), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_skip_none)
    size = model.config.image_size
    scale = group_scale if group_scale is not None else max(1, 256 // size)
    if scale < 1:
        raise ConfigError(f"group_scale must be >= 1, got {scale}")
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    written = skipped = 0
    bar = progress_bar(total=len(part), desc="reconstruct", unit="img", is_main=context.is_main)
    for batch in track(loader, bar, count=loader_items):
        skipped += int(batch["num_skipped"])
        if "image" not in batch:
            continue
        x = batch["image"].to(device, non_blocking=True).float()  # (B, 3, H, W)
        if tuple(x.shape[-2:]) != (size, size):
            raise ConfigError(f"the data gives {tuple(x.shape[-2:])} images but the tokenizer takes "
                              f"{(size, size)}; set the data resolution to {size}")
        paths = batch.get("path") or [None] * x.shape[0]
        names = [image_name(int(i), p) for i, p in zip(batch["index"], paths, strict=True)]
        originals = x.cpu()  # one host copy per batch
        for name, pixels in zip(names, to_uint8(originals), strict=True):
            save_png(pixels, out / ORIGINALS / f"{name}.png")
        by_k = {}
        for k in ks:
            with autocast:
                enc = model.encode(x, k)
                rec = model.decode_codes(enc.codes, enc.assign)
            by_k[k] = rec.float().clamp(-1, 1).cpu()  # one host copy per batch and K
            recs = to_uint8(by_k[k])
            assign = enc.assign.cpu()
            for j, name in enumerate(names):
                save_png(recs[j], out / reconstruction_folder(k) / f"{name}.png")
                groups = merge_groups_picture(originals[j], assign[j], model.config.grid, scale=scale)
                save_png(groups, out / groups_folder(k) / f"{name}.png")
        for j, name in enumerate(names):
            pair = reconstruction_grid(originals[j:j + 1], {k: rec[j:j + 1] for k, rec in by_k.items()},
                                       scale=scale)
            save_png(pair, out / PAIRS / f"{name}.png")
        written += x.shape[0]
    totals = all_reduce_sum(torch.tensor([written, skipped], dtype=torch.long, device=device)).cpu().tolist()
    return ReconstructionResult(out_dir=out, num_keep=tuple(ks), num_images=int(totals[0]),
                                num_skipped=int(totals[1]), seconds=time.perf_counter() - start)
