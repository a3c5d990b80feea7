"""The side-by-side benchmark library (benchmarks/_authors.py) without the authors' code or any model.

No timing is asserted: these check the not-found path the scripts take without the authors'
checkout, the alternating order, the worker protocol and the small output helpers.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load_authors():
    spec = importlib.util.spec_from_file_location("_authors_under_test", BENCHMARKS / "_authors.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


authors_lib = _load_authors()


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    authors_lib.add_authors_arguments(parser)
    return parser.parse_args(argv)


def test_without_the_authors_code_says_why_and_returns_none(monkeypatch, capsys):
    monkeypatch.delenv(authors_lib.AUTHORS_CODE_ENV, raising=False)
    monkeypatch.delenv(authors_lib.AUTHORS_PYTHON_ENV, raising=False)
    assert authors_lib.find_authors_code(_parse([])) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith("authors' code not found (no --authors-code or $MERGEVQ_AUTHORS_CODE given)")
    assert out.rstrip().endswith(": measuring our side only")


def test_a_folder_without_their_model_or_a_missing_python_is_not_used(tmp_path, capsys):
    assert authors_lib.find_authors_code(_parse(["--authors-code", str(tmp_path)])) is None
    assert "has no taming/models/lfqgan_rep.py" in capsys.readouterr().out

    marker = tmp_path / "taming" / "models" / "lfqgan_rep.py"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    assert authors_lib.find_authors_code(_parse(["--authors-code", str(tmp_path)])) is None
    assert "no --authors-python or $MERGEVQ_AUTHORS_PYTHON given" in capsys.readouterr().out
    missing = tmp_path / "venv" / "bin" / "python"
    args = _parse(["--authors-code", str(tmp_path), "--authors-python", str(missing)])
    assert authors_lib.find_authors_code(args) is None
    assert f"{missing} is not an executable file" in capsys.readouterr().out


def test_the_environment_variables_are_the_defaults(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "taming" / "models" / "lfqgan_rep.py"
    marker.parent.mkdir(parents=True)
    marker.write_text("")
    monkeypatch.setenv(authors_lib.AUTHORS_CODE_ENV, str(tmp_path))
    monkeypatch.setenv(authors_lib.AUTHORS_PYTHON_ENV, sys.executable)
    found = authors_lib.find_authors_code(_parse([]))
    assert found == authors_lib.AuthorsCode(root=tmp_path.resolve(), python=Path(sys.executable).absolute())
    assert capsys.readouterr().out == ""


def test_alternate_flips_the_order_every_round():
    calls: list[str] = []

    def side(name: str):
        def run() -> dict:
            calls.append(name)
            return {"call": len(calls)}

        return run

    results = authors_lib.alternate({"a": side("a"), "b": side("b"), "c": side("c")}, rounds=3)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert [r["call"] for r in results["a"]] == [1, 6, 7]
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        authors_lib.alternate({"a": side("a")}, rounds=0)


def test_run_worker_returns_the_last_json_line_and_reports_failures(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys\n"
        "print('a log line')\n"
        "if sys.argv[1] == 'fail':\n"
        "    sys.exit('worker broke: ' + os.environ['PYTHONPATH'])\n"
        "print(json.dumps({'seconds': [0.5], 'peak_rss_mb': 1.0, 'path': os.environ['PYTHONPATH']}))\n"
    )
    out = authors_lib.run_worker(sys.executable, script, ["ok"], pythonpath=[tmp_path])
    assert out == {"seconds": [0.5], "peak_rss_mb": 1.0, "path": str(tmp_path)}
    with pytest.raises(RuntimeError, match=f"status 1; stderr tail:\nworker broke: {tmp_path}"):
        authors_lib.run_worker(sys.executable, script, ["fail"], pythonpath=[tmp_path])
    silent = tmp_path / "silent.py"
    silent.write_text("print('no json here')\n")
    with pytest.raises(RuntimeError, match="printed no JSON object last"):
        authors_lib.run_worker(sys.executable, silent, [], pythonpath=[])


def test_median_table_and_json(tmp_path, capsys):
    assert authors_lib.median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError, match="median of no values"):
        authors_lib.median([])
    authors_lib.print_table(["side", "ms"], [["ours", "1.0"], ["authors", "9.0"]])
    assert capsys.readouterr().out == "| side | ms |\n|---|---|\n| ours | 1.0 |\n| authors | 9.0 |\n"
    authors_lib.write_json(None, {"x": 1})
    target = tmp_path / "out" / "r.json"
    authors_lib.write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_the_authors_workers_do_not_import_our_package():
    """They run in the authors' virtual environment, where mergevq is not installed."""
    workers = BENCHMARKS / "workers"
    files = [*workers.glob("authors_*.py"), workers / "_measure.py", workers / "_authors_model.py"]
    assert len(files) >= 4
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] == "mergevq" for n in names), f"{path.name} imports {names}"
