"""ADM-layout ``.npz`` files (OpenAI guided-diffusion's sample and reference batches), read and
written without holding them in memory.

Layout: a zip of ``.npy`` members. A sample batch holds ``arr_0`` (N, H, W, 3) uint8 and, for
class-conditional samples, ``arr_1`` (N,) int64 labels (what guided-diffusion's ``image_sample.py``
writes with ``np.savez(path, images, labels)``). A reference batch holds ``arr_0`` and/or the FID
statistics ``mu`` (2048,) and ``sigma`` (2048, 2048) of the Inception pool3 features.

Why not ``np.load``: it reads a whole member into memory (``mmap_mode`` is ignored for ``.npz``),
and 50,000 samples at 256 px are 9.8 GB, once per rank. :func:`read_member` memory-maps members
stored uncompressed (``np.savez``, and everything :func:`write_npz` writes); compressed members
(``np.savez_compressed``) are read whole. :func:`write_npz` streams each member from chunks into
a temporary file that is renamed into place, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergevq.errors import ConfigError
from mergevq.fileio import atomic_write

__all__ = ["NpzMember", "member_names", "read_member", "write_npz"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (fixed fields), name length, extra length
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} not found (expected an .npz file)") from None
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"{path} is not a readable .npz file ({err})") from None


def member_names(path: str | os.PathLike) -> tuple[str, ...]:
    """The array names in ``path`` (``arr_0``, ``mu``, ...), without the ``.npy`` suffix."""
    with _open_zip(Path(path)) as archive:
        return tuple(n.removesuffix(".npy") for n in archive.namelist() if n.endswith(".npy"))


def read_member(path: str | os.PathLike, name: str) -> np.ndarray:
    """Array ``name`` of the ``.npz`` at ``path``: a read-only memory map when the member is stored
    uncompressed, else the array read into memory. Object arrays are refused (no pickles)."""
    path = Path(path)
    with _open_zip(path) as archive:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            have = ", ".join(n.removesuffix(".npy") for n in archive.namelist()) or "nothing"
            raise ConfigError(f"{path} has no array {name!r} (it holds: {have})") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with archive.open(info) as handle:
                return _read_whole(handle, path, name)
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise ConfigError(f"{path}: member {name!r} has a corrupt zip header")
        handle.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
        version = np.lib.format.read_magic(handle)
        reader = _HEADER_READERS.get(version)
        if reader is None:  # a newer .npy header version: let numpy read it
            handle.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
            return _read_whole(handle, path, name)
        shape, fortran, dtype = reader(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise ConfigError(f"{path}: array {name!r} holds Python objects; expected numbers")
    if int(np.prod(shape)) == 0:
        return np.empty(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _read_whole(handle, path: Path, name: str) -> np.ndarray:
    try:
        return np.lib.format.read_array(handle, allow_pickle=False)
    except ValueError as err:
        raise ConfigError(f"{path}: array {name!r} cannot be read ({err})") from None


@dataclass(frozen=True)
class NpzMember:
    """One array to write: its ``name``, ``shape`` and ``dtype``, and ``chunks`` that concatenate
    along axis 0 to exactly that shape (C order)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: Iterable[np.ndarray]


def write_npz(path: str | os.PathLike, members: Iterable[NpzMember]) -> Path:
    """Write an uncompressed ``.npz`` (what ``np.savez`` writes, readable by ``np.load`` and
    memory-mappable by :func:`read_member`) streaming each member's chunks; atomic."""
    path = Path(path)
    with atomic_write(path) as handle, zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED,
                                                       allowZip64=True) as archive:
        for member in members:
            dtype = np.dtype(member.dtype)
            expected = int(np.prod(member.shape)) * dtype.itemsize
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                      "shape": tuple(member.shape)}
            written = 0
            # force_zip64: the size is unknown to zipfile while streaming and may pass 4 GiB
            with archive.open(f"{member.name}.npy", mode="w", force_zip64=True) as out:
                np.lib.format.write_array_header_1_0(out, header)
                for chunk in member.chunks:
                    data = np.ascontiguousarray(chunk, dtype=dtype)
                    out.write(memoryview(data).cast("B"))
                    written += data.nbytes
            if written != expected:
                raise ValueError(f"npz member {member.name!r}: chunks hold {written} bytes, "
                                 f"shape {member.shape} {dtype} needs {expected}")
    return path
