"""A progress bar on rank 0 for the long inference loops (evaluation, reconstruction, code extraction,
linear-probe features, sampling, gFID features).

One tqdm bar on stderr, written by the main process only: every other rank gets a disabled bar with
the same interface, so the loops call it unconditionally. Under torchrun the bar counts rank 0's share
of the work (ranks take equal shares and run in lockstep). Like Lightning's bar it is shown whether or
not stderr is a terminal; in a log file (a cluster job's stderr) it is redrawn at most every 30 s so the
log does not fill with updates. ``MERGEVQ_PROGRESS=0`` hides every bar (scripts that parse stderr, the
tests); ``MERGEVQ_PROGRESS=1`` draws the terminal bar even when stderr is not a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

from mergevq.errors import ConfigError

__all__ = ["ENV", "loader_items", "progress_bar", "track"]

T = TypeVar("T")

ENV = "MERGEVQ_PROGRESS"
_TERMINAL_INTERVAL_S = 0.1
_LOG_INTERVAL_S = 30.0  # a log file gets a line at most this often


def _mode() -> str:
    """"" (automatic), "0" (off) or "1" (terminal bar forced)."""
    value = os.environ.get(ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ConfigError(f"{ENV}={value!r}: expected 0 (no progress bars) or 1 (always draw them), or unset")
    return value


def progress_bar(*, total: int | None, desc: str, unit: str, is_main: bool, initial: int = 0,
                 file: TextIO | None = None) -> tqdm:
    """A tqdm bar of ``total`` ``unit`` s labelled ``desc``, starting at ``initial``; disabled (writes
    nothing) unless ``is_main``. ``file``: where to draw (default stderr). Use it as a context manager
    and call ``update(n)``."""
    mode = _mode()
    stream = sys.stderr if file is None else file
    terminal = mode == "1" or (hasattr(stream, "isatty") and stream.isatty())
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, disable=not is_main or mode == "0",
                mininterval=_TERMINAL_INTERVAL_S if terminal else _LOG_INTERVAL_S, dynamic_ncols=terminal,
                ascii=not terminal, leave=True)


def track(items: Iterable[T], bar: tqdm, *, count: Callable[[T], int]) -> Iterator[T]:
    """``items`` unchanged; after the caller is done with an item, ``bar`` advances by ``count(item)``.
    The bar is closed when the loop ends, breaks or raises."""
    with bar:
        for item in items:
            yield item
            bar.update(count(item))


def loader_items(batch: Mapping[str, Any]) -> int:
    """Images a ``collate_skip_none`` batch stands for: the readable ones plus the skipped ones."""
    image = batch.get("image")
    return int(batch["num_skipped"]) + (0 if image is None else int(image.shape[0]))
