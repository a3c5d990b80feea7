"""Pre-extracted Stage 2 training data: per image its class, its kept-token count K and its expanded
raster index sequence t_1..t_L (DESIGN §5 "Training data"), as written by ``mergevq extract-codes``.

On-disk layout of a codes folder::

    manifest.json                              written last: its presence means "complete"
    shard-00000-of-00008.tokens.npy            int32 (n, L)  t_l = index of the kept token at position l
    shard-00000-of-00008.flip.npy              int32 (n, L)  the same for the horizontally flipped image
                                                             (only when extracted with flip)
    shard-00000-of-00008.labels.npy            int64 (n,)    class label (-1 = unlabelled image)
    shard-00000-of-00008.num_keep.npy          int32 (n,)    K the image was encoded with
    shard-00000-of-00008.source_index.npy      int64 (n,)    the image's index in the source data set
    shard-00000-of-00008.json                  the shard's record (counts; written after its arrays)
    ...

One shard per extraction rank; concatenated in rank order the shards hold the readable images in
source order (unreadable images are skipped and only counted). Every file is written atomically.
Plain ``.npy`` files so that :class:`CodesDataset` can memory-map them (``np.load(mmap_mode="r")``):
an epoch over ImageNet never loads the whole token table into each DataLoader worker.

This module imports no model code: the tokenizer fingerprint and the extraction pass live in
``mergevq.inference.extract_codes``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mergevq.data.datamodule import accelerator_present
from mergevq.data.samplers import ResumableDataModule
from mergevq.errors import ConfigError
from mergevq.fileio import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "CodesDataModule",
    "CodesDataset",
    "CodesManifest",
    "ShardArrays",
    "ShardRecord",
    "read_manifest",
    "read_shard",
    "read_shard_record",
    "shard_files",
    "shard_name",
    "write_manifest",
    "write_shard",
]

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
_FORMAT_NAME = "mergevq-codes"

# array name -> dtype on disk ("flip" only exists when the flipped images were encoded too)
_DTYPES: dict[str, np.dtype] = {
    "tokens": np.dtype(np.int32),
    "flip": np.dtype(np.int32),
    "labels": np.dtype(np.int64),
    "num_keep": np.dtype(np.int32),
    "source_index": np.dtype(np.int64),
}


# --------------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------------


def shard_name(rank: int, world_size: int) -> str:
    """The file stem of the shard written by ``rank`` of ``world_size``."""
    return f"shard-{rank:05d}-of-{world_size:05d}"


def shard_files(name: str, *, has_flip: bool) -> dict[str, str]:
    """Array name -> file name of a shard's arrays."""
    names = [n for n in _DTYPES if has_flip or n != "flip"]
    return {n: f"{name}.{n}.npy" for n in names}


def _record_file(name: str) -> str:
    return f"{name}.json"


@dataclass(frozen=True)
class ShardArrays:
    """The arrays of one shard, n images each. ``flip`` is None when no flipped images were encoded.

    tokens, flip: int32 (n, L); labels: int64 (n,); num_keep: int32 (n,); source_index: int64 (n,).
    Read with :func:`read_shard` they are read-only memory maps.
    """

    tokens: np.ndarray
    flip: np.ndarray | None
    labels: np.ndarray
    num_keep: np.ndarray
    source_index: np.ndarray

    @property
    def count(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class ShardRecord:
    """What one extraction rank wrote: its shard's name and counts, and the fingerprint of the
    extraction request that produced it (a re-run reuses a shard only when that matches)."""

    name: str
    rank: int
    world_size: int
    count: int  # images stored
    num_skipped: int  # unreadable images of this rank's slice, not stored
    k_counts: dict[int, int]  # K -> images stored with that K
    max_label: int  # the largest class label stored (-1: none)
    request: str  # fingerprint of the extraction request

    def to_dict(self) -> dict:
        return {"name": self.name, "rank": self.rank, "world_size": self.world_size, "count": self.count,
                "num_skipped": self.num_skipped, "k_counts": {str(k): v for k, v in sorted(self.k_counts.items())},
                "max_label": self.max_label, "request": self.request}

    @classmethod
    def from_dict(cls, data: dict) -> ShardRecord:
        return cls(name=str(data["name"]), rank=int(data["rank"]), world_size=int(data["world_size"]),
                   count=int(data["count"]), num_skipped=int(data["num_skipped"]),
                   k_counts={int(k): int(v) for k, v in data["k_counts"].items()},
                   max_label=int(data["max_label"]), request=str(data["request"]))


def write_shard(root: str | os.PathLike, record: ShardRecord, arrays: ShardArrays) -> None:
    """Write a shard's arrays, then its record, each atomically (a reader that finds the record finds
    complete arrays). The arrays must match ``record.count`` and the on-disk dtypes."""
    root = Path(root)
    values = {"tokens": arrays.tokens, "flip": arrays.flip, "labels": arrays.labels,
              "num_keep": arrays.num_keep, "source_index": arrays.source_index}
    for key, filename in shard_files(record.name, has_flip=arrays.flip is not None).items():
        array = np.ascontiguousarray(values[key], dtype=_DTYPES[key])
        if array.shape[0] != record.count:
            raise ValueError(f"shard {record.name}: {key} has {array.shape[0]} rows, the record says {record.count}")
        with atomic_write(root / filename) as handle:
            np.save(handle, array, allow_pickle=False)
    with atomic_write(root / _record_file(record.name), text=True) as handle:
        json.dump(record.to_dict(), handle, indent=1)


def read_shard_record(root: str | os.PathLike, name: str) -> ShardRecord | None:
    """The record of shard ``name``, or None when it is missing or unreadable (an interrupted write
    never leaves a partial record: records are written atomically, after the arrays)."""
    path = Path(root) / _record_file(name)
    try:
        return ShardRecord.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _load_array(path: Path, *, key: str, rows: int, num_tokens: int) -> np.ndarray:
    if not path.is_file():
        raise ConfigError(f"codes shard file {path} is missing; re-run mergevq extract-codes for this folder")
    try:
        # A memory map of a 0-row array would be an empty mapping, which mmap refuses.
        array = np.load(path, mmap_mode="r" if rows > 0 else None, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read codes shard file {path}: {err}") from None
    shape = (rows, num_tokens) if key in ("tokens", "flip") else (rows,)
    if array.shape != shape or array.dtype != _DTYPES[key]:
        raise ConfigError(
            f"codes shard file {path} holds {array.dtype} {tuple(array.shape)}, the manifest expects "
            f"{_DTYPES[key]} {shape}; the folder is damaged: re-run mergevq extract-codes with --force"
        )
    return array


def read_shard(root: str | os.PathLike, name: str, *, count: int, num_tokens: int, has_flip: bool) -> ShardArrays:
    """Memory-map shard ``name`` and check every array against the expected ``count`` x ``num_tokens``
    (a missing, truncated or foreign file is a one-line ConfigError naming it)."""
    root = Path(root)
    arrays = {key: _load_array(root / filename, key=key, rows=count, num_tokens=num_tokens)
              for key, filename in shard_files(name, has_flip=has_flip).items()}
    return ShardArrays(tokens=arrays["tokens"], flip=arrays.get("flip"), labels=arrays["labels"],
                       num_keep=arrays["num_keep"], source_index=arrays["source_index"])


# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodesManifest:
    """``manifest.json`` of a codes folder: what was extracted, with which tokenizer, and where.

    The first block is what Stage 2 needs (AR_INTERFACE.md); the second records the extraction
    request (a re-run with another tokenizer / K candidates / seed / flip / data set is refused) and
    the shards.
    """

    tokenizer_id: str  # sha256 over the tokenizer's config and weights
    num_tokens: int  # L
    grid: tuple[int, int]  # (rows, cols) of the raster; L = rows * cols
    code_dim: int  # bits per token (LFQ d)
    sub_token_bits: tuple[int, ...]  # the bit split of a token into sub-tokens
    num_classes: int  # class count of the source data set (0: unlabelled, every label is -1)
    k_candidates: tuple[int, ...]  # the Ks drawn from (sorted)
    k_counts: dict[int, int]  # K -> images stored with it
    num_images: int  # images stored (readable ones)
    has_flip: bool  # the flipped images' sequences were stored too
    # --- extraction request and bookkeeping ---
    seed: int = 0  # seed of the per-image K draw
    precision: str = "fp32"  # encoder compute precision (fp32, bfloat16 or float16 autocast)
    tokenizer_config: dict = field(default_factory=dict)  # MergeVQConfig.to_dict() of the tokenizer
    dataset_description: dict = field(default_factory=dict)  # what the source data set was (its config node)
    dataset_length: int = 0  # items in the source data set (stored + skipped)
    num_skipped: int = 0  # unreadable images, not stored
    shards: tuple[ShardRecord, ...] = ()
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        return {
            "format": _FORMAT_NAME, "format_version": self.format_version,
            "tokenizer_id": self.tokenizer_id, "num_tokens": self.num_tokens, "grid": list(self.grid),
            "code_dim": self.code_dim, "sub_token_bits": list(self.sub_token_bits),
            "num_classes": self.num_classes, "k_candidates": list(self.k_candidates),
            "k_counts": {str(k): v for k, v in sorted(self.k_counts.items())},
            "num_images": self.num_images, "has_flip": self.has_flip, "seed": self.seed,
            "precision": self.precision, "tokenizer_config": self.tokenizer_config,
            "dataset_description": self.dataset_description, "dataset_length": self.dataset_length,
            "num_skipped": self.num_skipped, "shards": [s.to_dict() for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: dict, *, source: str = MANIFEST_FILE) -> CodesManifest:
        if not isinstance(data, dict) or data.get("format") != _FORMAT_NAME:
            raise ConfigError(f"{source} is not a mergevq codes manifest (no \"format\": \"{_FORMAT_NAME}\")")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(
                f"{source} has codes format version {version}, this mergevq reads version {FORMAT_VERSION}; "
                "re-extract with mergevq extract-codes --force"
            )
        try:
            return cls(
                tokenizer_id=str(data["tokenizer_id"]), num_tokens=int(data["num_tokens"]),
                grid=tuple(int(g) for g in data["grid"]), code_dim=int(data["code_dim"]),
                sub_token_bits=tuple(int(b) for b in data["sub_token_bits"]),
                num_classes=int(data["num_classes"]), k_candidates=tuple(int(k) for k in data["k_candidates"]),
                k_counts={int(k): int(v) for k, v in data["k_counts"].items()},
                num_images=int(data["num_images"]), has_flip=bool(data["has_flip"]), seed=int(data["seed"]),
                precision=str(data["precision"]), tokenizer_config=dict(data["tokenizer_config"]),
                dataset_description=dict(data["dataset_description"]),
                dataset_length=int(data["dataset_length"]), num_skipped=int(data["num_skipped"]),
                shards=tuple(ShardRecord.from_dict(s) for s in data["shards"]), format_version=int(version),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ConfigError(f"{source} is malformed ({type(err).__name__}: {err})") from None


def read_manifest(root: str | os.PathLike) -> CodesManifest:
    """The manifest of codes folder ``root``; a missing or unreadable one is a one-line ConfigError."""
    path = Path(root) / MANIFEST_FILE
    if not path.is_file():
        where = "folder not found" if not Path(root).is_dir() else "no manifest.json"
        raise ConfigError(
            f"{path}: {where}; expected the output folder of a finished mergevq extract-codes run "
            "(the manifest is written last, so an interrupted run has none: re-run the same command)"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    manifest = CodesManifest.from_dict(data, source=str(path))
    total = sum(s.count for s in manifest.shards)
    if total != manifest.num_images:
        raise ConfigError(f"{path}: its shards hold {total} images, it says num_images={manifest.num_images}")
    return manifest


def write_manifest(root: str | os.PathLike, manifest: CodesManifest) -> Path:
    path = Path(root) / MANIFEST_FILE
    with atomic_write(path, text=True) as handle:
        json.dump(manifest.to_dict(), handle, indent=1)
    return path


# --------------------------------------------------------------------------------------------------
# Dataset and data module
# --------------------------------------------------------------------------------------------------


class CodesDataset(Dataset):
    """The sequences of a codes folder, memory-mapped.

    Item ``i``: ``{"indices": int64 (L,), "label": int64 (), "num_keep": int64 ()}``. With
    ``augment_flip`` the data set is twice as long: items ``N + i`` are the flipped image ``i``'s
    sequence (same label and K). The shards are checked at construction (missing, truncated or
    foreign files are a one-line ConfigError) and mapped lazily in each process, so the data set
    pickles cheaply into DataLoader workers.
    """

    def __init__(self, *, root: str, augment_flip: bool = False) -> None:
        self.root = Path(root).expanduser()
        self.manifest = read_manifest(self.root)
        if augment_flip and not self.manifest.has_flip:
            raise ConfigError(
                f"augment_flip=true but {self.root / MANIFEST_FILE} has no flipped sequences; "
                "extract with mergevq extract-codes --flip, or set augment_flip: false"
            )
        self.augment_flip = augment_flip
        # (0, n_0, n_0 + n_1, ...): image i lives in shard s with offsets[s] <= i < offsets[s + 1]
        self._offsets = np.cumsum([0, *(s.count for s in self.manifest.shards)])
        self._shards: list[ShardArrays] | None = self._open()  # validates every shard now

    def _open(self) -> list[ShardArrays]:
        m = self.manifest
        return [read_shard(self.root, s.name, count=s.count, num_tokens=m.num_tokens, has_flip=m.has_flip)
                for s in m.shards]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_shards"] = None  # pickling a memory map copies its data; workers re-map instead
        return state

    @property
    def num_images(self) -> int:
        return self.manifest.num_images

    def __len__(self) -> int:
        return self.num_images * (2 if self.augment_flip else 1)

    def _locate(self, image: int) -> tuple[ShardArrays, int]:
        if self._shards is None:
            self._shards = self._open()
        shard = int(np.searchsorted(self._offsets, image, side="right")) - 1
        return self._shards[shard], image - int(self._offsets[shard])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} sequences")
        index %= n
        flipped = index >= self.num_images
        arrays, row = self._locate(index - self.num_images if flipped else index)
        table = arrays.flip if flipped else arrays.tokens
        assert table is not None  # augment_flip is refused at construction without flipped sequences
        return {
            "indices": torch.from_numpy(table[row].astype(np.int64)),  # (L,)
            "label": torch.tensor(int(arrays.labels[row]), dtype=torch.int64),
            "num_keep": torch.tensor(int(arrays.num_keep[row]), dtype=torch.int64),
        }

    def source_indices(self) -> np.ndarray:
        """int64 (N,): the source data set index of every stored image, in item order."""
        if self._shards is None:
            self._shards = self._open()
        return np.concatenate([np.asarray(s.source_index) for s in self._shards]) if self._shards else \
            np.zeros(0, np.int64)


class CodesDataModule(ResumableDataModule):
    """Train / validation loaders over code data sets (usually :class:`CodesDataset`).

    Batches: ``{"indices": (B, L) int64, "label": (B,) int64, "num_keep": (B,) int64}``. Training
    batches are shuffled in an order that depends only on (``seed``, epoch), sharded over the ranks,
    and a resumed run continues the epoch where the checkpoint was written
    (:class:`~mergevq.data.samplers.ResumableDataModule`); they are full
    (``drop_last``: uniform shapes); validation is in order and complete.
    """

    def __init__(self, *, train: Dataset, validation: Dataset | None = None, batch_size: int,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.train_dataset = train
        self.val_dataset = validation
        self.batch_size = batch_size
        self.num_workers = num_workers

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size, drop_last=train,
            sampler=self.train_sampler(len(dataset), keyed=False, batch_size=self.batch_size) if train else None,
            num_workers=self.num_workers, pin_memory=accelerator_present(),
            persistent_workers=self.num_workers > 0, generator=self.loader_generator(),
        )

    def train_dataloader(self) -> DataLoader:
        if len(self.train_dataset) < self.batch_size:  # drop_last would leave no batch at all
            raise ConfigError(
                f"data.batch_size={self.batch_size} exceeds the {len(self.train_dataset)} training sequences"
            )
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_dataset is None:
            return []  # no validation loop
        return self._loader(self.val_dataset, train=False)
