"""What an unfinished ``mergevq sample`` run has done, on disk, so that a killed run (SIGKILL
included) resumes where it stopped, with any number of processes.

Layout (``OUT/.parts/``)::

    layout.json               N, image shape, slot size, whether pixels are kept (for the npz)
    images.u8                 N slots: sample i's (H, W, 3) uint8 pixels start at byte i * slot
    done-<rank>-<run>.bin     int64 records (index, peak cache entries, unique tokens, cache
                              capacity, check), appended by one process of one run

A sample is done once its record is on disk; a process appends it only after the sample's pixels
(synced) and PNG are stored, so a kill at any point loses at most the samples in flight. A record
cut short or garbled by a kill fails its check and is ignored (that sample is generated again).

Several processes, possibly on several nodes of a shared disk, write at once: slots are padded to
a multiple of 64 KiB (the largest common page size), so no two processes ever write the same page
of ``images.u8``, and each process appends to its own record file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergevq.fileio import atomic_write, remove_stale_temps

__all__ = ["SampleStats", "SampleStore", "SampleWriter"]

_LAYOUT = "layout.json"
_IMAGES = "images.u8"
_SLOT_ALIGN = 1 << 16
_FIELDS = 5  # index, peak cache entries, unique tokens, cache capacity, check
_CHECK = np.int64(0x6D65726765767131)  # mixed into the check word: an all-zero record is not valid


def _check_words(rows: np.ndarray) -> np.ndarray:
    return np.bitwise_xor.reduce(rows[:, :4], axis=1) ^ _CHECK


@dataclass(frozen=True)
class SampleStats:
    """Per sample (N,): ``done`` (bool) and, where done, its statistics (int64)."""

    done: np.ndarray
    peak_cache_entries: np.ndarray
    unique_tokens: np.ndarray
    cache_capacity: np.ndarray

    @property
    def num_done(self) -> int:
        return int(self.done.sum())


class SampleStore:
    """The ``.parts`` folder ``root`` of a run of ``num_samples`` images of ``image_shape`` (H, W, 3);
    ``keep_pixels``: store the pixels (needed for the npz) or only the records (PNG-only runs)."""

    def __init__(self, *, root: Path, num_samples: int, image_shape: tuple[int, int, int], keep_pixels: bool) -> None:
        if num_samples < 1:
            raise ValueError(f"a sample store needs at least one sample, got {num_samples}")
        self.root = Path(root)
        self.num_samples = num_samples
        self.image_shape = tuple(image_shape)
        self.keep_pixels = keep_pixels
        self.image_bytes = int(np.prod(self.image_shape))
        self.slot_bytes = -(-self.image_bytes // _SLOT_ALIGN) * _SLOT_ALIGN

    def _layout(self) -> dict:
        return {"num_samples": self.num_samples, "image_shape": list(self.image_shape),
                "slot_bytes": self.slot_bytes, "keep_pixels": self.keep_pixels}

    def _valid(self) -> bool:
        try:
            layout = json.loads((self.root / _LAYOUT).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return False
        if layout != self._layout():
            return False
        return not self.keep_pixels or (self.root / _IMAGES).stat().st_size == self.num_samples * self.slot_bytes

    def prepare(self) -> bool:
        """Main process, before any other opens the store: keep a valid store of an earlier run of
        this layout (True) or start an empty one (False). Stale temporary files are removed."""
        if self.root.is_dir() and self._valid():
            remove_stale_temps(self.root)
            return True
        if self.root.is_dir() and not self.root.is_symlink():
            shutil.rmtree(self.root)
        elif self.root.exists() or self.root.is_symlink():
            self.root.unlink()
        self.root.mkdir(parents=True)
        if self.keep_pixels:
            with open(self.root / _IMAGES, "wb") as handle:
                handle.truncate(self.num_samples * self.slot_bytes)  # sparse: no disk used until written
        with atomic_write(self.root / _LAYOUT, text=True) as handle:  # last: the store is complete
            json.dump(self._layout(), handle)
        return False

    def read(self) -> SampleStats:
        """Which samples are done, from every process's records (valid ones only)."""
        n = self.num_samples
        done = np.zeros(n, dtype=bool)
        stats = np.zeros((3, n), dtype=np.int64)
        for path in sorted(self.root.glob("done-*.bin")):
            data = np.fromfile(path, dtype=np.int64)
            rows = data[: len(data) // _FIELDS * _FIELDS].reshape(-1, _FIELDS)
            rows = rows[(_check_words(rows) == rows[:, 4]) & (rows[:, 0] >= 0) & (rows[:, 0] < n)]
            done[rows[:, 0]] = True
            stats[:, rows[:, 0]] = rows[:, 1:4].T
        return SampleStats(done=done, peak_cache_entries=stats[0], unique_tokens=stats[1], cache_capacity=stats[2])

    def pixels(self) -> np.ndarray:
        """(N, H, W, 3) uint8, a read-only view of every slot (call after every process finished)."""
        slots = np.memmap(self.root / _IMAGES, dtype=np.uint8, mode="r", shape=(self.num_samples, self.slot_bytes))
        return slots[:, : self.image_bytes].reshape(self.num_samples, *self.image_shape)

    def writer(self, *, rank: int) -> SampleWriter:
        return SampleWriter(store=self, rank=rank)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class SampleWriter:
    """One process's writes into a prepared :class:`SampleStore`: :meth:`put_pixels` for a batch,
    then (after its PNGs) :meth:`mark_done`. A context manager."""

    def __init__(self, *, store: SampleStore, rank: int) -> None:
        self.store = store
        self._pixels = os.open(store.root / _IMAGES, os.O_RDWR) if store.keep_pixels else None
        # a new file per process and run: nobody else ever appends to it
        self._records = open(store.root / f"done-{rank:05d}-{secrets.token_hex(6)}.bin", "ab")  # noqa: SIM115

    def put_pixels(self, indices: np.ndarray, pixels: np.ndarray) -> None:
        """Store ``pixels`` (B, H, W, 3) uint8 of samples ``indices`` (B,) (no-op without kept pixels)."""
        if self._pixels is None:
            return
        for index, image in zip(indices.tolist(), pixels, strict=True):
            os.pwrite(self._pixels, np.ascontiguousarray(image).data, index * self.store.slot_bytes)

    def mark_done(self, indices: np.ndarray, *, peak_cache_entries: np.ndarray, unique_tokens: np.ndarray,
                  cache_capacity: int) -> None:
        """Record samples ``indices`` as done, with their statistics: only after their pixels are
        synced to disk, so a record never outlives the pixels it stands for."""
        if self._pixels is not None:
            os.fdatasync(self._pixels)
        rows = np.zeros((len(indices), _FIELDS), dtype=np.int64)
        rows[:, 0] = indices
        rows[:, 1] = peak_cache_entries
        rows[:, 2] = unique_tokens
        rows[:, 3] = cache_capacity
        rows[:, 4] = _check_words(rows)
        self._records.write(rows.tobytes())
        self._records.flush()  # into the OS: survives a kill of this process

    def close(self) -> None:
        if self._pixels is not None:
            os.close(self._pixels)
            self._pixels = None
        self._records.close()

    def __enter__(self) -> SampleWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
