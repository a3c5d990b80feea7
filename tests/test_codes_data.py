"""The code data set (mergevq/data/codes.py): shards + manifest on disk, the memory-mapped
CodesDataset (rows across shard boundaries, flip indexing, damaged folders) and CodesDataModule.

Hand-written shards with known content, no model: what extraction writes is tested in
tests/test_extract_codes.py."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mergevq.data.codes import (
    MANIFEST_FILE,
    CodesDataModule,
    CodesDataset,
    CodesManifest,
    ShardArrays,
    ShardRecord,
    read_manifest,
    shard_files,
    shard_name,
    write_manifest,
    write_shard,
)
from mergevq.errors import ConfigError

L = 16
SHARD_SIZES = (5, 0, 4)  # an empty shard (a rank whose slice was all unreadable) in the middle


def _rows(n: int, offset: int, flip: bool) -> np.ndarray:
    """Image j = offset + i holds (j + 1) * 1000 + l (flipped: negative), so every value names its image."""
    base = (np.arange(n)[:, None] + offset + 1) * 1000 + np.arange(L)[None, :]
    return (-base if flip else base).astype(np.int32)


def _write_folder(root, *, has_flip: bool = True, sizes=SHARD_SIZES) -> CodesManifest:
    records, offset = [], 0
    for rank, n in enumerate(sizes):
        name = shard_name(rank, len(sizes))
        num_keep = np.array([(4, 9, 16)[(offset + i) % 3] for i in range(n)], np.int32)
        arrays = ShardArrays(
            tokens=_rows(n, offset, False), flip=_rows(n, offset, True) if has_flip else None,
            labels=np.arange(offset, offset + n, dtype=np.int64) % 3, num_keep=num_keep,
            source_index=np.arange(offset, offset + n, dtype=np.int64) * 2,
        )
        values, counts = np.unique(num_keep, return_counts=True)
        record = ShardRecord(name=name, rank=rank, world_size=len(sizes), count=n, num_skipped=0,
                             k_counts={int(k): int(c) for k, c in zip(values, counts)},
                             max_label=int(arrays.labels.max()) if n else -1, request="r")
        write_shard(root, record, arrays)
        records.append(record)
        offset += n
    k_counts = {4: 0, 9: 0, 16: 0}
    for r in records:
        for k, c in r.k_counts.items():
            k_counts[k] += c
    manifest = CodesManifest(tokenizer_id="abc", num_tokens=L, grid=(4, 4), code_dim=18, sub_token_bits=(6, 12),
                             num_classes=3, k_candidates=(4, 9, 16), k_counts=k_counts, num_images=offset,
                             has_flip=has_flip, shards=tuple(records))
    write_manifest(root, manifest)
    return manifest


def test_manifest_round_trip(tmp_path):
    written = _write_folder(tmp_path)
    read = read_manifest(tmp_path)
    assert read == written
    assert read.grid == (4, 4) and read.sub_token_bits == (6, 12) and read.k_counts == {4: 3, 9: 3, 16: 3}
    assert sum(read.k_counts.values()) == read.num_images == sum(SHARD_SIZES)


def test_dataset_reads_rows_across_shards(tmp_path):
    _write_folder(tmp_path)
    ds = CodesDataset(root=str(tmp_path))
    n = sum(SHARD_SIZES)
    assert len(ds) == n
    for i in range(n):
        item = ds[i]
        assert set(item) == {"indices", "label", "num_keep"}
        assert item["indices"].dtype == torch.int64 and item["indices"].shape == (L,)
        assert item["label"].dtype == torch.int64 and item["label"].shape == ()
        assert item["num_keep"].dtype == torch.int64 and item["num_keep"].shape == ()
        assert torch.equal(item["indices"], torch.from_numpy(_rows(1, i, False)[0]).long())
        assert int(item["label"]) == i % 3 and int(item["num_keep"]) == (4, 9, 16)[i % 3]
    assert torch.equal(ds[-1]["indices"], ds[n - 1]["indices"])
    with pytest.raises(IndexError):
        ds[n]
    assert ds.source_indices().tolist() == [2 * i for i in range(n)]


def test_flip_indexing(tmp_path):
    _write_folder(tmp_path)
    n = sum(SHARD_SIZES)
    ds = CodesDataset(root=str(tmp_path), augment_flip=True)
    assert len(ds) == 2 * n
    for i in range(n):
        plain, flipped = ds[i], ds[n + i]
        assert torch.equal(flipped["indices"], -plain["indices"])  # the flipped row of the same image
        assert int(flipped["label"]) == int(plain["label"]) and int(flipped["num_keep"]) == int(plain["num_keep"])
    with pytest.raises(IndexError):
        ds[2 * n]


def test_augment_flip_needs_stored_flip(tmp_path):
    _write_folder(tmp_path, has_flip=False)
    assert len(CodesDataset(root=str(tmp_path))) == sum(SHARD_SIZES)
    assert not any(p.name.endswith(".flip.npy") for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match="no flipped sequences"):
        CodesDataset(root=str(tmp_path), augment_flip=True)


def test_dataset_is_memory_mapped_and_pickles_small(tmp_path):
    _write_folder(tmp_path, sizes=(300, 200))
    ds = CodesDataset(root=str(tmp_path), augment_flip=True)
    assert all(isinstance(s.tokens, np.memmap) and isinstance(s.flip, np.memmap) for s in ds._shards)
    assert not ds._shards[0].tokens.flags.writeable
    blob = pickle.dumps(ds)
    assert len(blob) < 20_000  # the token table (500 x 16 x 2 int32 = 64 kB) is not copied into workers
    clone = pickle.loads(blob)
    for i in (0, 299, 300, 499, 500, 999):
        assert torch.equal(clone[i]["indices"], ds[i]["indices"])


def test_missing_or_damaged_folder_is_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="folder not found") as err:
        CodesDataset(root=str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)
    _write_folder(tmp_path)
    # a truncated shard: the array has fewer rows than the manifest says
    name = shard_name(0, len(SHARD_SIZES))
    tokens = tmp_path / shard_files(name, has_flip=True)["tokens"]
    np.save(tokens, _rows(3, 0, False))
    with pytest.raises(ConfigError, match=tokens.name) as err:
        CodesDataset(root=str(tmp_path))
    assert "\n" not in str(err.value)
    tokens.unlink()
    with pytest.raises(ConfigError, match="missing"):
        CodesDataset(root=str(tmp_path))
    # not a codes manifest
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not a mergevq codes manifest"):
        read_manifest(tmp_path)


def test_manifest_counts_must_add_up(tmp_path):
    _write_folder(tmp_path)
    data = json.loads((tmp_path / MANIFEST_FILE).read_text())
    data["num_images"] += 1
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="num_images"):
        read_manifest(tmp_path)


def test_datamodule_batches(tmp_path):
    _write_folder(tmp_path, sizes=(7, 6))
    train = CodesDataset(root=str(tmp_path), augment_flip=True)  # 26 sequences
    val = CodesDataset(root=str(tmp_path))  # 13
    dm = CodesDataModule(train=train, validation=val, batch_size=4, seed=3)
    batches = list(dm.train_dataloader())
    assert len(batches) == 26 // 4  # drop_last: uniform shapes
    for b in batches:
        assert b["indices"].shape == (4, L) and b["indices"].dtype == torch.int64
        assert b["label"].shape == (4,) and b["label"].dtype == torch.int64
        assert b["num_keep"].shape == (4,) and b["num_keep"].dtype == torch.int64
        # every row is a stored sequence with its own label and K
        rows = b["indices"][:, 0].abs() // 1000 - 1
        assert torch.equal(b["label"], rows % 3)
    seen = torch.cat([b["indices"][:, 0] for b in batches])
    assert len(set(seen.tolist())) == len(seen) and (seen < 0).any()  # no repeats, flipped items included
    again = torch.cat([b["indices"][:, 0] for b in CodesDataModule(train=train, batch_size=4, seed=3).train_dataloader()])
    assert torch.equal(seen, again)  # the seed fixes the order
    other = torch.cat([b["indices"][:, 0] for b in CodesDataModule(train=train, batch_size=4, seed=4).train_dataloader()])
    assert not torch.equal(seen, other)
    # the order of epoch e depends only on (seed, e): a loader built fresh (a resumed run) and set to
    # epoch 2 gives what the uninterrupted loader gives in its third epoch
    loader = dm.train_dataloader()
    epochs = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)  # what Lightning does before every training epoch
        epochs.append(torch.cat([b["indices"][:, 0] for b in loader]))
    assert torch.equal(epochs[0], seen) and not torch.equal(epochs[1], epochs[0])
    resumed = CodesDataModule(train=train, batch_size=4, seed=3).train_dataloader()
    resumed.sampler.set_epoch(2)
    assert torch.equal(torch.cat([b["indices"][:, 0] for b in resumed]), epochs[2])
    val_rows = torch.cat([b["indices"][:, 0] for b in dm.val_dataloader()])
    assert val_rows.tolist() == [(i + 1) * 1000 for i in range(13)]  # in order, complete
    assert CodesDataModule(train=train, batch_size=4).val_dataloader() == []


def test_datamodule_with_worker(tmp_path):
    _write_folder(tmp_path, sizes=(6,))
    dm = CodesDataModule(train=CodesDataset(root=str(tmp_path)), batch_size=3, num_workers=1)
    rows = sorted(torch.cat([b["indices"][:, 0] for b in dm.train_dataloader()]).tolist())
    assert rows == [(i + 1) * 1000 for i in range(6)]


def test_datamodule_bad_arguments(tmp_path):
    _write_folder(tmp_path, sizes=(3,))
    ds = CodesDataset(root=str(tmp_path))
    with pytest.raises(ConfigError, match="batch_size"):
        CodesDataModule(train=ds, batch_size=0)
    with pytest.raises(ConfigError, match="exceeds"):
        CodesDataModule(train=ds, batch_size=4).train_dataloader()
