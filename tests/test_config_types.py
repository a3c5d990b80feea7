"""Wrong-typed config values (issue 11 item 6): checked against the constructors' annotations while the
whole tree is validated, before anything is built; the error is one line with the file, the full key
path (down to a list element), the value and the expected type. Also the settings sections of
``mergevq train`` and the range errors of constructors and settings."""

from __future__ import annotations

import copy
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import _training
from mergevq import config as C
from mergevq.cli import main
from mergevq.errors import ConfigError

TARGETS = "mvq_typed_targets"
TARGETS_SOURCE = '''
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union

T = TypeVar("T")


class Thing:
    def __init__(self, *, size: int = 1):
        self.size = size


def typed(*, n: int = 0, x: float = 0.0, flag: bool = False, name: str = "", none: None = None,
          maybe: int | None = None, old_optional: Optional[int] = None, either: Union[int, str] = 0,
          mode: Literal["a", "b"] = "a", pair: tuple[float, float] = (0.0, 0.0), many: tuple[int, ...] = (),
          items: list[str] = (), seq: Sequence[float] = (), it: Iterable[int] = (),
          table: dict[str, float] | None = None, mapping: Mapping[str, int] | None = None, path: Path | None = None,
          pathlike: os.PathLike | None = None, anything: Any = None, thing: Thing | None = None,
          fn: Callable[[int], int] | None = None, tv: T = None, nested: list[tuple[int, int]] = (),
          unknown: NotDefinedAnywhere = None):
    return dict(locals())
'''


@pytest.fixture
def typed(tmp_path, monkeypatch):
    folder = tmp_path / "pymod"
    folder.mkdir()
    (folder / f"{TARGETS}.py").write_text(TARGETS_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(TARGETS, None)
    yield tmp_path
    sys.modules.pop(TARGETS, None)


def _build(folder: Path, params: str):
    """Load ``model: {target: typed, params: <params>}`` from a file and build it."""
    path = folder / "configs" / "m.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(f"""
        other: x
        model:
          target: {TARGETS}.typed
          params: {params}
        """))
    return path, C.load_with_origins(path).instantiate("model")


ACCEPTED = [
    "{n: 3, x: 1, flag: true, name: s, none: null, maybe: null, old_optional: 2, either: s, mode: b}",
    "{pair: [1, 2.5], many: [1, 2, 3], items: [a, b], seq: [1, 0.5], it: [], nested: [[1, 2], [3, 4]]}",
    "{table: {a: 1, b: 0.5}, mapping: {a: 1}, path: /data, pathlike: rel/dir, anything: [1, {a: 2}]}",
    # what a value cannot be judged against: an object node, a Callable, a TypeVar, an unresolvable name
    f"{{thing: {{target: {TARGETS}.Thing, params: {{size: 2}}}}, fn: whatever, tv: [1], unknown: 3}}",
]


@pytest.mark.parametrize("params", ACCEPTED)
def test_values_that_fit_their_annotations_build(typed, params):
    _, built = _build(typed, params)
    assert isinstance(built, dict)  # built: every value was accepted


REJECTED = [
    # params, key path below model.params, the message after "expected"
    ("{n: true}", "n", "int, got True (bool)"),
    ("{n: 8.0}", "n", "int, got 8.0 (float)"),
    ("{n: eight}", "n", "int, got 'eight' (str)"),
    ("{n: '${other}'}", "n", "int, got 'x' (str)"),  # checked after interpolation
    ("{x: fast}", "x", "float, got 'fast' (str)"),
    ("{x: false}", "x", "float, got False (bool)"),
    ("{flag: 1}", "flag", "bool, got 1 (int)"),
    ("{name: 3}", "name", "str, got 3 (int)"),
    ("{none: 1}", "none", "null, got 1 (int)"),
    ("{maybe: x}", "maybe", "int or null, got 'x' (str)"),
    ("{old_optional: 1.5}", "old_optional", "int or null, got 1.5 (float)"),
    ("{either: [1]}", "either", "int or str, got [1] (list)"),
    ("{mode: c}", "mode", "one of 'a', 'b', got 'c' (str)"),
    ("{pair: [1]}", "pair", "a list of 2 values (float, float), got [1] (list)"),
    ("{pair: [1, x]}", "pair.1", "float, got 'x' (str)"),
    ("{many: '1,2'}", "many", "a list of int, got '1,2' (str)"),
    ("{items: jpg}", "items", "a list of str, got 'jpg' (str)"),
    ("{seq: 0.9}", "seq", "a list of float, got 0.9 (float)"),
    ("{it: [1, 2, x]}", "it.2", "int, got 'x' (str)"),
    ("{table: {a: x}}", "table.a", "float, got 'x' (str)"),
    ("{table: [1]}", "table", "a mapping of str to float or null, got [1] (list)"),
    ("{mapping: {a: 1.5}}", "mapping.a", "int, got 1.5 (float)"),
    ("{path: 3}", "path", "a path (str) or null, got 3 (int)"),
    ("{nested: [[1, 2], [3]]}", "nested.1", "a list of 2 values (int, int), got [3] (list)"),
    ("{nested: [[1, 2], [3, x]]}", "nested.1.1", "int, got 'x' (str)"),
]


@pytest.mark.parametrize("params, key, expected", REJECTED, ids=[r[0] for r in REJECTED])
def test_wrong_types_name_file_key_value_and_type(typed, params, key, expected):
    with pytest.raises(ConfigError) as info:
        _build(typed, params)
    message = str(info.value)
    assert "\n" not in message
    assert message == f"{typed / 'configs' / 'm.yaml'}: key 'model.params.{key}': expected {expected}"


def test_types_are_checked_before_anything_is_built(typed):
    # the valid sibling node is not built when another value of the tree has the wrong type
    import importlib

    module = importlib.import_module(TARGETS)
    built = []
    module.Thing.__init__ = lambda self, *, size=1: built.append(size)
    with pytest.raises(ConfigError, match="model.params.n"):
        _build(typed, f"{{thing: {{target: {TARGETS}.Thing}}, n: x}}")
    assert built == []


def test_check_types_on_plain_values_and_dataclasses():
    from mergevq.training.run import TrainerSettings

    C.check_types(TrainerSettings, {"max_steps": 5, "precision": 32, "devices": "auto", "limit_val_batches": 2})
    with pytest.raises(ConfigError) as info:
        C.check_types(TrainerSettings, {"max_steps": "10"}, key="trainer", origins={"trainer.max_steps": "t.yaml"})
    assert str(info.value) == "t.yaml: key 'trainer.max_steps': expected int, got '10' (str)"


# ---------------------------------------------------------------------------------------------
# through mergevq train: exit 2, one line naming the file and the full key path, nothing written


def _train(argv: list[str], run_dir: Path, capsys, *, at_validation: bool = True) -> str:
    assert main(["train", *argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    if at_validation:
        assert not run_dir.exists()  # refused before the run folder, let alone training
    assert not (run_dir / "checkpoints").exists()
    return err


def _tiny(tmp_path: Path, **sections) -> Path:
    return _training.write_config(tmp_path / "configs", **sections)


def _data(**params) -> dict:
    data = copy.deepcopy(_training.BASE["data"])
    data["params"].update(params)
    return data


def test_train_batch_size_in_a_file(tmp_path, capsys):
    config = _tiny(tmp_path, data=_data(batch_size="eight"))
    err = _train([str(config)], tmp_path / "run", capsys)
    # checked where the batch plan is read (mergevq.training.batch_plan) or by the type check: either
    # way one line that names the file, the key and the value
    assert err.startswith(f"mergevq train: error: {config}: ") and "data.params.batch_size" in err and "'eight'" in err


def test_train_batch_size_as_an_override(tmp_path, capsys):
    err = _train([str(_tiny(tmp_path)), "data.params.batch_size=eight"], tmp_path / "run", capsys)
    assert "command line: " in err and "data.params.batch_size" in err and "'eight'" in err


@pytest.mark.parametrize("params, key, expected", [
    ({"betas": 0.9}, "model.params.betas", "expected a list of float, got 0.9 (float)"),
    ({"k_std": "fast"}, "model.params.k_std", "expected float, got 'fast' (str)"),
    ({"betas": [0.5, "x"]}, "model.params.betas.1", "expected float, got 'x' (str)"),  # inside a list
    ({"lr_drop_epochs": [1, 2.5]}, "model.params.lr_drop_epochs.1", "expected int, got 2.5 (float)"),
], ids=["betas", "k_std", "list element", "int list element"])
def test_train_model_values_in_a_file(tmp_path, capsys, params, key, expected):
    config = _tiny(tmp_path, params=params)
    err = _train([str(config)], tmp_path / "run", capsys)
    assert f"{config}: key '{key}': {expected}" in err


def test_train_overrides_name_the_command_line(tmp_path, capsys):
    err = _train([str(_tiny(tmp_path)), "model.params.betas=0.9"], tmp_path / "run", capsys)
    assert "command line: key 'model.params.betas': expected a list of float, got 0.9 (float)" in err


def test_train_range_error_names_the_file_that_set_the_key(tmp_path, capsys):
    config = _tiny(tmp_path)
    extra = tmp_path / "configs" / "short.yaml"
    extra.write_text(yaml.safe_dump({"trainer": {"max_steps": 0}}))
    err = _train([str(config), str(extra)], tmp_path / "run", capsys)
    assert f"{extra}: key 'trainer.max_steps': must be -1 or an int >= 1, got 0" in err


def test_train_settings_types_name_the_file(tmp_path, capsys):
    config = _tiny(tmp_path, trainer={"max_steps": "10"})
    err = _train([str(config)], tmp_path / "run", capsys)
    assert f"{config}: key 'trainer.max_steps': expected int, got '10' (str)" in err
    config = _tiny(tmp_path, run={"name": "tiny", "seed": -1})
    err = _train([str(config)], tmp_path / "run", capsys)
    assert f"{config}: key 'run.seed': must be an int >= 0, got -1" in err


def test_train_constructor_value_errors_name_the_file_and_node(tmp_path, capsys):
    data = _data()
    data["params"]["train"]["params"]["split"] = "bogus"
    config = _tiny(tmp_path, data=data)
    err = _train([str(config)], tmp_path / "run", capsys, at_validation=False)  # raised while building
    assert f"{config}: key 'data.params.train' (mergevq.data.demo.DemoImages): unknown demo split 'bogus'" in err
