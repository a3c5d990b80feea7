"""Every YAML under configs/ composes, and every top-level object node in it instantiates (§9).

Files whose name starts with ``_`` are fragments and are skipped. A file whose nodes need something
that is not in the repository (e.g. a dataset folder on disk) gets tiny overrides in ``OVERRIDES``,
keyed by its path relative to ``configs/``; ``{tmp_path}`` in an override is replaced by a per-test
temporary directory, which the optional ``SETUP`` function for that file fills first (e.g. with a
few tiny images). Keep both small: the point is that every shipped config composes and builds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from omegaconf import DictConfig

from mergevq import config as C

from _ar_training import write_codes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tiny_images(*folders: Path, count: int = 2) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / f"img{i}.JPEG", format="JPEG")


def _imagenet_layout(root: Path) -> None:
    _tiny_images(
        root / "train" / "n00000001", root / "train" / "n00000002", root / "val" / "n00000001"
    )


def _image_folders(root: Path) -> None:
    _tiny_images(root / "train" / "cat", root / "train" / "dog", root / "val" / "cat")


# Stage 1 recipes (configs/tokenizer/): ImageNet layout in tmp, the tiny model, a tiny discriminator,
# a randomly initialised LPIPS backbone and no teacher (the recipes need a local DINOv2 folder).
_TOKENIZER_VARIANTS = ("base", "G_d32", "G_d64", "GR_d32", "GR_d64", "GR_d96", "R")
_TINY_TOKENIZER = [
    "data.params.train.params.root={tmp_path}",
    "data.params.validation.params.root={tmp_path}",
    "data.params.num_workers=0",
    "model.params.tokenizer.params.preset=tiny-GR",
    "model.params.discriminator.params.ndf=8",
    "model.params.discriminator.params.n_layers=2",
    "model.params.perceptual.net=alex",
    "model.params.perceptual.random_init=true",
    "model.params.teacher=null",
    "model.params.encoder_init=null",
]
# base.yaml leaves the variant-defining keys mandatory (???)
_BASE_MANDATORY = ["run.name=base", "trainer.max_epochs=1", "model.params.lr_drop_epochs=[1]"]

# Stage 2 recipes (configs/ar/): a tiny codes folder in tmp and the tiny MergeAR preset
_AR_VARIANTS = ("GR_B", "GR_L", "GR_XL", "G_B", "G_L", "G_XL")
_TINY_AR = ["codes.root={tmp_path}", "model.params.model.params.preset=tiny"]

SETUP: dict[str, Callable[[Path], None]] = {
    "data/imagenet.yaml": _imagenet_layout,
    "data/folder.yaml": _image_folders,
    **{f"tokenizer/{name}.yaml": _imagenet_layout for name in _TOKENIZER_VARIANTS},
    "extract/base.yaml": _imagenet_layout,
    "probe/linear.yaml": _imagenet_layout,
    "probe/demo.yaml": _imagenet_layout,
    "evaluation/tokenizer.yaml": _imagenet_layout,
    "evaluation/tokenizer_demo.yaml": _imagenet_layout,
    **{f"ar/{name}.yaml": write_codes for name in (*_AR_VARIANTS, "base")},
    "demo/mergear.yaml": lambda root: write_codes(root, grid=(8, 8), num_classes=10, flip=True),
}

OVERRIDES: dict[str, list[str]] = {
    "data/imagenet.yaml": [
        "data.params.train.params.root={tmp_path}",
        "data.params.validation.params.root={tmp_path}",
    ],
    "data/folder.yaml": [
        "data.params.train.params.root={tmp_path}/train",
        "data.params.validation.params.root={tmp_path}/val",
    ],
    **{
        f"tokenizer/{name}.yaml": _TINY_TOKENIZER + (_BASE_MANDATORY if name == "base" else [])
        for name in _TOKENIZER_VARIANTS
    },
    # the task configs compose ImageNet by default; tests/test_config_groups.py swaps every data set in
    "extract/base.yaml": ["data.params.train.params.root={tmp_path}"],
    **{
        f"probe/{name}.yaml": [
            "data.params.train.params.root={tmp_path}",
            "data.params.validation.params.root={tmp_path}",
        ]
        for name in ("linear", "demo")
    },
    # eval.resolution: null means "the tokenizer's size", which the command fills in
    **{
        f"evaluation/{name}.yaml": ["eval.resolution=32", "data.params.validation.params.root={tmp_path}"]
        for name in ("tokenizer", "tokenizer_demo")
    },
    **{f"ar/{name}.yaml": _TINY_AR for name in _AR_VARIANTS},
    "ar/base.yaml": _TINY_AR + ["run.name=base", "model.params.model.params.changes.grid=[16, 16]"],
    "demo/mergear.yaml": ["demo_codes.root={tmp_path}"],
}


def _config_files() -> list[Path]:
    if not CONFIGS.is_dir():
        return []
    return sorted(
        p
        for p in CONFIGS.rglob("*")
        if p.suffix in (".yaml", ".yml") and p.is_file() and not p.name.startswith("_")
    )


FILES = _config_files()


def test_overrides_name_existing_files():
    known = {p.relative_to(CONFIGS).as_posix() for p in FILES}
    stale = (set(OVERRIDES) | set(SETUP)) - known
    assert not stale, f"OVERRIDES / SETUP name config files that do not exist: {sorted(stale)}"


@pytest.mark.parametrize(
    "relative",
    [p.relative_to(CONFIGS).as_posix() for p in FILES] or [None],
    ids=lambda r: r or "none",
)
def test_config_composes_and_instantiates(relative, tmp_path):
    if relative is None:
        pytest.skip("configs/ holds no YAML files yet")
    if relative in SETUP:
        SETUP[relative](tmp_path)
    overrides = [o.format(tmp_path=tmp_path) for o in OVERRIDES.get(relative, [])]
    loaded = C.load_with_origins(CONFIGS / relative, overrides)
    keys = [
        str(k)
        for k, v in loaded.cfg.items_ex(resolve=False)
        if isinstance(v, DictConfig) and "target" in v
    ]
    for key in keys:  # check every node before building any, so the first error is the clearest
        loaded.validate(key)
    for key in keys:
        assert loaded.instantiate(key) is not None
