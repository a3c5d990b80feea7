"""The Stage 2 data pass (DESIGN §5 "Training data"): run a tokenizer once over a data set and store,
per image, its class, a kept-token count K and the expanded raster index sequence
t_l = indices[assign[l]] (l = 1..L; merged positions repeat their kept token's index), optionally for
the horizontally flipped image too (encoded at the same K). The files are those of
:mod:`mergevq.data.codes`.

Determinism. K of image i is ``candidates[rng.integers(...)[i]]`` with one numpy generator seeded by
``seed`` (:func:`draw_num_keep`): it depends only on (seed, candidates, i), never on the batch size or
the number of ranks. Each rank encodes one contiguous slice of the data set (``mergevq.distributed
.shard``) and writes one shard, so the shards concatenated in rank order hold the images in data set
order whatever the world size. Within its slice a rank visits the images sorted by K, so that a batch
is (almost always) one ``encode`` call at one K; results go back to their source positions.

Re-runs. The request (tokenizer fingerprint, K candidates, seed, flip, precision, data set
description and length) is compared with an existing ``manifest.json``: equal and complete -> nothing
is done (``up_to_date``); different -> a one-line ConfigError naming the first differing field,
unless ``force``. Without a manifest (an interrupted run), shards whose record matches the request are
reused and only the missing ones are encoded. The output folder must be shared by every rank (rank 0
reads all shard records to write the manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from mergevq import distributed as D
from mergevq.data.codes import (
    MANIFEST_FILE,
    CodesManifest,
    ShardArrays,
    ShardRecord,
    read_manifest,
    read_shard,
    read_shard_record,
    shard_name,
    write_manifest,
    write_shard,
)
from mergevq.distributed import DistContext
from mergevq.errors import ConfigError
from mergevq.inference.fingerprint import weights_id
from mergevq.inference.progress import progress_bar, track
from mergevq.tokenizer.model import MergeVQ

__all__ = ["OUTPUT_PATTERNS", "ExtractionRequest", "ExtractionResult", "check_tokenizer", "draw_num_keep",
           "expanded_sequences", "extract_codes", "tokenizer_id"]

OUTPUT_PATTERNS = (MANIFEST_FILE, "shard-*")  # every top-level name a codes folder holds

_UNLABELLED = -1


# --------------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------------


def tokenizer_id(model: MergeVQ) -> str:
    """The tokenizer's :func:`~mergevq.inference.fingerprint.weights_id` (what a manifest records)."""
    return weights_id(model)


def check_tokenizer(manifest: CodesManifest, model: MergeVQ, *, source: str | os.PathLike) -> None:
    """A one-line ConfigError unless the codes of ``manifest`` (read from ``source``) were extracted
    with ``model``: a sequence means nothing to another tokenizer's decoder."""
    config = model.config
    layout = (config.num_tokens, tuple(config.grid), config.code_dim, tuple(config.sub_token_bits))
    stored = (manifest.num_tokens, tuple(manifest.grid), manifest.code_dim, tuple(manifest.sub_token_bits))
    if stored != layout:
        raise ConfigError(
            f"{source}: the codes were extracted with L={stored[0]}, grid={stored[1]}, code_dim={stored[2]}, "
            f"sub_token_bits={stored[3]}; this tokenizer has L={layout[0]}, grid={layout[1]}, "
            f"code_dim={layout[2]}, sub_token_bits={layout[3]}"
        )
    here = tokenizer_id(model)
    if manifest.tokenizer_id != here:
        raise ConfigError(
            f"{source}: the codes were extracted with tokenizer {manifest.tokenizer_id[:12]}..., this tokenizer "
            f"is {here[:12]}... (other weights); use the tokenizer the codes came from or re-extract"
        )


def draw_num_keep(num_images: int, *, candidates: Sequence[int], seed: int) -> np.ndarray:
    """int64 (num_images,): the K of every image, uniform over ``candidates``. Entry i depends only on
    (seed, candidates, i): a longer draw extends a shorter one."""
    choices = np.asarray(candidates, dtype=np.int64)
    picks = np.random.default_rng(seed).integers(0, len(choices), size=num_images)
    return choices[picks]


def expanded_sequences(model: MergeVQ, images: torch.Tensor, num_keep: int) -> torch.Tensor:
    """images (B, 3, H, W) in [-1, 1] -> (B, L) int64: t_l = index of the kept token holding
    position l, i.e. ``indices[b, assign[b, l]]``."""
    encoded = model.encode(images, num_keep)  # indices (B, K), assign (B, L) in [0, K)
    return torch.gather(encoded.indices, 1, encoded.assign)  # (B, L)


def _canonical(value: Any) -> Any:
    """The JSON round trip of ``value`` (tuples -> lists, int keys -> str), so a request compares
    equal to what a manifest read back from disk holds."""
    return json.loads(json.dumps(value, sort_keys=True))


@dataclass(frozen=True)
class ExtractionRequest:
    """Everything that decides the content of a codes folder (compared against its manifest)."""

    tokenizer_id: str
    k_candidates: tuple[int, ...]
    seed: int
    has_flip: bool
    precision: str
    dataset_description: dict
    dataset_length: int

    def fingerprint(self) -> str:
        fields = {name: _canonical(getattr(self, name)) for name in self.__dataclass_fields__}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def mismatch(self, manifest: CodesManifest) -> str | None:
        """None if ``manifest`` was written for this request, else 'FIELD is X there, Y here'."""
        for name in self.__dataclass_fields__:
            here, there = _canonical(getattr(self, name)), _canonical(getattr(manifest, name))
            if here != there:
                if name == "tokenizer_id":
                    return f"tokenizer_id is {there[:12]}... there, {here[:12]}... here (another tokenizer)"
                return f"{name} is {json.dumps(there)} there, {json.dumps(here)} here"
        return None


@dataclass(frozen=True)
class ExtractionResult:
    out_dir: Path
    manifest: CodesManifest
    up_to_date: bool  # the folder already held this extraction: nothing was encoded or written
    images_encoded: int  # images (not counting flipped copies) this rank encoded in this call
    seconds: float  # wall time of this rank's encoding loop (data loading included)


# --------------------------------------------------------------------------------------------------
# Data loading
# --------------------------------------------------------------------------------------------------


class _Ordered(Dataset):
    """``dataset`` visited in the given order of source indices; items are (source index, sample)."""

    def __init__(self, dataset: Dataset, order: np.ndarray) -> None:
        self.dataset = dataset
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, position: int) -> tuple[int, Any]:
        index = int(self.order[position])
        return index, self.dataset[index]


def _collate(items: list[tuple[int, Any]]) -> dict[str, Any]:
    """Readable samples -> index (int64 (b,)), image (b, 3, H, W), label (int64 (b,)); unreadable ones
    (None or the falsy ``taming.data.base.Skipped`` marker) are dropped and counted."""
    kept = [(i, s) for i, s in items if s]
    labels = [s.get("class_label", _UNLABELLED) for _, s in kept]
    return {
        "index": torch.tensor([i for i, _ in kept], dtype=torch.int64),
        "image": default_collate([s["image"] for _, s in kept]) if kept else None,
        "label": torch.as_tensor([int(label) for label in labels], dtype=torch.int64),
        "num_skipped": len(items) - len(kept),
    }


def _dataset_num_classes(dataset: Dataset) -> int | None:
    """The class count a data set declares (``num_classes``, or its ``classes`` list), else None."""
    count = getattr(dataset, "num_classes", None)
    if isinstance(count, int) and not isinstance(count, bool):
        return count
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return len(classes)
    return None


# --------------------------------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------------------------------


def _precision_name(autocast_dtype: torch.dtype | None) -> str:
    return "fp32" if autocast_dtype is None else str(autocast_dtype).removeprefix("torch.")


def _check_candidates(model: MergeVQ, candidates: Sequence[int] | None) -> tuple[int, ...]:
    values = tuple(model.config.k_candidates if candidates is None else candidates)
    if not values:
        raise ConfigError("k_candidates is empty: give at least one kept-token count K")
    for k in values:
        model.check_num_keep(k)  # ConfigError naming K and the valid range
    return tuple(sorted(set(values)))


def _existing_manifest(out_dir: Path, request: ExtractionRequest, *, force: bool) -> tuple[CodesManifest | None, bool]:
    """(manifest, complete) where complete means the folder already holds exactly this request."""
    if not (out_dir / MANIFEST_FILE).is_file():
        return None, False
    try:
        manifest = read_manifest(out_dir)
    except ConfigError as err:
        if force:
            return None, False
        raise ConfigError(f"{err}; use --overwrite to replace {out_dir}") from None
    problem = request.mismatch(manifest)
    if problem is not None:
        if force:
            return manifest, False
        raise ConfigError(
            f"{out_dir / MANIFEST_FILE} was written by another extraction: {problem}; use another "
            "output folder or --overwrite to replace it"
        )
    try:
        for s in manifest.shards:
            read_shard(out_dir, s.name, count=s.count, num_tokens=manifest.num_tokens, has_flip=manifest.has_flip)
    except ConfigError:
        return manifest, False  # same request, damaged shards: redo what is missing
    return manifest, True


def _reusable(out_dir: Path, name: str, fingerprint: str, *, num_tokens: int, flip: bool) -> bool:
    record = read_shard_record(out_dir, name)
    if record is None or record.request != fingerprint:
        return False
    try:
        read_shard(out_dir, name, count=record.count, num_tokens=num_tokens, has_flip=flip)
    except ConfigError:
        return False
    return True


def _encode_slice(
    model: MergeVQ, dataset: Dataset, *, part: range, num_keep: np.ndarray, flip: bool, batch_size: int,
    num_workers: int, device: torch.device, autocast_dtype: torch.dtype | None,
    progress: Callable[[int, int], None] | None, is_main: bool,
) -> tuple[ShardArrays, int]:
    """Encode the images ``part`` of ``dataset``; returns their arrays (source order, unreadable
    images left out) and the number skipped. ``is_main``: this process draws the progress bar."""
    n, num_tokens, start = len(part), model.num_tokens, part.start
    # Visit the slice sorted by K (stable: source order within one K), so batches are single-K.
    order = start + np.argsort(num_keep[part.start:part.stop], kind="stable")
    loader = DataLoader(_Ordered(dataset, order), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_collate, pin_memory=device.type == "cuda")
    tokens = np.zeros((n, num_tokens), np.int32)
    flipped = np.zeros((n, num_tokens), np.int32) if flip else None
    labels = np.full(n, _UNLABELLED, np.int64)
    stored = np.zeros(n, bool)
    skipped, done = 0, 0
    expected = (model.config.image_size, model.config.image_size)
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else nullcontext())
    bar = progress_bar(total=n, desc="extract-codes", unit="img", is_main=is_main)
    with torch.inference_mode(), autocast:
        for batch in track(loader, bar, count=lambda b: b["num_skipped"] + len(b["index"])):
            skipped += batch["num_skipped"]
            done += batch["num_skipped"] + len(batch["index"])
            if batch["image"] is not None:
                images = batch["image"].to(device, non_blocking=True)  # (b, 3, H, W)
                if tuple(images.shape[-2:]) != expected or images.shape[1] != 3:
                    raise ConfigError(
                        f"the data set yields images of shape {tuple(images.shape[1:])}, the tokenizer takes "
                        f"(3, {expected[0]}, {expected[1]}): resize the data set to image_size={expected[0]}"
                    )
                rows = batch["index"].numpy() - start
                ks = num_keep[batch["index"].numpy()]
                for k in np.unique(ks):
                    sel = np.flatnonzero(ks == k)
                    x = images[torch.from_numpy(sel).to(device)]
                    if flip:
                        x = torch.cat([x, x.flip(-1)])  # one call encodes both; images are independent
                    seq = expanded_sequences(model, x, int(k)).to("cpu", torch.int32).numpy()  # (b[*2], L)
                    tokens[rows[sel]] = seq[: len(sel)]
                    if flipped is not None:
                        flipped[rows[sel]] = seq[len(sel):]
                labels[rows] = batch["label"].numpy()
                stored[rows] = True
            if progress is not None:
                progress(done, n)
    keep = np.flatnonzero(stored)
    arrays = ShardArrays(
        tokens=tokens[keep], flip=None if flipped is None else flipped[keep], labels=labels[keep],
        num_keep=num_keep[start + keep].astype(np.int32), source_index=(start + keep).astype(np.int64),
    )
    return arrays, skipped


def _build_manifest(model: MergeVQ, request: ExtractionRequest, records: list[ShardRecord], *,
                    num_classes: int | None) -> CodesManifest:
    k_counts: dict[int, int] = {k: 0 for k in request.k_candidates}
    for record in records:
        for k, count in record.k_counts.items():
            k_counts[k] = k_counts.get(k, 0) + count
    if num_classes is None:  # the data set declares none: the largest label seen + 1 (0: unlabelled)
        num_classes = max((r.max_label for r in records), default=_UNLABELLED) + 1
    config = model.config
    return CodesManifest(
        tokenizer_id=request.tokenizer_id, num_tokens=config.num_tokens, grid=tuple(config.grid),
        code_dim=config.code_dim, sub_token_bits=tuple(config.sub_token_bits), num_classes=num_classes,
        k_candidates=request.k_candidates, k_counts=k_counts, num_images=sum(r.count for r in records),
        has_flip=request.has_flip, seed=request.seed, precision=request.precision,
        tokenizer_config=_canonical(config.to_dict()), dataset_description=request.dataset_description,
        dataset_length=request.dataset_length, num_skipped=sum(r.num_skipped for r in records),
        shards=tuple(records),
    )


def _remove_stale_files(out_dir: Path, keep: set[str]) -> None:
    """Delete shard files of other world sizes or earlier runs, and temporary files that a killed run
    left behind. Only names of this module's own patterns are touched."""
    for path in out_dir.iterdir():
        name = path.name
        leftover_temp = name.startswith((".shard-", f".{MANIFEST_FILE}.")) and name.endswith(".tmp")
        stale_shard = name.startswith("shard-") and name.split(".")[0] not in keep
        if (leftover_temp or stale_shard) and path.is_file():
            path.unlink(missing_ok=True)


def extract_codes(
    model: MergeVQ,
    dataset: Dataset,
    *,
    out_dir: str | os.PathLike,
    k_candidates: Sequence[int] | None = None,
    seed: int = 0,
    flip: bool = False,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    autocast_dtype: torch.dtype | None = None,
    dist: DistContext | None = None,
    dataset_description: Mapping[str, Any] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractionResult:
    """Encode ``dataset`` (items ``{"image": (3, H, W) in [-1, 1], "class_label"?: int}``; None /
    ``Skipped`` for unreadable images) with ``model`` and write a codes folder at ``out_dir``.

    k_candidates: the Ks drawn from (default: the tokenizer's ``k_candidates``); seed: the seed of
    the draw; flip: also store the flipped images' sequences; dist: this process's place among the
    ranks (None: a single process; with more, torch.distributed must be initialised);
    dataset_description: JSON-able description of the data set recorded in (and compared against) the
    manifest (default: its class name); force: overwrite a folder written by another request;
    progress(done, total): called on every batch with this rank's counts. The model is used as given
    (put it on ``device`` and in eval mode first). Collective: every rank must call it.
    """
    ctx = dist if dist is not None else DistContext(rank=0, world_size=1, local_rank=0)
    device = torch.device(device)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    out_dir = Path(out_dir).expanduser()
    candidates = _check_candidates(model, k_candidates)
    description = dict(dataset_description) if dataset_description is not None else {
        "class": f"{type(dataset).__module__}.{type(dataset).__qualname__}"}
    request = ExtractionRequest(
        tokenizer_id=tokenizer_id(model), k_candidates=candidates, seed=int(seed), has_flip=bool(flip),
        precision=_precision_name(autocast_dtype), dataset_description=_canonical(description),
        dataset_length=len(dataset),
    )
    fingerprint = request.fingerprint()

    # Every rank reads the (shared) folder, so a refusal is raised on all of them alike.
    manifest, complete = _existing_manifest(out_dir, request, force=force)
    D.barrier()  # nobody may still be reading the old manifest when rank 0 removes it below
    if complete:
        assert manifest is not None
        return ExtractionResult(out_dir=out_dir, manifest=manifest, up_to_date=True, images_encoded=0, seconds=0.0)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Until the new manifest is written the folder must not look complete.
        (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
    D.barrier()

    num_keep = draw_num_keep(request.dataset_length, candidates=candidates, seed=request.seed)
    part = D.shard(request.dataset_length, rank=ctx.rank, world_size=ctx.world_size)
    name = shard_name(ctx.rank, ctx.world_size)
    encoded, seconds = 0, 0.0
    if not _reusable(out_dir, name, fingerprint, num_tokens=model.num_tokens, flip=flip):
        started = time.perf_counter()
        arrays, skipped = _encode_slice(
            model, dataset, part=part, num_keep=num_keep, flip=flip, batch_size=batch_size,
            num_workers=num_workers, device=device, autocast_dtype=autocast_dtype, progress=progress,
            is_main=ctx.is_main,
        )
        seconds = time.perf_counter() - started
        encoded = arrays.count
        values, counts = np.unique(arrays.num_keep, return_counts=True)
        record = ShardRecord(
            name=name, rank=ctx.rank, world_size=ctx.world_size, count=arrays.count, num_skipped=skipped,
            k_counts={int(k): int(c) for k, c in zip(values, counts)},
            max_label=int(arrays.labels.max()) if arrays.count else _UNLABELLED, request=fingerprint,
        )
        write_shard(out_dir, record, arrays)
    D.barrier()

    if ctx.is_main:
        names = [shard_name(r, ctx.world_size) for r in range(ctx.world_size)]
        records = [read_shard_record(out_dir, n) for n in names]
        missing = [n for n, r in zip(names, records) if r is None or r.request != fingerprint]
        if missing:
            raise ConfigError(
                f"{out_dir}: shard record(s) {', '.join(missing)} missing after every rank finished; "
                "is the output folder shared by all ranks?"
            )
        manifest = _build_manifest(model, request, records, num_classes=_dataset_num_classes(dataset))
        _remove_stale_files(out_dir, set(names))
        write_manifest(out_dir, manifest)
    D.barrier()
    if not ctx.is_main:
        manifest = read_manifest(out_dir)
    return ExtractionResult(out_dir=out_dir, manifest=manifest, up_to_date=False, images_encoded=encoded,
                            seconds=seconds)
