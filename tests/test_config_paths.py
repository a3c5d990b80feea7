"""Configs resolve where the user edits them (issue #13 item 1): the search order of mergevq.paths, a
regular (non-editable) install made from a checkout reading that checkout's configs/, the packaged copy
once the checkout is gone, and the composed files printed and recorded."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergevq import config as C
from mergevq.paths import config_roots, resolve_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def test_a_name_resolves_to_the_checkouts_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MERGEVQ_CONFIGS", raising=False)
    assert resolve_config("tokenizer/GR_d64") == (CONFIGS / "tokenizer/GR_d64.yaml").resolve()
    assert resolve_config("tokenizer/GR_d64.yaml").is_absolute()
    assert config_roots()[0] == CONFIGS.resolve()


def test_an_existing_file_wins_over_every_root(tmp_path, monkeypatch):
    own = tmp_path / "tokenizer" / "GR_d64.yaml"
    own.parent.mkdir()
    own.write_text("run: {name: mine}\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_config("tokenizer/GR_d64.yaml") == own.resolve()


def test_mergevq_configs_comes_before_the_checkout_and_falls_through(tmp_path, monkeypatch):
    mine = tmp_path / "my_configs"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "imagenet.yaml").write_text("data: {target: x.Y}\n")
    monkeypatch.setenv("MERGEVQ_CONFIGS", str(mine))
    monkeypatch.chdir(tmp_path)
    assert resolve_config("data/imagenet") == (mine / "data" / "imagenet.yaml").resolve()
    # a name MERGEVQ_CONFIGS does not hold comes from the checkout
    assert resolve_config("extract/base") == (CONFIGS / "extract/base.yaml").resolve()
    assert config_roots()[:2] == [mine.resolve(), CONFIGS.resolve()]


def test_loaded_files_are_absolute_in_composition_order_and_saved_as_a_header(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded = C.load_with_origins(resolve_config("extract/base"), ["data=folder"])
    assert loaded.files == (str((CONFIGS / "data/folder.yaml").resolve()), str((CONFIGS / "extract/base.yaml").resolve()))
    saved = C.save(loaded.cfg, tmp_path / "run", sources=loaded.files)
    text = saved.read_text()
    assert text.startswith("# composed from:\n#   " + loaded.files[0] + "\n#   " + loaded.files[1] + "\n")
    assert C.from_yaml(text).extract.seed == 0  # the header is a comment: the file still loads
    assert not C.save(loaded.cfg, tmp_path / "plain").read_text().startswith("#")


# --------------------------------------------------------------------------------------------------
# a real regular install from a copy of the checkout

_COPIED = ("setup.py", "README.md", "LICENSE", "_torchvision_compat.py", "mergevq-torchvision-compat.pth",
           "mergevq", "taming", "configs")

_PROBE = textwrap.dedent("""
    import json, sys
    import mergevq.paths as P
    from mergevq.config import load_with_origins
    path = P.resolve_config("extract/base")
    loaded = load_with_origins([path], ["data=folder"])
    print(json.dumps({"package": P.__file__, "path": str(path), "files": list(loaded.files),
                      "seed": loaded.cfg.extract.seed}))
""")


def _probe(site: Path, cwd: Path) -> dict:
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("MERGEVQ_CONFIGS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_regular_install_reads_the_edited_checkout_then_its_packaged_copy(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "checkout"
    source.mkdir()
    for name in _COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, source / name)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-compile", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert (site / "mergevq" / "_source_checkout.txt").read_text().strip() == str(source)
    assert (site / "mergevq" / "configs" / "extract" / "base.yaml").is_file()  # the packaged copy

    # the user edits the checkout's config after installing: the installed package reads the edit
    edited = source / "configs" / "extract" / "base.yaml"
    edited.write_text(edited.read_text().replace("  seed: 0 ", "  seed: 123 "))
    (source / "configs" / "data" / "folder.yaml").write_text(
        (source / "configs" / "data" / "folder.yaml").read_text().replace("data/my_images/train", "/edited/train"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    found = _probe(site, elsewhere)
    assert found["package"].startswith(str(site))  # the installed copy runs, not the checkout
    assert found["path"] == str(edited)
    assert found["files"] == [str(source / "configs" / "data" / "folder.yaml"), str(edited)]
    assert found["seed"] == 123

    # the checkout is gone: the copy packaged at install time (seed 0)
    source.rename(tmp_path / "moved")
    found = _probe(site, elsewhere)
    packaged = site / "mergevq" / "configs"
    assert found["path"] == str(packaged / "extract" / "base.yaml")
    assert found["files"] == [str(packaged / "data" / "folder.yaml"), str(packaged / "extract" / "base.yaml")]
    assert found["seed"] == 0
