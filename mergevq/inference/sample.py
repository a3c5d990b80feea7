"""Class-conditional sampling behind ``mergevq sample`` (DESIGN §5 "Sampling", §6 "Generation").

Sample ``i`` of a run has label ``labels[i]`` and the seed :func:`sample_seeds` derives from the pair
(global seed, i). :func:`mergevq.ar.sampling.generate` makes every random draw of a sample depend
on its own seed only, so the images do not depend on the batch size, on the sample's position in a
batch or on the number of processes. Ranks take contiguous shards of the sample indices
(:func:`mergevq.distributed.shard`) and work through them in batches; the MergeAR raster index
grids are decoded with ``tokenizer.decode_raster`` and quantised to uint8 exactly as a PNG stores
them.

Output layout (``out_dir``)::

    samples.npz                 (write_npz) ADM layout: arr_0 (N, H, W, 3) uint8 in sample order,
                                arr_1 (N,) int64 labels (what guided-diffusion's sampler writes)
    png/<i:06d>_<label:04d>.png (write_png) one file per sample; sorted names = sample order

The npz is assembled without holding the images in memory: each rank fills a memory-mapped
``.npy`` part (``.parts/``), rank 0 streams the parts in rank order into ``samples.npz`` (atomic)
and removes them. Under multi-node runs ``out_dir`` must therefore be on a disk all nodes share.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mergevq.ar.model import MergeAR
from mergevq.ar.sampling import SamplingSettings, generate
from mergevq.distributed import DistContext, barrier, gather_rows, shard
from mergevq.errors import ConfigError
from mergevq.inference.adm_npz import NpzMember, write_npz
from mergevq.inference.tokenizer_eval import SINGLE_PROCESS
from mergevq.tokenizer.model import MergeVQ
from mergevq.visual import save_png, to_uint8

__all__ = ["NPZ_FILE", "PNG_DIR", "SamplingResult", "check_compatible", "class_labels", "png_name", "sample_seeds",
           "sample_to_disk"]

NPZ_FILE = "samples.npz"
PNG_DIR = "png"
_PARTS_DIR = ".parts"


def class_labels(*, classes: Sequence[int], per_class: int) -> torch.Tensor:
    """(N,) int64 labels, class-major: ``per_class`` samples of ``classes[0]``, then of ``classes[1]``, ..."""
    if per_class < 1 or not classes:
        raise ConfigError(f"need at least one class and per_class >= 1, got {len(classes)} classes, "
                          f"per_class={per_class}")
    return torch.tensor(list(classes), dtype=torch.long).repeat_interleave(per_class)


def sample_seeds(seed: int, indices: Sequence[int] | range) -> torch.Tensor:
    """(n,) int64 seeds, one per global sample index: 63 bits of numpy's SeedSequence((seed, i)), so
    nearby indices and nearby global seeds give unrelated streams."""
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    out = np.empty(len(indices), dtype=np.int64)
    for row, index in enumerate(indices):
        words = np.random.SeedSequence((seed, int(index))).generate_state(2, dtype=np.uint32)
        out[row] = (int(words[0]) << 31) ^ int(words[1])  # < 2**63: a valid torch seed
    return torch.from_numpy(out)


def png_name(index: int, label: int) -> str:
    return f"{index:06d}_{label:04d}.png"


def check_compatible(model: MergeAR, tokenizer: MergeVQ, *, num_keep: int, labels: torch.Tensor) -> None:
    """One-line errors when the generator and tokenizer do not fit together or K / labels are out of range."""
    ar, tok = model.config, tokenizer.config
    if tuple(ar.grid) != tuple(tok.grid) or tuple(ar.sub_token_bits) != tuple(tok.sub_token_bits):
        raise ConfigError(f"MergeAR (grid {tuple(ar.grid)}, sub-token bits {tuple(ar.sub_token_bits)}) was not "
                          f"trained on this tokenizer's codes (grid {tuple(tok.grid)}, sub-token bits "
                          f"{tuple(tok.sub_token_bits)})")
    tokenizer.check_num_keep(num_keep)
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < ar.num_classes:
        raise ConfigError(f"class labels must be in [0, {ar.num_classes}) for this MergeAR, got "
                          f"{int(labels.min())}..{int(labels.max())}")


@dataclass(frozen=True)
class SamplingResult:
    """What one sampling run wrote. Cache statistics are means over all samples; ``seconds`` is
    the slowest rank's wall time, ``images_per_second`` = ``num_samples / seconds``."""

    out_dir: str
    npz: str | None  # None unless write_npz
    png_dir: str | None  # None unless write_png
    num_samples: int
    image_shape: tuple[int, int, int]  # (H, W, 3)
    num_keep: int
    num_tokens: int  # L
    compressed_cache: bool
    mean_peak_cache_entries: float
    max_peak_cache_entries: int
    mean_unique_tokens: float
    cache_capacity: int  # slots per row of the largest cache any batch allocated
    seconds: float
    images_per_second: float

    def to_dict(self) -> dict:
        return asdict(self)


def _part_path(out: Path, rank: int) -> Path:
    return out / _PARTS_DIR / f"rank{rank:05d}.npy"


@torch.no_grad()
def sample_to_disk(
    model: MergeAR,
    tokenizer: MergeVQ,
    *,
    labels: torch.Tensor,
    num_keep: int,
    settings: SamplingSettings,
    seed: int,
    out_dir: str | os.PathLike,
    batch_size: int,
    device: torch.device,
    context: DistContext = SINGLE_PROCESS,
    write_png: bool = True,
    write_npz: bool = True,
    compressed_cache: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> SamplingResult:
    """Sample ``labels`` (N,) (one image per entry; sample i is labels[i] with seed (seed, i)) and
    write the layout of the module docstring. Every rank calls it with the same arguments."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not (write_png or write_npz):
        raise ConfigError("nothing to write: ask for PNGs, the npz, or both")
    check_compatible(model, tokenizer, num_keep=num_keep, labels=labels)
    start = time.perf_counter()
    out = Path(out_dir)
    size = tokenizer.config.image_size
    shape = (size, size, 3)
    labels = labels.to(torch.long).cpu()
    part = shard(len(labels), rank=context.rank, world_size=context.world_size)
    images = None
    if write_npz:
        _part_path(out, context.rank).parent.mkdir(parents=True, exist_ok=True)
        images = np.lib.format.open_memmap(_part_path(out, context.rank), mode="w+", dtype=np.uint8,
                                           shape=(len(part), *shape))
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    peaks, uniques = [torch.zeros(0, dtype=torch.long)], [torch.zeros(0, dtype=torch.long)]
    capacity = 0
    for first in range(part.start, part.stop, batch_size):
        rows = range(first, min(first + batch_size, part.stop))
        batch_labels = labels[rows.start:rows.stop]
        with autocast:
            generated = generate(model, labels=batch_labels.to(device), num_keep=num_keep,
                                 seeds=sample_seeds(seed, rows), settings=settings,
                                 compressed_cache=compressed_cache)
            decoded = tokenizer.decode_raster(generated.indices)  # (B, L) -> (B, 3, H, W)
        pixels = to_uint8(decoded.float())  # (B, H, W, 3) uint8 on the host
        if pixels.shape[1:] != shape:
            raise ConfigError(f"the tokenizer decoded {pixels.shape[1:]} images; its config says {shape}")
        if images is not None:
            images[rows.start - part.start:rows.stop - part.start] = pixels
        if write_png:
            for index, label, image in zip(rows, batch_labels.tolist(), pixels, strict=True):
                save_png(image, out / PNG_DIR / png_name(index, label))
        peaks.append(generated.peak_cache_entries.cpu())
        uniques.append(generated.unique_tokens.cpu())
        capacity = max(capacity, generated.cache_capacity)
    if images is not None:
        images.flush()
        del images
    seconds = time.perf_counter() - start

    # statistics of every sample, in sample order, on every rank
    peak_all = gather_rows(torch.cat(peaks).to(device)).cpu()
    unique_all = gather_rows(torch.cat(uniques).to(device)).cpu()
    per_rank = gather_rows(torch.tensor([[seconds, float(capacity)]], dtype=torch.float64, device=device)).cpu()
    npz_path = out / NPZ_FILE if write_npz else None
    if write_npz:
        barrier()  # every part is complete
        if context.is_main:
            _assemble_npz(out, labels=labels, world_size=context.world_size, shape=shape)
        barrier()
    seconds = float(per_rank[:, 0].max())
    return SamplingResult(
        out_dir=str(out), npz=str(npz_path) if npz_path else None, png_dir=str(out / PNG_DIR) if write_png else None,
        num_samples=len(labels), image_shape=shape, num_keep=num_keep, num_tokens=model.num_tokens,
        compressed_cache=compressed_cache,
        mean_peak_cache_entries=float(peak_all.float().mean()) if len(peak_all) else 0.0,
        max_peak_cache_entries=int(peak_all.max()) if len(peak_all) else 0,
        mean_unique_tokens=float(unique_all.float().mean()) if len(unique_all) else 0.0,
        cache_capacity=int(per_rank[:, 1].max()), seconds=seconds,
        images_per_second=len(labels) / seconds if seconds > 0 else 0.0,
    )


def _assemble_npz(out: Path, *, labels: torch.Tensor, world_size: int, shape: tuple[int, int, int]) -> None:
    """Stream every rank's part, in rank order (= sample order), into one ADM-layout npz."""
    parts = [np.load(_part_path(out, rank), mmap_mode="r") for rank in range(world_size)]
    total = sum(len(p) for p in parts)
    if total != len(labels):
        raise ConfigError(f"{out / _PARTS_DIR}: the rank parts hold {total} images, expected {len(labels)}")
    write_npz(out / NPZ_FILE, [
        NpzMember(name="arr_0", shape=(total, *shape), dtype=np.dtype(np.uint8), chunks=_chunks(parts, rows=256)),
        NpzMember(name="arr_1", shape=(total,), dtype=np.dtype(np.int64), chunks=(labels.numpy(),)),
    ])
    parts.clear()  # close the memory maps before the files go
    shutil.rmtree(out / _PARTS_DIR)


def _chunks(parts: list[np.ndarray], *, rows: int) -> Iterator[np.ndarray]:
    for part in parts:
        for begin in range(0, len(part), rows):
            yield part[begin:begin + rows]
