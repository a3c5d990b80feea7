"""Measurement helpers for benchmark workers (standard library only: the authors' workers import it
from their own virtual environment too).

A worker measures ``--reps`` timed iterations after ``--warmup`` untimed ones in one process and prints
one JSON line (``emit``).

Peak memory is the growth of the process's resident set during one step that starts from a trimmed
heap: ``malloc_trim(0)`` hands freed heap memory back to the system, the peak RSS (``VmHWM``) is reset
through ``/proc/self/clear_refs``, and the figure is the peak RSS after the step minus the RSS before
it. It counts every allocation torch makes, plus allocator and thread-pool overheads, and it does not
depend on how much freed memory earlier steps left cached in the heap (without the trim the same step
reads anywhere from 18 to 43 MB for our LFQ). With warm-up that step is an extra, untimed one after the
timed steps (the trim would otherwise put page faults into a timed step), or the median of a few such
steps (the figure still varies by about +-15 % from step to step); without warm-up (the
authors' dense LFQ: one step of tens of seconds) the timed steps are measured, the first of them from
the trimmed heap. Where the reset is not available it falls back to ``ru_maxrss`` after minus before;
``memory_method`` in the output says which ran.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> bool:
    """Give freed heap memory back to the system (glibc ``malloc_trim``); False where there is none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def worker_parser(description: str) -> argparse.ArgumentParser:
    """The options every worker takes: ``--reps``, ``--warmup``, ``--threads``, ``--seed``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--reps", type=int, default=3, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations before them")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser


class PeakMemory:
    """``start()`` right before the measured step(s), ``peak_mb()`` right after."""

    def __init__(self) -> None:
        self.base = 0
        self.method = ""

    def start(self) -> None:
        trimmed = _trim_heap()
        if _reset_peak_rss():
            self.base = _rss_bytes()
            self.method = "peak RSS (VmHWM, reset) - RSS before, one step"
        else:
            self.base = _peak_rss_bytes()
            self.method = "ru_maxrss after - ru_maxrss before, one step"
        self.method += " from a trimmed heap" if trimmed else " (heap not trimmed: no malloc_trim)"

    def peak_mb(self) -> float:
        return (_peak_rss_bytes() - self.base) / 2**20


def time_reps(
    step: Callable[[], object], *, reps: int, warmup: int, memory_steps: int = 1
) -> tuple[list[float], float, str]:
    """Run ``step`` ``warmup`` times, then ``reps`` timed times: (seconds per rep, peak MB, memory method).

    With ``warmup > 0`` the memory figure is the median over ``memory_steps`` more, untimed steps,
    each from a trimmed heap; without warm-up it comes from the timed steps (see the module docstring).
    """
    for _ in range(warmup):
        step()
    memory = PeakMemory()
    if warmup == 0:
        memory.start()
    seconds = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - t0)
    if warmup == 0:
        return seconds, memory.peak_mb(), memory.method + " (the timed steps)"
    peaks = []
    for _ in range(max(memory_steps, 1)):
        memory.start()
        step()
        peaks.append(memory.peak_mb())
    return seconds, statistics.median(peaks), memory.method + f" (median of {len(peaks)} extra untimed steps)"


def emit(result: dict) -> None:
    """The worker's result: one JSON line, the last on stdout."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
