"""The trust boundary of loading (issue 11 item 1): a config read from a checkpoint, a run folder or an
export folder may build only mergevq's own builders (``mergevq.trust``), refused before anything is
imported; refused pickles and foreign checkpoints are one-line errors; ``export`` never overwrites a
folder that is not an earlier export.

The attack: a module written to tmp (put on ``sys.path``) that writes a marker file when it is
imported *and* when its ``build`` is called, named as a ``target`` in the config embedded in a
checkpoint (``mergevq_config``) or in a run folder's ``config.yaml``. Every CLI loader must exit 2 with
one stderr line, and the module must never have been imported.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import _ar_training
import _training
from mergevq.ar.model import MergeAR
from mergevq.ar.model import build_config as ar_config
from mergevq.cli import main
from mergevq.config import from_yaml_with_origins, instantiate
from mergevq.errors import ConfigError
from mergevq.outputs import MARKER
from mergevq.tokenizer.model import MergeVQ
from mergevq.tokenizer.model import build_config as tokenizer_config
from mergevq.training.export import load_tokenizer
from mergevq.trust import AR_MODULE, TOKENIZER_MODULE, TRUSTED_TARGETS

EVIL = "mvq_evil_payload"
EVIL_TARGET = f"{EVIL}.build"
EVIL_SOURCE = """
from pathlib import Path

Path({marker!r}).write_text("imported")


def build(**kwargs):
    Path({marker!r}).write_text("called")
"""
CHECKPOINT_NAME = "step000000001-epoch0000.ckpt"
TOKENIZER_NODE = "model.params.tokenizer"
AR_NODE = "model.params.model"


@pytest.fixture
def marker(tmp_path, monkeypatch) -> Path:
    """The payload module on sys.path; returns the marker file it writes (which must never appear)."""
    folder = tmp_path / "payload"
    folder.mkdir()
    path = tmp_path / "PWNED"
    (folder / f"{EVIL}.py").write_text(EVIL_SOURCE.format(marker=str(path)))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(EVIL, None)
    yield path
    sys.modules.pop(EVIL, None)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """Harmless exported tiny models, for the other half of ``sample``."""
    root = tmp_path_factory.mktemp("trusted_exports")
    torch.manual_seed(0)
    MergeVQ(config=tokenizer_config(preset="tiny-GR")).save_pretrained(root / "tokenizer")
    MergeAR(config=ar_config(preset="tiny", changes={"grid": (4, 4)})).save_pretrained(root / "ar")
    return {"tokenizer": root / "tokenizer", "ar": root / "ar"}


def _evil_config(base: dict[str, Any], node: str) -> dict[str, Any]:
    """``base`` (a real run config) with the object node at dotted ``node`` building the payload."""
    cfg = copy.deepcopy(base)
    parent = cfg
    *path, last = node.split(".")
    for part in path:
        parent = parent[part]
    parent[last] = {"target": EVIL_TARGET, "params": {"preset": "tiny"}}
    return cfg


def _write_checkpoint(path: Path, cfg: dict[str, Any]) -> Path:
    """A file that passes ``weights_only`` (only containers and strings) with ``cfg`` embedded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "mergevq_config": yaml.safe_dump(cfg)}, path)
    return path


def _write_run(folder: Path, cfg: dict[str, Any]) -> Path:
    """A run folder as ``mergevq train`` leaves it: ``config.yaml`` and one checkpoint, both ``cfg``."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    _write_checkpoint(folder / "checkpoints" / CHECKPOINT_NAME, cfg)
    return folder


def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    assert "Traceback" not in err
    return err


def _assert_untouched(marker: Path) -> None:
    assert not marker.exists(), marker.read_text()
    assert EVIL not in sys.modules


def test_the_payload_is_live(marker):
    # the harness itself: importing the module is enough to leave the marker
    importlib.import_module(EVIL)
    assert marker.read_text() == "imported"


# ---------------------------------------------------------------------------------------------
# every CLI loader


def _tokenizer_loaders(source: str, out: Path, exports: dict[str, Path]) -> dict[str, list[str]]:
    return {
        "evaluate-tokenizer": ["evaluate-tokenizer", source, "--demo", "--out", str(out)],
        "reconstruct": ["reconstruct", source, "--demo", "--out", str(out)],
        "extract-codes": ["extract-codes", source, str(out), "--demo"],
        "linear-probe": ["linear-probe", source, "--demo", "--out", str(out / "probe.json")],
        "sample --tokenizer": ["sample", "--ar", str(exports["ar"]), "--tokenizer", source, "--out", str(out)],
    }


TOKENIZER_COMMANDS = ("evaluate-tokenizer", "reconstruct", "extract-codes", "linear-probe", "sample --tokenizer")


@pytest.mark.parametrize("form", ["checkpoint", "run folder"])
@pytest.mark.parametrize("command", TOKENIZER_COMMANDS)
def test_tokenizer_loaders_refuse_a_foreign_target(command, form, marker, exports, tmp_path, capsys):
    cfg = _evil_config(_training.BASE, TOKENIZER_NODE)
    if form == "checkpoint":
        source = _write_checkpoint(tmp_path / "evil.ckpt", cfg)
        ckpt = source
    else:
        source = _write_run(tmp_path / "evil_run", cfg)
        ckpt = source / "checkpoints" / CHECKPOINT_NAME
    err = _one_line_error(_tokenizer_loaders(str(source), tmp_path / "out", exports)[command], capsys)
    assert f"{ckpt}:mergevq_config: key '{TOKENIZER_NODE}.target': refused to build '{EVIL_TARGET}'" in err
    _assert_untouched(marker)


@pytest.mark.parametrize("form", ["checkpoint", "run folder"])
def test_sample_refuses_a_foreign_mergear_target(form, marker, exports, tmp_path, capsys):
    cfg = _evil_config(_ar_training.BASE, AR_NODE)
    if form == "checkpoint":
        source = ckpt = _write_checkpoint(tmp_path / "evil.ckpt", cfg)
    else:
        source = _write_run(tmp_path / "evil_run", cfg)
        ckpt = source / "checkpoints" / CHECKPOINT_NAME
    err = _one_line_error(["sample", "--ar", str(source), "--tokenizer", str(exports["tokenizer"]),
                           "--out", str(tmp_path / "out")], capsys)
    assert f"{ckpt}:mergevq_config: key '{AR_NODE}.target': refused to build '{EVIL_TARGET}'" in err
    _assert_untouched(marker)


def test_export_refuses_a_run_folder_whose_model_is_foreign(marker, tmp_path, capsys):
    # config.yaml decides what to export: its model.target is looked up, never imported
    run = _write_run(tmp_path / "evil_run", _evil_config(_training.BASE, "model"))
    err = _one_line_error(["export", str(run)], capsys)
    assert f"{run / 'config.yaml'}: key 'model.target': refused to build '{EVIL_TARGET}'" in err
    _assert_untouched(marker)
    assert not (run / "tokenizer").exists()


def test_export_refuses_a_checkpoint_whose_model_is_foreign(marker, tmp_path, capsys):
    # no config.yaml: the checkpoint's embedded config decides
    ckpt = _write_checkpoint(tmp_path / "evil.ckpt", _evil_config(_training.BASE, "model"))
    (tmp_path / "run").mkdir()
    err = _one_line_error(["export", str(tmp_path / "run"), "--checkpoint", str(ckpt)], capsys)
    assert f"{ckpt}:mergevq_config: key 'model.target': refused to build '{EVIL_TARGET}'" in err
    _assert_untouched(marker)


@pytest.mark.parametrize("base, node", [(_training.BASE, TOKENIZER_NODE), (_ar_training.BASE, AR_NODE)],
                         ids=["tokenizer", "mergear"])
def test_export_refuses_a_foreign_architecture_node(base, node, marker, tmp_path, capsys):
    # model.target is a real training module; the node built from the checkpoint is not allowed
    run = _write_run(tmp_path / "evil_run", _evil_config(base, node))
    ckpt = run / "checkpoints" / CHECKPOINT_NAME
    err = _one_line_error(["export", str(run), "--out", str(tmp_path / "out")], capsys)
    assert f"{ckpt}:mergevq_config: key '{node}.target': refused to build '{EVIL_TARGET}'" in err
    _assert_untouched(marker)
    assert not (tmp_path / "out").exists()


def test_export_says_when_an_allowed_target_is_not_a_training_module(tmp_path, capsys):
    cfg = copy.deepcopy(_training.BASE)
    cfg["model"] = {"target": "mergevq.data.demo.DemoImages", "params": {}}
    run = _write_run(tmp_path / "run", cfg)
    err = _one_line_error(["export", str(run)], capsys)
    assert "key 'model.target'" in err and "is not a training module" in err and TOKENIZER_MODULE in err


# ---------------------------------------------------------------------------------------------
# the config layer


def _foreign(cfg: dict[str, Any], source: str = "x.ckpt:mergevq_config"):
    return from_yaml_with_origins(yaml.safe_dump(cfg), source=source)


def test_allow_list_is_checked_over_the_whole_tree_before_any_import(marker):
    # the payload hides below an allowed builder, in a list, behind an interpolation
    cfg = {
        "evil": EVIL_TARGET,
        "model": {"target": "mergevq.tokenizer.model.build_config",
                  "params": {"preset": "tiny-GR", "changes": {"x": [1, {"target": "${evil}"}]}}},
    }
    loaded = _foreign(cfg)
    for call in (lambda: loaded.instantiate("model", allowed=TRUSTED_TARGETS),
                 lambda: loaded.validate("model", allowed=TRUSTED_TARGETS),
                 lambda: instantiate(loaded.cfg.model, key="model", origins=loaded.origins, allowed=TRUSTED_TARGETS)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert message.startswith(
            f"x.ckpt:mergevq_config: key 'model.params.changes.x.1.target': refused to build '{EVIL_TARGET}'")
        assert "\n" not in message
    _assert_untouched(marker)


def test_allow_list_names_are_exact(marker):
    # no prefixes: a name below an allowed one is not allowed
    loaded = _foreign({"model": {"target": "mergevq.tokenizer.model.build_config.__globals__"}})
    with pytest.raises(ConfigError, match="refused to build"):
        loaded.instantiate("model", allowed=TRUSTED_TARGETS)
    with pytest.raises(ConfigError, match="refused to build"):
        loaded.target("model", allowed=TRUSTED_TARGETS)


def test_allowed_builders_still_build_and_user_yaml_keeps_full_freedom(marker):
    loaded = _foreign({"model": {"target": "mergevq.tokenizer.model.build_config", "params": {"preset": "tiny-GR"}}})
    assert loaded.instantiate("model", allowed=TRUSTED_TARGETS) == tokenizer_config(preset="tiny-GR")
    assert loaded.target("model", allowed=TRUSTED_TARGETS) == "mergevq.tokenizer.model.build_config"
    # without an allow-list (YAML the user passed) any importable target is built
    instantiate({"target": EVIL_TARGET})
    assert marker.read_text() == "called"


def test_every_target_of_the_shipped_configs_is_allowed():
    # a run of any shipped recipe must load back from its own checkpoints
    configs = Path(__file__).resolve().parents[1] / "configs"
    targets = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("target"), str):
                targets.add(node["target"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in configs.rglob("*.yaml"):
        walk(yaml.safe_load(path.read_text()))
    assert targets and targets <= TRUSTED_TARGETS, sorted(targets - TRUSTED_TARGETS)
    assert {TOKENIZER_MODULE, AR_MODULE} <= TRUSTED_TARGETS


# ---------------------------------------------------------------------------------------------
# refused pickles and foreign checkpoints


def _refused_pickle(path: Path) -> None:
    # a Lightning checkpoint of another project: hyper-parameters pickled as an argparse.Namespace
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=0.1)}, path)


def _plain_state_dict(path: Path) -> None:
    torch.save({"weight": torch.zeros(2, 2)}, path)


def _random_bytes(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 16)


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "not a torch file")


def _a_tensor(path: Path) -> None:
    torch.save(torch.zeros(3), path)


FOREIGN = {"refused pickle": _refused_pickle, "plain state dict": _plain_state_dict,
           "random bytes": _random_bytes, "zip, not torch": _foreign_zip, "a tensor": _a_tensor}


@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_checkpoints_are_one_line_errors(kind, tmp_path, capsys):
    ckpt = tmp_path / "foreign.ckpt"
    FOREIGN[kind](ckpt)
    (tmp_path / "run").mkdir()
    for argv in (["export", str(tmp_path / "run"), "--checkpoint", str(ckpt)],
                 ["extract-codes", str(ckpt), str(tmp_path / "codes"), "--demo"]):
        err = _one_line_error(argv, capsys)
        assert str(ckpt) in err, err
        if kind == "refused pickle":
            assert "argparse.Namespace" in err and "weights-only" in err


# ---------------------------------------------------------------------------------------------
# export folders


def _trusted_checkpoint(tmp_path: Path) -> Path:
    """A tiny tokenizer checkpoint as mergevq train writes it (EMA = raw = fresh weights)."""
    model = MergeVQ(config=tokenizer_config(preset="tiny-GR"))
    state = model.state_dict()
    path = tmp_path / "run" / "checkpoints" / CHECKPOINT_NAME
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"tokenizer.{k}": v for k, v in state.items()}, "ema_state_dict": state,
                "mergevq_config": yaml.safe_dump(_training.BASE)}, path)
    return path


def test_export_claims_its_folder(tmp_path, capsys):
    ckpt = _trusted_checkpoint(tmp_path)
    run = ckpt.parent.parent
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert (out / MARKER).is_file()
    assert isinstance(load_tokenizer(out), MergeVQ) and isinstance(MergeVQ.from_pretrained(out), MergeVQ)
    # again into the same export: replaced
    assert main(["export", str(run), "--out", str(out)]) == 0
    # the default folder inside the run is claimed too
    assert main(["export", str(run)]) == 0
    assert (run / "tokenizer" / MARKER).is_file()
    capsys.readouterr()
    # a folder holding anything else is refused and left alone
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    err = _one_line_error(["export", str(run), "--out", str(foreign)], capsys)
    assert str(foreign) in err and "thesis.tex" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.tex"]
    (out / "extra.txt").write_text("mine")
    err = _one_line_error(["export", str(run), "--out", str(out)], capsys)
    assert "extra.txt" in err and (out / "extra.txt").read_text() == "mine"
