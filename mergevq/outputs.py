"""Output folders and files that never mix two runs' results or silently replace somebody's work.

Every command that writes a folder (``reconstruct``, ``evaluate-tokenizer``, ``sample``,
``extract-codes``, ``export``, ``demo``) claims it first. A claimed folder holds a marker file,
:data:`MARKER` (``.mergevq-output.json``: the command, its settings, the name patterns of what it
writes). The rules:

* a missing or empty folder is claimed: the marker is written, the command starts fresh;
* a folder that holds this command's earlier output (its marker, and nothing but names matching the
  command's patterns) is
  - **resumed** when the command can resume and the settings are equal (``OutputDir.resumed``),
  - **replaced** when the command cannot resume, or with ``overwrite`` when the settings differ:
    only the entries the command wrote (its patterns) are removed;
  - **refused** when the command can resume, the settings differ and ``overwrite`` is not given;
* any other non-empty folder (another command's output, a file the command did not write, an output
  of an older mergevq without a marker, unless the command accepts those: ``accept_unmarked``) is
  **refused**: nothing in it is read, changed or removed. Stale temporary files of a killed write
  (``.<name>.<random>.tmp``) in a claimed folder are removed.

Files: :func:`check_output_file` refuses to replace an existing file unless it is a JSON this command
wrote (``"command"`` key), and refuses a folder where a file is expected.

Multi-process commands decide on every rank before anybody changes the folder, so every rank fails
alike (no rank waits forever at a barrier): ``plan = plan_output_dir(...)`` on every rank, a barrier,
``plan.apply()`` on the main rank, a barrier (:meth:`OutputPlan.apply_on_main`). :func:`claim_output_dir`
is both steps in one process.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergevq.errors import OutputError
from mergevq.fileio import atomic_write, is_temp_name

__all__ = ["MARKER", "OutputDir", "OutputPlan", "check_output_file", "claim_output_dir", "plan_output_dir",
           "same_settings"]

MARKER = ".mergevq-output.json"
_FORMAT = 1


def _normalise(settings: Mapping[str, Any]) -> Any:
    """The settings as JSON would store them (tuples -> lists, paths -> strings, sorted keys)."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def same_settings(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return _normalise(a) == _normalise(b)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _first_difference(old: Any, new: Any, prefix: str = "") -> str:
    """``key.path: OLD there, NEW now`` for the first setting that differs (keys sorted, lists by index)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key, "<unset>") != new.get(key, "<unset>"):
                return _first_difference(old.get(key, "<unset>"), new.get(key, "<unset>"),
                                         f"{prefix}.{key}" if prefix else str(key))
        return ""
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return f"{prefix or 'settings'}: {len(old)} entries there, {len(new)} now"
        for index, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{prefix}[{index}]")
        return ""
    return f"{prefix or 'settings'}: {_shown(old)} there, {_shown(new)} now"


@dataclass(frozen=True)
class OutputDir:
    """A claimed output folder. ``resumed``: it holds this command's unfinished or finished output
    made with the same settings, which the command continues; otherwise it starts fresh."""

    path: Path
    resumed: bool


@dataclass(frozen=True)
class OutputPlan:
    """What claiming a folder will do (decided without touching it); :meth:`apply` does it."""

    path: Path
    command: str
    settings: Mapping[str, Any]
    patterns: tuple[str, ...]
    resumed: bool
    remove: tuple[str, ...]  # top-level entries of an earlier output of this command to delete

    def apply(self) -> OutputDir:
        """Create the folder, remove what ``remove`` lists, write the marker (main rank only). A marker
        that already says the same is left alone, so re-running a finished command changes nothing."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in self.remove:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        record = {"command": self.command, "format": _FORMAT, "patterns": list(self.patterns),
                  "settings": _normalise(self.settings)}
        if _read_marker(self.path) != record:
            with atomic_write(self.path / MARKER, text=True) as handle:
                json.dump(record, handle, indent=1)
                handle.write("\n")
        return self.outcome()

    def apply_on_main(self, *, is_main: bool) -> OutputDir:
        """:meth:`apply` on the main rank between two barriers (every rank calls it, after every rank
        planned): no rank writes into the folder before the main rank has prepared it."""
        from mergevq.distributed import barrier

        barrier()
        if is_main:
            self.apply()
        barrier()
        return self.outcome()

    def outcome(self) -> OutputDir:
        """What :meth:`apply` returns, for the ranks that do not apply it."""
        return OutputDir(path=self.path, resumed=self.resumed)


def _read_marker(path: Path) -> dict[str, Any] | None:
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("command"), str) else None


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plan_output_dir(path: str | os.PathLike, *, command: str, settings: Mapping[str, Any],
                    patterns: Sequence[str], resumable: bool, overwrite: bool = False,
                    flag: str = "--out", accept_unmarked: bool = False) -> OutputPlan:
    """Decide how ``command`` may use the folder ``path`` (rules in the module docstring); raise a
    one-line :class:`OutputError` when it may not. Nothing on disk is changed.

    ``patterns``: glob patterns of the top-level names the command writes (``K[0-9]*``, ``png``,
    ``samples.npz``); ``flag``: how the user named the folder, for messages. ``accept_unmarked``:
    a folder without a marker whose entries all match ``patterns`` is taken as this command's
    output of unknown settings (resumed when ``resumable``): for a command that wrote such folders
    before markers existed and checks their content itself (extract-codes' manifest)."""
    folder = Path(path).expanduser()
    shown = f"{flag} {path}"
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{shown}: expected a folder, but it is a file")
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    plan = dict(path=folder, command=command, settings=dict(settings), patterns=tuple(patterns))
    # a write of the marker itself that was killed leaves only its temporary file: still empty
    if all(is_temp_name(e) and e.startswith(f"{MARKER}.") for e in entries):
        return OutputPlan(**plan, resumed=False, remove=tuple(entries))
    record = _read_marker(folder)
    if record is None and accept_unmarked and all(is_temp_name(e) or _matches(e, patterns) for e in entries):
        record = {"command": command, "patterns": list(patterns), "settings": _normalise(settings)}
    if record is None:
        example = ", ".join(repr(e) for e in entries[:3])
        raise OutputError(f"{shown} is not empty and holds no earlier output of mergevq {command} ({example}"
                          f"{', ...' if len(entries) > 3 else ''}); choose a new or empty folder")
    if record["command"] != command:
        raise OutputError(f"{shown} holds the output of mergevq {record['command']}, not of mergevq {command}; "
                          "choose a new or empty folder")
    own = (*patterns, *(p for p in record.get("patterns", []) if isinstance(p, str)))
    foreign = [e for e in entries if e != MARKER and not is_temp_name(e) and not _matches(e, own)]
    if foreign:
        raise OutputError(f"{shown} holds {foreign[0]!r}, which mergevq {command} did not write; "
                          "choose a new or empty folder, or move that entry out")
    mine = tuple(e for e in entries if e != MARKER)
    same = _normalise(settings) == record.get("settings")
    if resumable and same:
        return OutputPlan(**plan, resumed=True, remove=tuple(e for e in mine if is_temp_name(e)))
    if resumable and not overwrite:
        difference = _first_difference(record.get("settings"), _normalise(settings))
        raise OutputError(f"{shown} holds mergevq {command} output made with other settings ({difference}); "
                          f"pass --overwrite to replace it, or choose another folder")
    return OutputPlan(**plan, resumed=False, remove=mine)


def claim_output_dir(path: str | os.PathLike, *, command: str, settings: Mapping[str, Any],
                     patterns: Sequence[str], resumable: bool, overwrite: bool = False,
                     flag: str = "--out", accept_unmarked: bool = False) -> OutputDir:
    """:func:`plan_output_dir` then :meth:`OutputPlan.apply`, for a single process."""
    return plan_output_dir(path, command=command, settings=settings, patterns=patterns, resumable=resumable,
                           overwrite=overwrite, flag=flag, accept_unmarked=accept_unmarked).apply()


def check_output_file(path: str | os.PathLike, *, command: str, flag: str = "--out") -> Path:
    """``path`` may be written by ``command``: it does not exist, or it is a JSON file whose
    ``"command"`` is ``command`` (an earlier result of the same command, replaced). A folder, or a
    file somebody else wrote, is a one-line :class:`OutputError`. The writer must store
    ``"command": command`` in the JSON."""
    file = Path(path).expanduser()
    if file.is_dir():
        raise OutputError(f"{flag} {path}: expected a file name, but it is a folder")
    if file.exists():
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict) or record.get("command") != command:
            raise OutputError(f"{flag} {path} exists and was not written by mergevq {command}; "
                              "choose another file name or move it away")
    return file
