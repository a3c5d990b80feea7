"""Where a training run writes, and the rules that keep a run folder from losing work.

``mergevq train`` into a folder whose ``checkpoints/`` holds checkpoints must say what it wants:

* ``--resume auto`` continues the newest complete checkpoint there (what a requeued job does; the
  launch scripts pass it); with no checkpoint yet it starts fresh;
* ``--resume PATH`` continues from PATH; into a folder that holds checkpoints only when PATH is its
  newest one (an older one would have the run write a second history next to the first);
* ``--overwrite`` starts afresh after **moving the old run folder aside** to
  ``<run_dir>.replaced-<YYYYmmdd-HHMMSS>`` (a rename: nothing is deleted; remove it yourself);
* anything else is a one-line error that names both options.

At start the main process also removes the temporary files of checkpoint or config writes that a
killed process left (``.<name>.<random>.tmp``; a finished or failed write never leaves one).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mergevq.errors import ConfigError
from mergevq.fileio import remove_stale_temps

__all__ = ["RunDirPlan", "global_rank_from_env", "prepare_run_dir"]

log = logging.getLogger(__name__)


def global_rank_from_env() -> int:
    """This process's global rank before any process group exists: torchrun's ``RANK``, SLURM's
    ``SLURM_PROCID`` (srun starts one task per process), else 0. Lightning's own ``ddp`` launcher
    starts the other ranks later, from inside ``fit``, after the main rank prepared the folder."""
    for name in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


@dataclass(frozen=True)
class RunDirPlan:
    """What :func:`prepare_run_dir` decided. ``resume``: the checkpoint to continue (None: fresh);
    ``moved_to``: where ``--overwrite`` moved the old run (None: nothing moved);
    ``removed_temps``: stale temporary files deleted."""

    run_dir: Path
    resume: Path | None
    moved_to: Path | None
    removed_temps: tuple[Path, ...]


def _aside_name(run_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
    counter = 1
    while candidate.exists():
        candidate = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}-{counter}")
        counter += 1
    return candidate


def prepare_run_dir(run_dir: str | os.PathLike, *, resume: str | os.PathLike | None, overwrite: bool,
                    is_main: bool) -> RunDirPlan:
    """Apply the rules of the module docstring to ``run_dir``; only the main process changes the
    disk (every process reaches the same decision from the same folder)."""
    from mergevq.training.checkpoint import CHECKPOINT_DIR, list_checkpoints, resolve_resume

    directory = Path(run_dir)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: expected a folder, but it is a file")
    if overwrite and resume is not None and str(resume) == "auto":
        raise ConfigError("--overwrite starts afresh and --resume auto continues: give one of them")
    removed: list[Path] = []
    if is_main:
        for folder in (directory, directory / CHECKPOINT_DIR):
            removed += remove_stale_temps(folder)
        for path in removed:
            log.warning("removed %s, left by a write that was killed mid-way", path)
    existing = list_checkpoints(directory / CHECKPOINT_DIR)
    moved_to = None
    if existing and overwrite:
        given = Path(resume).expanduser().resolve() if resume is not None else None
        if given is not None and directory.resolve() in given.parents:
            raise ConfigError(f"--resume {resume} lies inside {directory}, which --overwrite moves aside; "
                              "copy the checkpoint elsewhere first")
        moved_to = _aside_name(directory)
        if is_main:
            directory.rename(moved_to)
            log.warning("--overwrite: moved the old run %s to %s", directory, moved_to)
    elif existing and resume is None:
        raise ConfigError(
            f"{directory} already holds checkpoints of a run (newest: {existing[-1].name}); pass --resume auto "
            f"to continue it, or --overwrite to start afresh (the old run folder is then renamed to "
            f"{directory.name}.replaced-<time>, nothing is deleted)")
    found = resolve_resume(resume, directory)
    if found is not None and existing and moved_to is None and str(resume) != "auto":
        newest = existing[-1].resolve()
        if found.resolve() != newest:
            raise ConfigError(
                f"--resume {resume}: {directory} holds newer checkpoints ({existing[-1].name}); continuing an "
                f"older or another run's checkpoint there would mix two histories; use a new --run-dir, "
                f"--overwrite, or move the newer checkpoints away")
    return RunDirPlan(run_dir=directory, resume=found, moved_to=moved_to, removed_temps=tuple(removed))
