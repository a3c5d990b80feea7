"""torchvision (and what imports it) must import on a CPU-only torch build (ENVIRONMENT.md)."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

THIRD_PARTY = "import torchvision, torchvision.transforms.v2, lightning, timm, lpips, torch_fidelity, torchmetrics"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_hook_makes_third_party_imports_work():
    out = _run("import _torchvision_compat as c; c.install_hook(); " + THIRD_PARTY + "; print('ok')")
    assert out.returncode == 0, out.stderr[-2000:]


def test_importing_mergevq_first_is_enough():
    out = _run("import mergevq; " + THIRD_PARTY + "; print('ok')")
    assert out.returncode == 0, out.stderr[-2000:]


def test_pth_hook_installed_by_a_regular_install():
    site = Path(sysconfig.get_paths()["purelib"])
    if not (site / "mergevq-torchvision-compat.pth").exists():
        pytest.skip("editable/development install: the .pth hook is placed only by `pip install .`")
    out = _run(THIRD_PARTY + "; print('ok')")
    assert out.returncode == 0, out.stderr[-2000:]


def test_interpreter_start_does_not_import_torch():
    out = _run("import sys; print('torch' in sys.modules)")
    assert out.stdout.strip() == "False"
