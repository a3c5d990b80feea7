"""mergevq.outputs (issue 11 item 2): a command writes into a new or empty folder or into its own
earlier output (resumed with equal settings, replaced otherwise or when it cannot resume, refused
when it could resume but the settings differ, unless overwrite); anything else is refused in one
line and left untouched. Single JSON outputs are replaced only when the same command wrote them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergevq.errors import OutputError
from mergevq.outputs import MARKER, check_output_file, claim_output_dir, plan_output_dir

PATTERNS = ("result.json", "K[0-9]*")


def _claim(folder: Path, *, settings=None, resumable: bool = True, overwrite: bool = False, command: str = "cmd",
           patterns=PATTERNS, accept_unmarked: bool = False):
    return claim_output_dir(folder, command=command, settings={"seed": 1} if settings is None else settings,
                            patterns=patterns, resumable=resumable, overwrite=overwrite,
                            accept_unmarked=accept_unmarked)


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes | None]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _write_output(folder: Path) -> None:
    (folder / "K16").mkdir(parents=True)
    (folder / "K16" / "a.png").write_bytes(b"png")
    (folder / "result.json").write_text("{}")


def _refused(folder: Path, match: str, **kwargs) -> str:
    before = _snapshot(folder) if folder.exists() else None
    with pytest.raises(OutputError, match=match) as err:
        _claim(folder, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    assert (_snapshot(folder) if folder.exists() else None) == before  # a refusal touches nothing
    return message


def test_missing_and_empty_folders_are_claimed_fresh(tmp_path):
    for folder in (tmp_path / "new" / "deep", tmp_path / "empty"):
        if folder.name == "empty":
            folder.mkdir()
        claimed = _claim(folder)
        assert not claimed.resumed and folder.is_dir()
        marker = json.loads((folder / MARKER).read_text())
        assert marker["command"] == "cmd" and marker["settings"] == {"seed": 1}
        assert marker["patterns"] == list(PATTERNS)


def test_own_output_is_resumed_with_equal_settings_and_untouched(tmp_path):
    _claim(tmp_path)
    _write_output(tmp_path)
    (tmp_path / ".result.json.abcdef12.tmp").write_text("half")  # a write killed half-way
    (tmp_path / "K16" / ".b.png.abcdef12.tmp").write_text("half")  # below the top level: the command's business
    before = _snapshot(tmp_path)
    claimed = _claim(tmp_path, settings={"seed": 1})
    assert claimed.resumed
    after = _snapshot(tmp_path)
    assert set(before) - set(after) == {".result.json.abcdef12.tmp"}  # only the stale temporary file went
    assert all(after[name] == before[name] for name in after)  # the marker was not even rewritten


def test_own_output_of_a_command_that_cannot_resume_is_replaced(tmp_path):
    _claim(tmp_path, resumable=False)
    _write_output(tmp_path)
    claimed = _claim(tmp_path, resumable=False, settings={"seed": 2})
    assert not claimed.resumed
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER]
    assert json.loads((tmp_path / MARKER).read_text())["settings"] == {"seed": 2}


def test_other_settings_are_refused_naming_the_first_difference_unless_overwrite(tmp_path):
    settings = {"seed": 1, "labels": [{"class": 3, "count": 2}, {"class": 5, "count": 2}], "model": "a" * 64}
    _claim(tmp_path, settings=settings)
    _write_output(tmp_path)
    message = _refused(tmp_path, r"seed: 1 there, 2 now", settings={**settings, "seed": 2})
    assert "--overwrite" in message
    _refused(tmp_path, r"labels\[1\]\.class: 5 there, 4 now",
             settings={**settings, "labels": [{"class": 3, "count": 2}, {"class": 4, "count": 2}]})
    _refused(tmp_path, "labels: 2 entries there, 1 now", settings={**settings, "labels": [{"class": 3, "count": 2}]})
    long = _refused(tmp_path, "model: ", settings={**settings, "model": "b" * 64})
    assert "a" * 64 not in long  # long values are shortened
    claimed = _claim(tmp_path, settings={**settings, "seed": 2}, overwrite=True)
    assert not claimed.resumed and sorted(p.name for p in tmp_path.iterdir()) == [MARKER]


def test_foreign_folders_are_refused_and_left_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    message = _refused(mine, "not empty and holds no earlier output of mergevq cmd", overwrite=True)
    assert "'notes.txt'" in message
    # an own output with an entry the command does not write
    own = tmp_path / "own"
    _claim(own)
    _write_output(own)
    (own / "diary.txt").write_text("keep")
    _refused(own, "holds 'diary.txt', which mergevq cmd did not write", overwrite=True)
    # another command's output
    other = tmp_path / "other"
    _claim(other, command="sample")
    _write_output(other)
    _refused(other, "holds the output of mergevq sample, not of mergevq cmd", overwrite=True)
    # a foreign folder holding only somebody's temporary file is not "empty" either
    temps = tmp_path / "temps"
    temps.mkdir()
    (temps / ".x.abcdef12.tmp").write_text("theirs")
    _refused(temps, "holds no earlier output")


def test_a_file_where_a_folder_is_expected(tmp_path):
    (tmp_path / "out").write_text("a file")
    message = _refused(tmp_path / "out", "expected a folder, but it is a file")
    assert message.startswith(f"--out {tmp_path / 'out'}")


def test_a_killed_marker_write_leaves_a_claimable_folder(tmp_path):
    (tmp_path / f"{MARKER}.abcdef12.tmp").write_text("{")
    claimed = _claim(tmp_path)
    assert not claimed.resumed and sorted(p.name for p in tmp_path.iterdir()) == [MARKER]


def test_unmarked_output_is_accepted_only_when_asked_and_only_own_names(tmp_path):
    _write_output(tmp_path)  # what an older version wrote, without a marker
    _refused(tmp_path, "holds no earlier output")
    claimed = _claim(tmp_path, accept_unmarked=True)
    assert claimed.resumed and (tmp_path / MARKER).is_file() and (tmp_path / "K16" / "a.png").is_file()
    mixed = tmp_path / "mixed"
    _write_output(mixed)
    (mixed / "diary.txt").write_text("keep")
    _refused(mixed, "holds no earlier output", accept_unmarked=True)


def test_plan_changes_nothing_until_applied(tmp_path):
    _claim(tmp_path, resumable=False)
    _write_output(tmp_path)
    before = _snapshot(tmp_path)
    plan = plan_output_dir(tmp_path, command="cmd", settings={}, patterns=PATTERNS, resumable=False)
    assert _snapshot(tmp_path) == before and set(plan.remove) == {"K16", "result.json"}
    assert plan.apply_on_main(is_main=False) == plan.outcome()  # single process: no barrier to wait for
    assert _snapshot(tmp_path) == before  # not the main rank: nothing done
    plan.apply_on_main(is_main=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER]


def test_check_output_file(tmp_path):
    new = tmp_path / "sub" / "metrics.json"
    assert check_output_file(new, command="evaluate-generation") == new  # may not exist, nor its folder
    new.parent.mkdir()
    new.write_text(json.dumps({"command": "evaluate-generation", "fid": 1.0}))
    assert check_output_file(new, command="evaluate-generation") == new  # an earlier result: replaceable
    for content, command in ((json.dumps({"command": "linear-probe"}), "evaluate-generation"),
                             (json.dumps({"fid": 1.0}), "evaluate-generation"),
                             ("not json", "linear-probe"), (json.dumps([1, 2]), "linear-probe")):
        new.write_text(content)
        with pytest.raises(OutputError, match="was not written by mergevq") as err:
            check_output_file(new, command=command)
        assert "\n" not in str(err.value) and new.read_text() == content
    with pytest.raises(OutputError, match="expected a file name, but it is a folder"):
        check_output_file(tmp_path, command="linear-probe")
