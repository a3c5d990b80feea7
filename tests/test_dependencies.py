"""Dependencies point one way (DESIGN §2): layers <- tokenizer, ar <- training <- cli;
taming <- mergevq; data and metrics import no model code."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_CODE = ("mergevq.layers", "mergevq.tokenizer", "mergevq.ar", "mergevq.training", "mergevq.cli")

# package -> module prefixes it must never import
FORBIDDEN = {
    "taming": ("mergevq",),
    "mergevq/data": MODEL_CODE,
    "mergevq/metrics": MODEL_CODE,
    "mergevq/layers": ("mergevq.tokenizer", "mergevq.ar", "mergevq.training", "mergevq.cli"),
    "mergevq/tokenizer": ("mergevq.ar", "mergevq.training", "mergevq.cli"),
    "mergevq/ar": ("mergevq.training", "mergevq.cli"),
    "mergevq/inference": ("mergevq.training", "mergevq.cli"),
    "mergevq/training": ("mergevq.cli",),
    "mergevq/demo": ("mergevq.cli",),
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_static_imports_point_one_way(package):
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == p or name.startswith(p + ".") for p in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def _modules_under(package: str) -> list[str]:
    paths = sorted((ROOT / package).rglob("*.py"))
    return [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in paths]


@pytest.mark.parametrize("package, forbidden", [("taming", ("mergevq",)),
                                                ("mergevq/data", MODEL_CODE),
                                                ("mergevq/metrics", MODEL_CODE)])
def test_runtime_imports_point_one_way(package, forbidden):
    """Transitive imports too: import every module of the package in a fresh interpreter."""
    modules = _modules_under(package)
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({forbidden!r}))\n"
        "print('\\n'.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    # mergevq itself may be imported as a parent package of mergevq.data (its __init__ is light).
    loaded = [m for m in out.stdout.split() if m]
    assert not loaded, f"{package} pulled in {loaded}"
