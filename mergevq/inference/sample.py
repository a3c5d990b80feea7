"""Class-conditional sampling behind ``mergevq sample`` (DESIGN §5 "Sampling", §6 "Generation").

Sample ``i`` of a run has label ``labels[i]`` and the seed :func:`sample_seeds` derives from the pair
(global seed, i). :func:`mergevq.ar.sampling.generate` makes every random draw of a sample depend
on its own seed only, so the images do not depend on the batch size, on the sample's position in a
batch or on the number of processes. Ranks take contiguous shares of the sample indices still to
do (:func:`mergevq.distributed.shard`; all of them in a fresh run) and work through them in
batches; the MergeAR raster index grids are decoded with ``tokenizer.decode_raster`` and quantised
to uint8 exactly as a PNG stores them.

Output layout (``out_dir``)::

    samples.npz                 (write_npz) ADM layout: arr_0 (N, H, W, 3) uint8 in sample order,
                                arr_1 (N,) int64 labels (what guided-diffusion's sampler writes)
    png/<i:06d>_<label:04d>.png (write_png) one file per sample; sorted names = sample order
    sample.json                 statistics over all N samples, with the caller's ``run_info``;
                                written last: it means the run is complete
    .mergevq-output.json        the folder's claim (:mod:`mergevq.outputs`)
    .parts/                     while unfinished: the samples done so far (:mod:`.sample_store`)

Resuming. The folder is claimed with every setting that decides the images (both models' weights
ids, labels, seed, K, sampling settings with exact-K, cache mode, precision, device type, what is written): an
earlier run with the same settings is continued, one with other settings is refused unless
``overwrite``. Each finished sample is recorded in ``.parts`` after its pixels and PNG are stored,
so a killed run keeps it; the next run, with any batch size and number of processes, splits only
the missing indices over its processes (contiguous shares, in batches) and generates them with the
same per-index seeds. Rank 0 then streams the stored pixels in sample order into ``samples.npz``
(atomic), writes ``sample.json`` and removes ``.parts``; a complete folder is left as it is.
Resumed with the batch size and process count it was started with (one process), the npz is
byte-identical to an uninterrupted run's; other batch shapes may move a pixel by one grey level
(the decoder's float rounding), as for any change of batch size. Every process must see
``out_dir``: on several nodes it must be on a disk they share.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mergevq.ar.model import MergeAR
from mergevq.ar.sampling import SamplingSettings, generate
from mergevq.distributed import DistContext, barrier, gather_rows, shard
from mergevq.errors import ConfigError
from mergevq.seeding import derived_seed
from mergevq.fileio import atomic_write, remove_stale_temps
from mergevq.inference.adm_npz import NpzMember, write_npz
from mergevq.inference.fingerprint import weights_id
from mergevq.inference.progress import progress_bar
from mergevq.inference.sample_store import SampleStore
from mergevq.inference.tokenizer_eval import SINGLE_PROCESS
from mergevq.outputs import plan_output_dir
from mergevq.tokenizer.model import MergeVQ
from mergevq.visual import save_png, to_uint8

__all__ = ["COMMAND", "NPZ_FILE", "PARTS_DIR", "PNG_DIR", "RECORD_FILE", "SamplingProgress", "SamplingResult",
           "check_compatible", "class_labels", "png_name", "sample_seeds", "sample_to_disk"]

COMMAND = "sample"
NPZ_FILE = "samples.npz"
PNG_DIR = "png"
RECORD_FILE = "sample.json"
PARTS_DIR = ".parts"
_PATTERNS = (NPZ_FILE, PNG_DIR, RECORD_FILE, PARTS_DIR)  # what a sampling run writes into out_dir
_NPZ_CHUNK = 256  # samples per chunk streamed into the npz


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
    return torch.tensor([derived_seed(seed, index) for index in indices], dtype=torch.int64)


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
    """A sampling folder's content. Cache statistics are over all N samples, those of earlier
    (interrupted) runs included. ``seconds``: this call's wall time on the slowest rank;
    ``images_per_second`` = ``num_generated / seconds``."""

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
    num_generated: int  # by this call, all ranks
    num_resumed: int  # done by earlier runs and kept
    up_to_date: bool  # the folder was complete already: nothing was generated or written

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplingProgress:
    """What a progress callback is told, at the start (``done`` 0) and after each batch."""

    total: int  # N, the run's samples
    already_done: int  # finished by earlier runs, kept
    assigned: int  # this process's share of the missing samples
    done: int  # of ``assigned``, generated so far


def _label_runs(labels: torch.Tensor) -> list[dict[str, int]]:
    """labels as runs ``{"class": c, "count": n}``: short for class-major labels, and a changed
    class list or count is named by the first run that differs."""
    runs: list[dict[str, int]] = []
    for label in labels.tolist():
        if runs and runs[-1]["class"] == label:
            runs[-1]["count"] += 1
        else:
            runs.append({"class": label, "count": 1})
    return runs


def _claimed_settings(settings: SamplingSettings, model: MergeAR) -> dict[str, Any]:
    """The sampling settings as the folder's claim records them: equal settings, equal claims, however
    written (``1.0`` = ``[1.0, 1.0]``). ``cfg_scale`` is a list per sub-token, the others a number when
    every sub-token has the same, else a list: the form claims had before per-sub-token lists."""
    count = len(model.config.sub_token_bits)
    claim: dict[str, Any] = {}
    for name in ("cfg_scale", "cfg_schedule", "temperature", "top_k", "top_p"):
        if name == "cfg_schedule":
            claim[name] = settings.cfg_schedule
            continue
        values = list(settings.values(name, count))
        claim[name] = values if name == "cfg_scale" or len(set(values)) > 1 else values[0]
    if settings.exact_k:  # absent when off: folders written before exact-K existed keep their claim
        claim["exact_k"] = True
    return claim


def _precision_name(autocast_dtype: torch.dtype | None) -> str:
    return "fp32" if autocast_dtype is None else str(autocast_dtype).removeprefix("torch.")


def _read_complete(out: Path, *, num_samples: int, labels: torch.Tensor, write_png: bool,
                   write_npz: bool) -> SamplingResult | None:
    """The result recorded in ``sample.json`` when the folder holds a complete run of
    ``num_samples`` (record, npz and every PNG present), else None."""
    try:
        record = json.loads((out / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    names = [f.name for f in fields(SamplingResult)]
    if not isinstance(record, dict) or any(n not in record for n in names) or record["num_samples"] != num_samples:
        return None
    if write_npz and not (out / NPZ_FILE).is_file():
        return None
    if write_png:
        present = set(os.listdir(out / PNG_DIR)) if (out / PNG_DIR).is_dir() else set()
        if any(png_name(i, label) not in present for i, label in enumerate(labels.tolist())):
            return None
    values = {n: record[n] for n in names}
    values["image_shape"] = tuple(values["image_shape"])
    return SamplingResult(**values)


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
    compile: bool | None = None,
    autocast_dtype: torch.dtype | None = None,
    overwrite: bool = False,
    run_info: Mapping[str, Any] | None = None,
    progress: Callable[[SamplingProgress], None] | None = None,
) -> SamplingResult:
    """Sample ``labels`` (N,) (one image per entry; sample i is labels[i] with seed (seed, i)) and
    write the layout of the module docstring, resuming an interrupted run into ``out_dir``.
    ``overwrite``: replace an earlier run made with other settings (otherwise refused);
    ``run_info``: JSON-able fields recorded in ``sample.json`` before the statistics;
    ``compile``: the compiled decode step (None: on for CUDA, off for CPU; the same samples up to float
    rounding, so not part of the claim); ``progress``: called on every rank that passes it (see
    :class:`SamplingProgress`). Every rank calls it with the same arguments."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not (write_png or write_npz):
        raise ConfigError("nothing to write: ask for PNGs, the npz, or both")
    labels = labels.to(torch.long).cpu()
    if not len(labels):
        raise ConfigError("nothing to sample: no labels")
    check_compatible(model, tokenizer, num_keep=num_keep, labels=labels)
    try:
        settings.for_sub_tokens(len(model.config.sub_token_bits))
    except ValueError as err:
        raise ConfigError(f"sampling settings: {err}") from None
    start = time.perf_counter()
    out = Path(out_dir).expanduser()
    size = tokenizer.config.image_size
    shape = (size, size, 3)
    total = len(labels)
    claim = {
        "ar_weights": weights_id(model), "tokenizer_weights": weights_id(tokenizer), "labels": _label_runs(labels),
        "seed": seed, "num_keep": num_keep, "sampling": _claimed_settings(settings, model),
        "cache": "compressed" if compressed_cache else "full", "write": {"png": write_png, "npz": write_npz},
        "precision": _precision_name(autocast_dtype), "device": device.type,
    }
    plan = plan_output_dir(out, command=COMMAND, settings=claim, patterns=_PATTERNS, resumable=True,
                           overwrite=overwrite)
    plan.apply_on_main(is_main=context.is_main)
    store = SampleStore(root=out / PARTS_DIR, num_samples=total, image_shape=shape, keep_pixels=write_npz)

    complete = _read_complete(out, num_samples=total, labels=labels, write_png=write_png, write_npz=write_npz)
    barrier()  # every rank has looked before rank 0 changes anything
    if complete is not None:
        if context.is_main:  # what a kill after sample.json left behind
            store.remove()
            remove_stale_temps(out / PNG_DIR)
        return replace(complete, seconds=0.0, images_per_second=0.0, num_generated=0, num_resumed=total,
                       up_to_date=True)
    if context.is_main:
        (out / RECORD_FILE).unlink(missing_ok=True)  # from now on its presence means "complete"
        store.prepare()
        remove_stale_temps(out / PNG_DIR)
    barrier()
    before = store.read()
    barrier()  # every rank has read what is done before anybody records more
    missing = np.flatnonzero(~before.done)
    share = shard(len(missing), rank=context.rank, world_size=context.world_size)
    mine = missing[share.start:share.stop]

    def report(done: int) -> None:
        if progress is not None:
            progress(SamplingProgress(total=total, already_done=before.num_done, assigned=len(mine), done=done))

    report(0)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    bar = progress_bar(total=len(mine), desc="sample", unit="sample", is_main=context.is_main)
    began = time.perf_counter()  # the token rate counts generation, not loading and hashing
    with store.writer(rank=context.rank) as writer, bar:
        for first in range(0, len(mine), batch_size):
            indices = mine[first:first + batch_size]
            batch_labels = labels[torch.from_numpy(indices)]
            with autocast:
                generated = generate(model, labels=batch_labels.to(device), num_keep=num_keep,
                                     seeds=sample_seeds(seed, indices.tolist()), settings=settings,
                                     compressed_cache=compressed_cache, compile=compile)
                decoded = tokenizer.decode_raster(generated.indices)  # (B, L) -> (B, 3, H, W)
            pixels = to_uint8(decoded.float())  # (B, H, W, 3) uint8 on the host
            if pixels.shape[1:] != shape:
                raise ConfigError(f"the tokenizer decoded {pixels.shape[1:]} images; its config says {shape}")
            writer.put_pixels(indices, pixels)
            if write_png:
                for index, label, image in zip(indices.tolist(), batch_labels.tolist(), pixels, strict=True):
                    save_png(image, out / PNG_DIR / png_name(index, label))
            writer.mark_done(indices, peak_cache_entries=generated.peak_cache_entries.cpu().numpy(),
                             unique_tokens=generated.unique_tokens.cpu().numpy(),
                             cache_capacity=generated.cache_capacity)
            bar.update(len(indices))
            tokens = (first + len(indices)) * model.num_tokens
            bar.set_postfix_str(f"{tokens / max(time.perf_counter() - began, 1e-9):.0f} tokens/s", refresh=False)
            report(first + len(indices))
    seconds = time.perf_counter() - start
    # a collective: past it, every rank has recorded its samples
    per_rank = gather_rows(torch.tensor([[seconds, float(len(mine))]], dtype=torch.float64, device=device)).cpu()
    if context.is_main:
        after = store.read()
        if not after.done.all():
            raise ConfigError(f"{store.root}: {total - after.num_done} of {total} samples are not recorded after "
                              "every process finished; is the output folder on a disk every process sees?")
        seconds = float(per_rank[:, 0].max())
        generated_now = int(per_rank[:, 1].sum())
        result = SamplingResult(
            out_dir=str(out), npz=str(out / NPZ_FILE) if write_npz else None,
            png_dir=str(out / PNG_DIR) if write_png else None, num_samples=total, image_shape=shape,
            num_keep=num_keep, num_tokens=model.num_tokens, compressed_cache=compressed_cache,
            mean_peak_cache_entries=float(after.peak_cache_entries.mean()),
            max_peak_cache_entries=int(after.peak_cache_entries.max()),
            mean_unique_tokens=float(after.unique_tokens.mean()), cache_capacity=int(after.cache_capacity.max()),
            seconds=seconds, images_per_second=generated_now / seconds if seconds > 0 else 0.0,
            num_generated=generated_now, num_resumed=before.num_done, up_to_date=False,
        )
        if write_npz:
            _write_npz(out, store=store, labels=labels)
        with atomic_write(out / RECORD_FILE, text=True) as handle:
            json.dump({**(run_info or {}), "exact_k": settings.exact_k, **result.to_dict()}, handle, indent=2)
            handle.write("\n")
        store.remove()
    barrier()
    if context.is_main:
        return result
    stored = _read_complete(out, num_samples=total, labels=labels, write_png=False, write_npz=False)
    if stored is None:
        raise ConfigError(f"{out / RECORD_FILE} is missing after rank 0 finished; is the output folder on a disk "
                          "every process sees?")
    return stored


def _write_npz(out: Path, *, store: SampleStore, labels: torch.Tensor) -> None:
    """Stream the stored pixels, in sample order, into one ADM-layout npz."""
    pixels = store.pixels()
    total = len(labels)
    write_npz(out / NPZ_FILE, [
        NpzMember(name="arr_0", shape=pixels.shape, dtype=np.dtype(np.uint8),
                  chunks=(pixels[begin:begin + _NPZ_CHUNK] for begin in range(0, total, _NPZ_CHUNK))),
        NpzMember(name="arr_1", shape=(total,), dtype=np.dtype(np.int64), chunks=(labels.numpy(),)),
    ])
    del pixels  # close the memory map before the file goes
