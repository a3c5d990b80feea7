"""mergevq.config: composition, overrides, provenance, instantiation, saving; every error path."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from mergevq import config as C
from mergevq.errors import ConfigError, MergeVQError

TARGETS = "mvq_cfg_test_targets"

TARGETS_SOURCE = """
CALLS = []


class Leaf:
    def __init__(self, *, size: int, scale: float = 1.0):
        self.size = size
        self.scale = scale


class Tree:
    def __init__(self, *, left, right=None, items=(), options=None, name: str = "tree"):
        self.left = left
        self.right = right
        self.items = items
        self.options = options
        self.name = name


class Dataset:
    def __init__(self, *, root: str, cachedir=None, size: int = 256):
        self.root = root
        self.cachedir = cachedir
        self.size = size


class DataModule:
    def __init__(self, *, train, validation=None, batch_size: int = 1):
        self.train = train
        self.validation = validation
        self.batch_size = batch_size


class Recorded:
    def __init__(self, *, tag: str):
        CALLS.append(tag)
        self.tag = tag


class Fails:
    def __init__(self, *, x: int):
        raise ValueError("boom from the constructor")


class Crashes:
    def __init__(self):
        raise RuntimeError("not a user error")


class Open:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class PositionalOnly:
    def __init__(self, a, /):
        self.a = a


def make_pair(a, b=2):
    return (a, b)


NOT_CALLABLE = 3
"""


@pytest.fixture
def targets(tmp_path, monkeypatch):
    """A small module of target classes importable as ``mvq_cfg_test_targets``."""
    folder = tmp_path / "pymod"
    folder.mkdir()
    (folder / f"{TARGETS}.py").write_text(TARGETS_SOURCE)
    sys.modules.pop(TARGETS, None)
    monkeypatch.syspath_prepend(str(folder))
    import importlib

    module = importlib.import_module(TARGETS)
    yield module
    sys.modules.pop(TARGETS, None)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def raises(fn, *args, **kwargs) -> str:
    """Call ``fn`` expecting a ConfigError; return its message, checked to be one line."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    assert isinstance(info.value, MergeVQError)
    return message


# ---------------------------------------------------------------------------------------------
# composition


def test_defaults_merge_first_then_own_content_wins(tmp_path):
    write(tmp_path / "base.yaml", "a: 1\nb: {c: 1, d: 2}\nlst: [1, 2, 3]\n")
    child = write(tmp_path / "child.yaml", "defaults: [base.yaml]\nb: {c: 10}\nlst: [9]\ne: 5\n")
    cfg = C.load(child)
    assert isinstance(cfg, DictConfig)
    assert OmegaConf.to_container(cfg) == {"a": 1, "b": {"c": 10, "d": 2}, "lst": [9], "e": 5}
    assert "defaults" not in cfg


def test_nested_defaults_depth_first_in_list_order(tmp_path):
    write(tmp_path / "a.yaml", "x: a\ny: a\nz: a\nw: a\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\ny: b\nz: b\nw: b\n")
    write(tmp_path / "c.yaml", "z: c\nw: c\n")
    top = write(tmp_path / "top.yaml", "defaults: [b.yaml, c.yaml]\nw: top\n")
    loaded = C.load_with_origins(top)
    assert OmegaConf.to_container(loaded.cfg) == {"x": "a", "y": "b", "z": "c", "w": "top"}
    assert [Path(f).name for f in loaded.files] == ["a.yaml", "b.yaml", "c.yaml", "top.yaml"]
    assert Path(loaded.origins["x"]).name == "a.yaml"
    assert Path(loaded.origins["y"]).name == "b.yaml"
    assert Path(loaded.origins["z"]).name == "c.yaml"
    assert Path(loaded.origins["w"]).name == "top.yaml"


def test_several_paths_merge_in_order(tmp_path):
    one = write(tmp_path / "one.yaml", "a: 1\nb: 1\n")
    two = write(tmp_path / "two.yaml", "b: 2\n")
    assert OmegaConf.to_container(C.load([one, two])) == {"a": 1, "b": 2}
    assert OmegaConf.to_container(C.load([str(two), str(one)])) == {"a": 1, "b": 1}


def test_defaults_resolve_relative_first_then_configs_root(tmp_path):
    root = tmp_path / "configs"
    write(root / "data" / "folder.yaml", "data: {source: root-data}\n")
    write(root / "trainer" / "cpu.yaml", "trainer: {source: root-trainer}\n")
    write(root / "demo" / "local.yaml", "local: {source: demo-local}\n")
    # Same relative name exists both next to the file and under the root: the neighbour wins.
    write(root / "demo" / "trainer" / "cpu.yaml", "trainer: {source: demo-trainer}\n")
    top = write(
        root / "demo" / "run.yaml", "defaults: [local.yaml, data/folder, trainer/cpu.yaml]\n"
    )
    cfg = C.load(top)
    assert cfg.local.source == "demo-local"
    assert cfg.data.source == "root-data"  # suffix-less entry, found under the configs root
    assert cfg.trainer.source == "demo-trainer"


def test_empty_file_is_empty_config(tmp_path):
    assert OmegaConf.to_container(C.load(write(tmp_path / "e.yaml", ""))) == {}


def test_yaml_scalars_like_omegaconf(tmp_path):
    cfg = C.load(write(tmp_path / "s.yaml", "lr: 1e-4\nwd: .5\nday: 2024-01-01\nn: 10\n"))
    assert cfg.lr == pytest.approx(1e-4) and isinstance(cfg.lr, float)
    assert cfg.wd == 0.5 and cfg.day == "2024-01-01" and cfg.n == 10


def test_interpolations_are_kept_and_resolve(tmp_path):
    cfg = C.load(write(tmp_path / "i.yaml", "a: 3\nb: ${a}\n"))
    assert cfg.b == 3


def test_defaults_cycle_names_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    message = raises(C.load, tmp_path / "a.yaml")
    assert "cycle" in message
    assert "a.yaml -> " in message and "b.yaml -> " in message


def test_defaults_self_cycle(tmp_path):
    write(tmp_path / "self.yaml", "defaults: [self.yaml]\n")
    assert "cycle" in raises(C.load, tmp_path / "self.yaml")


def test_missing_default_names_it_and_the_referencing_file(tmp_path):
    write(tmp_path / "configs" / "demo" / "top.yaml", "defaults: [nothere.yaml]\n")
    message = raises(C.load, tmp_path / "configs" / "demo" / "top.yaml")
    assert "nothere.yaml" in message and "top.yaml" in message and "defaults" in message
    assert "not found" in message


def test_missing_top_level_file(tmp_path):
    message = raises(C.load, tmp_path / "absent.yaml")
    assert "absent.yaml" in message and "not found" in message


def test_no_file_given():
    assert "no config file" in raises(C.load, [])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    write(tmp_path / "bad.yaml", "a: 1\nb: [1, 2\nc: 3\n")
    message = raises(C.load, tmp_path / "bad.yaml")
    assert "bad.yaml:3" in message and "invalid YAML" in message


def test_yaml_syntax_error_in_a_default(tmp_path):
    write(tmp_path / "bad.yaml", "a: 1\n  b: 2\n")
    write(tmp_path / "top.yaml", "defaults: [bad.yaml]\n")
    assert "bad.yaml:2" in raises(C.load, tmp_path / "top.yaml")


def test_duplicate_key_is_an_error(tmp_path):
    write(tmp_path / "dup.yaml", "a: 1\nb: 2\na: 3\n")
    message = raises(C.load, tmp_path / "dup.yaml")
    assert "dup.yaml:3" in message and "duplicate key 'a'" in message


def test_top_level_must_be_a_mapping(tmp_path):
    write(tmp_path / "list.yaml", "- 1\n- 2\n")
    message = raises(C.load, tmp_path / "list.yaml")
    assert "list.yaml" in message and "mapping" in message


def test_defaults_must_be_a_list_of_names(tmp_path):
    write(tmp_path / "d.yaml", "defaults: base.yaml\n")
    message = raises(C.load, tmp_path / "d.yaml")
    assert "d.yaml" in message and "'defaults'" in message and "list" in message


# ---------------------------------------------------------------------------------------------
# overrides


@pytest.fixture
def base_cfg(tmp_path):
    return write(
        tmp_path / "base.yaml",
        """
        model:
          target: pkg.Model
          params: {dim: 8, depth: 2, layers: [1, 2]}
        trainer: {max_steps: 100, lr: 0.1, run_name: '???'}
        """,
    )


def test_override_existing_keys_with_yaml_values(base_cfg):
    cfg = C.load(
        base_cfg,
        [
            "model.params.dim=3",
            "model.params.layers=[4,5,6]",
            "trainer.lr=null",
            "trainer.max_steps=1e3",
            "trainer.run_name=demo",
            "model.params.layers.0=7",
        ],
    )
    assert cfg.model.params.dim == 3
    assert list(cfg.model.params.layers) == [7, 5, 6]
    assert cfg.trainer.lr is None
    assert cfg.trainer.max_steps == 1000.0
    assert cfg.trainer.run_name == "demo"


def test_override_empty_value_is_empty_string(base_cfg):
    assert C.load(base_cfg, ["trainer.run_name="]).trainer.run_name == ""


def test_override_mapping_value_replaces(base_cfg):
    loaded = C.load_with_origins(base_cfg, ["model.params={dim: 1}"])
    assert OmegaConf.to_container(loaded.cfg.model.params) == {"dim": 1}
    assert loaded.origins["model.params.dim"] == C.COMMAND_LINE
    assert "model.params.depth" not in loaded.origins


def test_plus_override_adds_a_key(base_cfg):
    loaded = C.load_with_origins(base_cfg, ["+model.params.heads=4", "+extra.deep.key=[1]"])
    assert loaded.cfg.model.params.heads == 4
    assert list(loaded.cfg.extra.deep.key) == [1]
    assert loaded.origins["model.params.heads"] == C.COMMAND_LINE
    assert loaded.origin("extra.deep.key") == C.COMMAND_LINE


def test_override_origins(base_cfg):
    loaded = C.load_with_origins(base_cfg, ["model.params.dim=3"])
    assert loaded.origins["model.params.dim"] == C.COMMAND_LINE
    assert Path(loaded.origins["model.params.depth"]).name == "base.yaml"
    assert Path(loaded.origin("model.params.layers.1")).name == "base.yaml"


def test_unknown_override_key_is_an_error_with_suggestion(base_cfg):
    message = raises(C.load, base_cfg, ["model.params.dimm=3"])
    assert "'model.params.dimm'" in message
    assert "model.params.dim" in message.split("closest")[1]
    assert "base.yaml" in message
    assert "+model.params.dimm" in message


def test_unknown_override_without_close_match_lists_siblings(base_cfg):
    message = raises(C.load, base_cfg, ["trainer.zzzzzzzzzzzzzzz=1"])
    assert "trainer.max_steps" in message and "trainer.lr" in message


def test_override_through_a_scalar_is_unknown(base_cfg):
    assert "does not exist" in raises(C.load, base_cfg, ["trainer.lr.sub=1"])


def test_plus_override_through_a_scalar_is_an_error(base_cfg):
    message = raises(C.load, base_cfg, ["+trainer.lr.sub=1"])
    assert (
        "+trainer.lr.sub=1" in message and "'trainer.lr'" in message and "not a mapping" in message
    )
    assert "base.yaml" in message
    assert "is a list" in raises(C.load, base_cfg, ["+model.params.layers.7=1"])


@pytest.mark.parametrize("bad", ["model.params.dim", "=3", "+=3", "model..dim=3", "a. b=1"])
def test_malformed_override(base_cfg, bad):
    message = raises(C.load, base_cfg, [bad])
    assert "malformed" in message and bad in message


def test_override_value_with_invalid_yaml(base_cfg):
    message = raises(C.load, base_cfg, ["model.params.dim=[1,"])
    assert "model.params.dim=[1," in message and "invalid YAML" in message


# ---------------------------------------------------------------------------------------------
# instantiate


def tree_config(tmp_path: Path) -> Path:
    write(
        tmp_path / "configs" / "data" / "folder.yaml",
        f"""
        data:
          target: {TARGETS}.DataModule
          params:
            batch_size: 4
            train:
              target: {TARGETS}.Dataset
              params: {{root: /data/train, size: 32}}
        """,
    )
    return write(
        tmp_path / "configs" / "demo" / "run.yaml",
        f"""
        defaults: [data/folder.yaml]
        model:
          target: {TARGETS}.Tree
          params:
            left:
              target: {TARGETS}.Leaf
              params: {{size: 2}}
            items:
              - target: {TARGETS}.Leaf
                params: {{size: 3, scale: 0.5}}
              - 7
              - {{plain: [1, 2]}}
            options:
              lr: ${{trainer.lr}}
              nested: {{a: 1, b: [1, 2]}}
              inner:
                target: {TARGETS}.Leaf
                params: {{size: 9}}
        trainer: {{lr: 0.25}}
        """,
    )


def test_instantiate_nested_tree(tmp_path, targets):
    loaded = C.load_with_origins(tree_config(tmp_path))
    tree = loaded.instantiate("model")
    assert isinstance(tree, targets.Tree)
    assert isinstance(tree.left, targets.Leaf) and tree.left.size == 2 and tree.left.scale == 1.0
    assert tree.right is None and tree.name == "tree"
    assert type(tree.items) is list
    assert isinstance(tree.items[0], targets.Leaf) and tree.items[0].scale == 0.5
    assert tree.items[1] == 7
    assert tree.items[2] == {"plain": [1, 2]} and type(tree.items[2]) is dict
    assert type(tree.items[2]["plain"]) is list
    options = tree.options
    assert type(options) is dict
    assert options["lr"] == 0.25  # interpolation resolved
    assert options["nested"] == {"a": 1, "b": [1, 2]}
    assert type(options["nested"]) is dict and type(options["nested"]["b"]) is list
    assert isinstance(options["inner"], targets.Leaf) and options["inner"].size == 9

    data = C.instantiate(loaded.cfg.data, key="data", origins=loaded.origins)
    assert isinstance(data.train, targets.Dataset) and data.train.root == "/data/train"
    assert data.batch_size == 4


def test_no_omegaconf_containers_reach_constructors(tmp_path, targets):
    tree = C.load_with_origins(tree_config(tmp_path)).instantiate("model")

    def walk(value):
        assert not isinstance(value, (DictConfig, ListConfig)), value
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif hasattr(value, "__dict__"):
            for v in vars(value).values():
                walk(v)

    walk(tree)


def test_instantiate_plain_dict_and_function_target(targets):
    assert C.instantiate({"target": f"{TARGETS}.make_pair", "params": {"a": 1}}) == (1, 2)
    leaf = C.instantiate(OmegaConf.create({"target": f"{TARGETS}.Leaf", "params": {"size": 1}}))
    assert leaf.size == 1


def test_instantiate_node_without_params(targets):
    assert isinstance(C.instantiate({"target": f"{TARGETS}.Open"}), targets.Open)
    assert isinstance(C.instantiate({"target": f"{TARGETS}.Open", "params": None}), targets.Open)


def test_kwargs_target_accepts_any_key(targets):
    assert C.instantiate({"target": f"{TARGETS}.Open", "params": {"anything": 1}}).kwargs == {
        "anything": 1
    }


def test_unknown_key_names_file_full_path_and_valid_keys(tmp_path, targets):
    loaded = C.load_with_origins(tree_config(tmp_path), ["+data.params.train.params.roott=/x"])
    # Set in a file rather than on the command line: the message names that file.
    loaded_file = C.load_with_origins(
        [
            tree_config(tmp_path),
            write(tmp_path / "typo.yaml", "data: {params: {train: {params: {roott: /x}}}}\n"),
        ]
    )
    message = raises(loaded_file.instantiate, "data")
    assert "typo.yaml" in message
    assert "'data.params.train.params.roott'" in message
    assert f"{TARGETS}.Dataset" in message
    assert "did you mean 'root'" in message
    valid = message.split("valid keys:")[1]
    assert valid.strip().startswith("root")  # closest first
    assert "cachedir" in valid and "size" in valid

    message = raises(loaded.instantiate, "data")
    assert C.COMMAND_LINE in message and "data.params.train.params.roott" in message


def test_unknown_key_without_close_match(tmp_path, targets):
    message = raises(
        C.instantiate, {"target": f"{TARGETS}.Leaf", "params": {"size": 1, "qqqqqq": 2}}, key="m"
    )
    assert "'m.params.qqqqqq'" in message and "did you mean" not in message
    assert "valid keys: size, scale" in message


def test_missing_required_argument(tmp_path, targets):
    path = write(tmp_path / "m.yaml", f"model: {{target: {TARGETS}.Tree, params: {{name: x}}}}\n")
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert "m.yaml" in message and "missing required argument 'left'" in message
    assert "model.params.left" in message and f"{TARGETS}.Tree" in message


def test_target_module_missing(tmp_path):
    path = write(tmp_path / "m.yaml", "model: {target: no_such_pkg_xyz.models.Net}\n")
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert "m.yaml" in message and "'model.target'" in message
    assert (
        "no_such_pkg_xyz.models.Net" in message and "no module named 'no_such_pkg_xyz'" in message
    )


def test_target_attribute_missing_suggests(tmp_path, targets):
    path = write(tmp_path / "m.yaml", f"model: {{target: {TARGETS}.Leef, params: {{size: 1}}}}\n")
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert "m.yaml" in message and "'model.target'" in message
    assert "has no attribute 'Leef'" in message and f"did you mean: {TARGETS}.Leaf" in message


def test_target_submodule_missing_suggests(tmp_path):
    message = raises(C.instantiate, {"target": "mergevq.confg.load"}, key="x")
    assert "mergevq.config" in message and "'x.target'" in message


def test_target_must_be_a_dotted_path_and_callable(targets):
    assert "dotted import path" in raises(C.instantiate, {"target": "not a path"}, key="m")
    assert "dotted import path" in raises(C.instantiate, {"target": 3}, key="m")
    assert "not a class or function" in raises(C.instantiate, {"target": f"{TARGETS}.NOT_CALLABLE"})


def test_extra_node_key_is_an_error(tmp_path, targets):
    path = write(tmp_path / "m.yaml", f"model: {{target: {TARGETS}.Leaf, size: 3}}\n")
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert "m.yaml" in message and "'model.size'" in message and "target, params" in message


def test_node_must_be_a_mapping_with_target(targets):
    assert "must be an object node" in raises(C.instantiate, {"params": {}}, key="m")
    assert "must be an object node" in raises(C.instantiate, [1, 2], key="m")
    message = raises(C.instantiate, {"target": f"{TARGETS}.Leaf", "params": [1]}, key="m")
    assert "'m.params'" in message and "mapping" in message


def test_nested_node_errors_use_nested_key_path(targets):
    node = {
        "target": f"{TARGETS}.Tree",
        "params": {"left": {"target": f"{TARGETS}.Leaf", "params": {"sise": 1}}},
    }
    message = raises(C.instantiate, node, key="model")
    assert "'model.params.left.params.sise'" in message and "did you mean 'size'" in message
    node = {
        "target": f"{TARGETS}.Tree",
        "params": {"left": 1, "items": [{"target": f"{TARGETS}.Leaf"}]},
    }
    assert "'model.params.items.0'" in raises(C.instantiate, node, key="model")


def test_whole_tree_is_validated_before_any_constructor_runs(targets):
    node = {
        "target": f"{TARGETS}.Tree",
        "params": {
            "left": {"target": f"{TARGETS}.Recorded", "params": {"tag": "built"}},
            "right": {"target": f"{TARGETS}.Leaf", "params": {"size": 1, "scal": 2}},
        },
    }
    raises(C.instantiate, node, key="model")
    assert targets.CALLS == []
    node["params"]["right"]["params"] = {"size": 1}
    C.instantiate(node, key="model")
    assert targets.CALLS == ["built"]
    C.validate(node, key="model")  # validation alone builds nothing
    assert targets.CALLS == ["built"]


def test_constructor_value_errors_name_the_file_and_node(tmp_path, targets):
    # A constructor refusing an argument (ValueError / ConfigError) is a one-line user error that
    # names the node's file, key path and target; anything else (a bug, torch) propagates unchanged.
    path = write(tmp_path / "m.yaml", f"model: {{target: {TARGETS}.Fails, params: {{x: 1}}}}\n")
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert message == f"{path}: key 'model' ({TARGETS}.Fails): boom from the constructor"
    with pytest.raises(RuntimeError, match="not a user error") as info:
        C.instantiate({"target": f"{TARGETS}.Crashes"})
    assert type(info.value) is RuntimeError


def test_mandatory_value_is_an_error(tmp_path, targets):
    path = write(
        tmp_path / "m.yaml", f"model: {{target: {TARGETS}.Leaf, params: {{size: '???'}}}}\n"
    )
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert "m.yaml" in message and "'model.params.size'" in message and "???" in message
    assert C.load_with_origins(path, ["model.params.size=5"]).instantiate("model").size == 5


def test_unresolvable_interpolation_is_an_error(tmp_path, targets):
    path = write(
        tmp_path / "m.yaml", f"model: {{target: {TARGETS}.Leaf, params: {{size: '${{nope}}'}}}}\n"
    )
    message = raises(C.load_with_origins(path).instantiate, "model")
    assert "'model.params.size'" in message and "cannot be resolved" in message


def test_extra_arguments_from_the_program(targets):
    node = {"target": f"{TARGETS}.Tree", "params": {"name": "t"}}
    leaf = targets.Leaf(size=1)
    tree = C.instantiate(node, key="model", extra={"left": leaf})
    assert tree.left is leaf and tree.name == "t"
    message = raises(C.instantiate, node, key="model", extra={"name": "x", "left": leaf})
    assert "'model.params.name'" in message and "supplied by the program" in message


def test_positional_only_required_argument(targets):
    assert "positional-only" in raises(C.instantiate, {"target": f"{TARGETS}.PositionalOnly"})


def test_select_missing_key(base_cfg):
    loaded = C.load_with_origins(base_cfg)
    message = raises(loaded.select, "modle")
    assert "'modle'" in message and "model" in message and "base.yaml" in message
    message = raises(loaded.select, "trainer.run_name")  # '???'
    assert "'trainer.run_name'" in message and "base.yaml" in message


def test_diamond_defaults_are_not_a_cycle(tmp_path):
    write(tmp_path / "base.yaml", "a: 1\n")
    write(tmp_path / "left.yaml", "defaults: [base.yaml]\nb: 1\n")
    write(tmp_path / "right.yaml", "defaults: [base.yaml]\nc: 1\n")
    loaded = C.load_with_origins(
        write(tmp_path / "top.yaml", "defaults: [left.yaml, right.yaml]\n")
    )
    assert OmegaConf.to_container(loaded.cfg) == {"a": 1, "b": 1, "c": 1}
    assert len(loaded.files) == len(set(loaded.files)) == 4


# ---------------------------------------------------------------------------------------------
# save / to_yaml


def test_save_writes_resolved_config_and_reloads_identical(tmp_path):
    path = write(
        tmp_path / "c.yaml", "a: 1\nb: ${a}\nc: {d: [1, 2.5, null, x], e: '1e-4', f: 1e-4}\n"
    )
    cfg = C.load(path)
    out = C.save(cfg, tmp_path / "runs" / "r1")
    assert out == tmp_path / "runs" / "r1" / "config.yaml"
    again = C.load(out)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(cfg, resolve=True)
    assert again.b == 1 and "${" not in out.read_text()
    assert again.c.e == "1e-4" and again.c.f == pytest.approx(1e-4)
    assert OmegaConf.to_container(C.from_yaml(out.read_text())) == OmegaConf.to_container(again)
    assert C.to_yaml(cfg) == out.read_text()


def test_save_is_atomic(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    C.save(OmegaConf.create({"a": 1}), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    C.save(OmegaConf.create({"a": 2}), run_dir)  # overwrite
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert C.load(run_dir / "config.yaml").a == 2

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        C.save(OmegaConf.create({"a": 3}), run_dir)
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]  # no temp file left
    assert C.load(run_dir / "config.yaml").a == 2  # old file untouched


def test_save_unresolvable_interpolation_is_an_error(tmp_path):
    message = raises(C.save, OmegaConf.create({"a": "${missing}"}), tmp_path / "r")
    assert "'a'" in message and not (tmp_path / "r" / "config.yaml").exists()


def test_from_yaml_errors():
    assert "ckpt" in raises(C.from_yaml, "- 1\n", source="ckpt")
    assert "ckpt:2" in raises(C.from_yaml, "a: [\n", source="ckpt")
