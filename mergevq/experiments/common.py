"""What every ``mergevq experiment NAME`` shares: its settings (``configs/experiments/NAME.yaml``), the
embedded demo data, the demo tokenizer it starts from, and the report it writes.

Settings. ``configs/experiments/NAME.yaml`` holds an ``experiment`` section (one key per field of the
experiment's ``Settings`` dataclass: an unknown, missing or mistyped key is a one-line error naming
the file) and a ``quick`` list of ``KEY=VALUE`` overrides that ``--quick`` applies first (the CI
form: a few steps, the same code path). Overrides on the command line win over both.

Report. Every experiment writes into its ``--out`` folder ``report.json`` (its numbers, settings,
claims and timings), ``report.md`` (a Markdown table, the claims with the measured values, and the
plots) and one or more matplotlib PNGs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from mergevq.errors import ConfigError

Log = Callable[[str], object]
S = TypeVar("S")

TOKENIZER_CONFIG = "demo/tokenizer.yaml"  # the demo tokenizer every experiment starts from (or trains)


@dataclass(frozen=True)
class Claim:
    """A statement of the paper tested at this scale, whether it held, and the numbers that decide it."""

    statement: str
    held: bool
    measured: str


@dataclass(frozen=True)
class ExperimentReport:
    name: str
    title: str
    command: str  # the command line that produced it
    settings: dict[str, Any]
    numbers: dict[str, Any]  # everything measured (JSON-able)
    table: str  # Markdown
    plots: tuple[Path, ...]
    claims: tuple[Claim, ...]
    seconds: float
    notes: tuple[str, ...] = field(default=())  # what a reader must know to read the numbers

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["plots"] = [p.name for p in self.plots]
        return out

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", f"Command: `{self.command}` ({self.seconds / 60:.1f} min)", "", self.table, ""]
        if self.claims:
            lines += ["| claim | held | measured |", "|---|---|---|"]
            lines += [f"| {c.statement} | {'yes' if c.held else 'no'} | {c.measured} |" for c in self.claims]
            lines.append("")
        lines += [f"- {n}" for n in self.notes]
        lines += ["", *[f"![{p.stem}]({p.name})" for p in self.plots]]
        return "\n".join(lines).rstrip() + "\n"


def write_report(report: ExperimentReport, out: Path) -> tuple[Path, Path]:
    """``out/report.json`` and ``out/report.md``; non-finite floats are written as null."""
    json_path, md_path = out / "report.json", out / "report.md"
    json_path.write_text(json.dumps(_finite(report.to_dict()), indent=2) + "\n")
    md_path.write_text(report.markdown())
    return json_path, md_path


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass(frozen=True)
class ExperimentContext:
    """What ``mergevq experiment`` hands an experiment besides its settings."""

    out: Path  # the output folder (claimed: empty or this experiment's own earlier output)
    command: str  # the command line, recorded in the report
    tokenizer: Path | None  # --tokenizer: a demo-tokenizer checkpoint / run folder to reuse instead of training one
    quick: bool
    log: Log
    started: float  # time.perf_counter() at the start

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


# --------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class LoadedSettings:
    settings: Any
    files: tuple[str, ...]
    overrides: tuple[str, ...]  # the quick ones first, then the user's


def load_settings(cls: type[S], config: Path, *, quick: bool, overrides: Sequence[str]) -> LoadedSettings:
    """The ``experiment`` section of ``config`` as a ``cls`` instance (the ``quick`` overrides first
    when ``quick``, then ``overrides``)."""
    from omegaconf import OmegaConf

    from mergevq.config import load_with_origins, section_values

    base = load_with_origins([config], [])
    quick_items: list[str] = []
    if quick:
        node = base.select("quick")
        items = OmegaConf.to_container(node, resolve=True) if node is not None else []
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{base.origin('quick')}: quick must be a list of KEY=VALUE overrides")
        quick_items = items
    applied = (*quick_items, *overrides)
    loaded = load_with_origins([config], list(applied))
    return LoadedSettings(settings=cls(**section_values(cls, loaded, "experiment")), files=tuple(loaded.files),
                          overrides=applied)


# --------------------------------------------------------------------------------------------------
# the demo data


@dataclass(frozen=True)
class DemoData:
    train: Dataset  # the training crops as stored (no random flips): items {"image", "class_label", ...}
    validation: Dataset  # the held-out crops, same items
    val_images: torch.Tensor  # (N, 3, H, W) in [-1, 1], the held-out crops
    val_labels: torch.Tensor  # (N,) int64
    train_images: torch.Tensor  # (M, 3, H, W) in [-1, 1]
    train_labels: torch.Tensor  # (M,)
    classes: tuple[str, ...]
    config_files: tuple[str, ...]


def _as_float_images(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, H, W, 3) u8 -> (N, 3, H, W)


def demo_data(overrides: Sequence[str] = ()) -> DemoData:
    """The demo crops through the data section of the demo tokenizer config (the path training uses)."""
    from omegaconf import OmegaConf

    from mergevq.config import instantiate, load_with_origins
    from mergevq.paths import resolve_config

    loaded = load_with_origins([resolve_config(TOKENIZER_CONFIG)], list(overrides))
    node = OmegaConf.to_container(loaded.select("data.params.train"), resolve=True)
    node["params"]["flip"] = False
    train = instantiate(OmegaConf.create(node), key="data.params.train", origins=loaded.origins)
    validation = instantiate(loaded.select("data.params.validation"), key="data.params.validation",
                             origins=loaded.origins)
    return DemoData(
        train=train, validation=validation, val_images=_as_float_images(validation.images),
        val_labels=torch.from_numpy(np.asarray(validation.labels)).long(),
        train_images=_as_float_images(train.images), train_labels=torch.from_numpy(np.asarray(train.labels)).long(),
        classes=tuple(train.classes), config_files=tuple(loaded.files))


# --------------------------------------------------------------------------------------------------
# the demo tokenizer


@dataclass(frozen=True)
class TrainedTokenizer:
    tokenizer: Any  # MergeVQ, EMA weights, eval mode
    checkpoint: Path
    train_seconds: float  # 0 when reused
    reused: bool


def demo_tokenizer(*, run_dir: Path, reuse: Path | None, overrides: Sequence[str], log: Log) -> TrainedTokenizer:
    """``reuse`` (a checkpoint or a run folder of ``configs/demo/tokenizer.yaml``) loaded as is, else
    that config trained into ``run_dir`` with ``overrides``."""
    from mergevq.paths import resolve_config
    from mergevq.training.export import tokenizer_from_checkpoint
    from mergevq.training.run import train

    if reuse is not None:
        checkpoint = latest_checkpoint(reuse)
        log(f"tokenizer: reusing {checkpoint}")
        return TrainedTokenizer(tokenizer=tokenizer_from_checkpoint(checkpoint).eval(), checkpoint=checkpoint,
                                train_seconds=0.0, reused=True)
    log(f"tokenizer: training {TOKENIZER_CONFIG} into {run_dir} ({' '.join(overrides) or 'no overrides'})")
    start = time.perf_counter()
    result = train([resolve_config(TOKENIZER_CONFIG)], list(overrides), run_dir=run_dir)
    seconds = time.perf_counter() - start
    if result.last_checkpoint is None:
        raise RuntimeError(f"training wrote no checkpoint into {run_dir}")
    return TrainedTokenizer(tokenizer=tokenizer_from_checkpoint(result.last_checkpoint).eval(),
                            checkpoint=Path(result.last_checkpoint), train_seconds=seconds, reused=False)


def latest_checkpoint(path: Path) -> Path:
    """``path`` itself when it is a file, else the newest ``checkpoints/*.ckpt`` of a run folder."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted((path / "checkpoints").glob("*.ckpt")) if path.is_dir() else []
    if not found:
        raise ConfigError(f"--tokenizer {path}: expected a .ckpt file or a run folder with checkpoints/*.ckpt")
    return found[-1]


# --------------------------------------------------------------------------------------------------
# plots


def figure(ncols: int = 1, *, nrows: int = 1, size: tuple[float, float] = (4.2, 3.2)):
    """A matplotlib figure on the Agg backend (no display needed) and its axes (a flat list)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, [a for row in axes for a in row]


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Cells: floats with 4 significant digits unless already strings."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "-" if not math.isfinite(v) else f"{v:.4g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["Claim", "DemoData", "ExperimentContext", "ExperimentReport", "LoadedSettings", "TrainedTokenizer", "demo_data",
           "demo_tokenizer", "figure", "latest_checkpoint", "load_settings", "markdown_table", "save_figure",
           "write_report"]
