"""Side-by-side benchmarks against the authors' MergeVQ code (shared by ``benchmarks/vs_authors_*.py``).

The authors' checkout is used only at run time, from its own folder and its own virtual environment
(``../shared/notes/OFFICIAL_CODE.md`` says how to install it); nothing of it is copied here. Each
measurement runs in a fresh process (a *worker* under ``benchmarks/workers/``): ``authors_*.py``
workers run with the authors' python and only their checkout on ``PYTHONPATH``; ``ours_*.py`` workers
run with this interpreter and this checkout. A worker prints one JSON object on its last stdout line,
at least ``{"seconds": [...], "peak_rss_mb": float, "memory_method": str}``.

The two sides alternate (``alternate``): round r runs every side once, in the given order on even
rounds and reversed on odd ones, so slow drifts of a shared machine hit both sides alike; the
scripts report medians over the rounds.

Without the authors' code (no folder or python given, or one that is not usable)
``find_authors_code`` prints one line saying why and the scripts measure our side only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

AUTHORS_CODE_ENV = "MERGEVQ_AUTHORS_CODE"  # folder of the authors' checkout
AUTHORS_PYTHON_ENV = "MERGEVQ_AUTHORS_PYTHON"  # python of a venv that imports it

REPO_ROOT = Path(__file__).resolve().parent.parent  # put on PYTHONPATH for our workers
WORKERS_DIR = Path(__file__).resolve().parent / "workers"

# A file every usable checkout has (the tokenizer model); its absence means a wrong folder.
_MARKER = Path("taming") / "models" / "lfqgan_rep.py"
_STDERR_TAIL = 3000  # characters of a failed worker's stderr put into the error


@dataclass(frozen=True)
class AuthorsCode:
    root: Path  # the checkout (goes on the worker's PYTHONPATH)
    python: Path  # an interpreter whose environment imports it


def add_comparison_arguments(parser: argparse.ArgumentParser, *, rounds: int, reps: int, unit: str,
                             warmup: int | None = 1) -> None:
    """What every side-by-side script takes: where the authors' code is (:func:`add_authors_arguments`),
    ``--rounds``, ``--reps`` (timed ``unit`` per round and side), ``--warmup`` (untimed ones before
    them; None: the script has none), ``--threads`` and ``--json``."""
    add_authors_arguments(parser)
    parser.add_argument("--rounds", type=int, default=rounds, help="alternating rounds (each side once per round)")
    parser.add_argument("--reps", type=int, default=reps, help=f"timed {unit} per round and side")
    if warmup is not None:
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed {unit} before them")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each worker")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def add_authors_arguments(parser: argparse.ArgumentParser) -> None:
    """``--authors-code DIR`` and ``--authors-python PATH``, defaulting to the environment variables."""
    parser.add_argument(
        "--authors-code",
        default=os.environ.get(AUTHORS_CODE_ENV),
        metavar="DIR",
        help=f"the authors' MergeVQ checkout (default: ${AUTHORS_CODE_ENV})",
    )
    parser.add_argument(
        "--authors-python",
        default=os.environ.get(AUTHORS_PYTHON_ENV),
        metavar="PATH",
        help=f"python of a venv that imports it (default: ${AUTHORS_PYTHON_ENV})",
    )


def _not_found(why: str) -> None:
    print(f"authors' code not found ({why}): measuring our side only", flush=True)


def find_authors_code(args: argparse.Namespace) -> AuthorsCode | None:
    """The authors' checkout and python from ``args``, or None (after one line saying why)."""
    folder = getattr(args, "authors_code", None)
    python = getattr(args, "authors_python", None)
    if not folder:
        _not_found(f"no --authors-code or ${AUTHORS_CODE_ENV} given")
        return None
    root = Path(folder).expanduser().resolve()
    if not (root / _MARKER).is_file():
        _not_found(f"{root} has no {_MARKER.as_posix()}")
        return None
    if not python:
        _not_found(f"no --authors-python or ${AUTHORS_PYTHON_ENV} given")
        return None
    # keep a venv's python as given: resolving the symlink would lose the venv's site-packages
    interpreter = Path(python).expanduser().absolute()
    if not (interpreter.is_file() and os.access(interpreter, os.X_OK)):
        _not_found(f"{interpreter} is not an executable file")
        return None
    return AuthorsCode(root=root, python=interpreter)


def run_worker(
    python: str | Path, script: Path, args: list[str], *, pythonpath: list[Path], timeout: float = 1800
) -> dict:
    """Run ``python script *args`` in a fresh process; return the JSON object on its last stdout line.

    ``PYTHONPATH`` is exactly ``pythonpath`` (not inherited: our checkout and the authors' both have a
    ``taming`` package, and each side must see only its own). Every other variable is inherited, so
    ``OMP_NUM_THREADS`` is the caller's; hub access is switched off. A non-zero exit, a timeout or a
    last line that is not a JSON object raises RuntimeError with the tail of stderr.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    cmd = [str(python), str(script), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-_STDERR_TAIL:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        raise RuntimeError(f"worker {script.name} ran past {timeout:g} s; stderr tail:\n{tail}") from None
    tail = proc.stderr[-_STDERR_TAIL:]
    if proc.returncode != 0:
        raise RuntimeError(f"worker {script.name} exited with status {proc.returncode}; stderr tail:\n{tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if not isinstance(result, dict):
        last = lines[-1][:200] if lines else "<no output>"
        raise RuntimeError(f"worker {script.name} printed no JSON object last (got {last!r}); stderr tail:\n{tail}")
    return result


def alternate(sides: dict[str, Callable[[], dict]], *, rounds: int) -> dict[str, list[dict]]:
    """Call every side once per round: in the given order on even rounds, reversed on odd ones."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = list(sides)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(sides[name]())
    return results


def median(values: Sequence[float]) -> float:
    if len(values) == 0:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A markdown table on stdout."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row has {len(row)} cells, headers have {len(headers)}: {row}")
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


def write_json(path: Path | None, data: dict) -> None:
    """Write ``data`` to ``path`` (a temporary file renamed over it); nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def available_memory_gb() -> float | None:
    """``MemAvailable`` from /proc/meminfo in GiB (None where that file does not exist)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        return None
    return None


def wait_for_memory(gb: float, *, timeout: float, poll: float = 15.0) -> bool:
    """Wait until at least ``gb`` GiB are available (True) or ``timeout`` seconds passed (False).

    For workers that need many GB (the authors' dense LFQ): running one while another process holds
    most of the memory would swap or be killed, and would time the other process's pressure too.
    """
    deadline = time.monotonic() + timeout
    while True:
        free = available_memory_gb()
        if free is None or free >= gb:
            return True
        if time.monotonic() >= deadline:
            return False
        print(f"waiting for {gb:g} GiB of free memory ({free:.1f} GiB available)", flush=True)
        time.sleep(poll)
