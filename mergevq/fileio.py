"""Atomic file writes (a reader, or a resumed run, never sees a half-written file), strict safetensors
loading and weights-only ``torch.load`` with one-line errors."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from mergevq.errors import MergeVQError


_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{6,}\.tmp$")


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is the temporary file of an :func:`atomic_write` (``.<target>.<random>.tmp``):
    one that a killed process left behind, since a finished or failed write removes it."""
    return bool(_TEMP_NAME.match(name))


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the :func:`atomic_write` temporary files directly in ``folder`` (left by a process that
    was killed mid-write; call it before anything writes there). Returns what was removed."""
    directory = Path(folder)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if is_temp_name(entry.name) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
            removed.append(entry)
    return sorted(removed)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, text: bool = False) -> Iterator[IO]:
    """Yield a handle on a temporary file next to ``path``; on a clean exit it is flushed, fsynced,
    made world-readable (0644) and renamed onto ``path``. On an exception it is removed and
    ``path`` is left as it was. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs and caches are meant to be shared
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load_weights_strict(module, weights_path: Path, *, config_path: Path, map_location: str = "cpu") -> None:
    """Load the safetensors file ``weights_path`` into ``module`` (built from ``config_path``): every
    key present, no extra key, every shape right. Any failure is one ``WeightsError`` line naming both
    files, so a corrupt or mismatched export never loads half-way."""
    from safetensors.torch import load_file

    from mergevq.errors import WeightsError

    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for corrupt files
        raise WeightsError(f"cannot read {weights_path}: {err}") from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = str(err).strip().splitlines()[-1].strip()
        raise WeightsError(f"{weights_path} does not match {config_path}: {first}") from None
    if missing or unexpected:
        raise WeightsError(f"{weights_path} does not match {config_path}: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_TORCH_INTERNAL = re.compile(r"^\s*\[enforce fail at [^\]]*\]\s*\.?\s*")


def _torch_load_reason(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in a few words (its own messages run to many lines)."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError):
        refused = _REFUSED_GLOBAL.search(text)
        if refused is None:
            return "not a pickle that weights-only loading reads"
        return (f"it holds a pickled {refused.group(1)}, which weights-only loading refuses: only tensors, "
                "containers and plain values are read")
    if isinstance(exc, EOFError):
        return "the file is empty or ends early"
    text = _TORCH_INTERNAL.sub("", text)  # "[enforce fail at inline_container.cc:180] . " says nothing to a user
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0].split(". ")[0][:200] if lines else ""
    if isinstance(exc, (OSError, RuntimeError)) and first:
        return first
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def torch_load(path: str | os.PathLike, *, what: str, error: type[MergeVQError],
               safe_globals: Sequence[Any] = (), hint: str = "", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: no arbitrary pickles, only tensors, containers, plain
    values and ``safe_globals``. A missing, corrupt, foreign or refused file is one ``error`` line:
    ``<path> is not a readable <what> (<why>)[; <hint>]`` (``error``: a ``MergeVQError`` subclass)."""
    import torch

    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises anything from pickle errors to KeyError on foreign bytes
        raise error(f"{path} is not a readable {what} ({_torch_load_reason(exc)}){f'; {hint}' if hint else ''}") from None
