"""Export a trained tokenizer from a Stage 1 checkpoint into a ``MergeVQ.from_pretrained`` folder
(``config.json`` + ``model.safetensors``). EMA weights by default (DESIGN §4 "EMA": evaluation and
Stage 2 use them); ``raw=True`` exports the raw generator weights instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mergevq.config import from_yaml, instantiate
from mergevq.errors import ConfigError, TrainingError
from mergevq.tokenizer.model import MergeVQ, MergeVQConfig

__all__ = ["ExportResult", "export_tokenizer", "load_tokenizer", "tokenizer_from_checkpoint"]

_TOKENIZER_NODE = "model.params.tokenizer"
_PREFIX = "tokenizer."


@dataclass(frozen=True)
class ExportResult:
    directory: Path  # the from_pretrained-loadable folder
    checkpoint: Path  # the checkpoint it was read from
    weights: str  # "ema" or "raw"


def tokenizer_from_checkpoint(checkpoint: str | os.PathLike, *, raw: bool = False) -> MergeVQ:
    """The tokenizer of a ``mergevq train`` checkpoint with its EMA (default) or raw weights."""
    from mergevq.training.callbacks import EMA_STATE_KEY
    from mergevq.training.checkpoint import CONFIG_KEY, is_complete_checkpoint, load_checkpoint_file

    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"checkpoint file not found: {path}")
    if not is_complete_checkpoint(path):
        raise TrainingError(f"{path} is incomplete or not a torch checkpoint")
    state = load_checkpoint_file(path)
    if CONFIG_KEY not in state:
        raise TrainingError(f"{path} has no embedded config ({CONFIG_KEY}): not written by mergevq train")
    cfg = from_yaml(state[CONFIG_KEY], source=f"{path}:{CONFIG_KEY}")
    node = _select(cfg, _TOKENIZER_NODE, path)
    config = instantiate(node, key=_TOKENIZER_NODE)
    if not isinstance(config, MergeVQConfig):
        raise TrainingError(f"{path}: {_TOKENIZER_NODE} does not build a MergeVQ config")
    if raw:
        weights = {k[len(_PREFIX):]: v for k, v in state["state_dict"].items() if k.startswith(_PREFIX)}
    else:
        if EMA_STATE_KEY not in state:
            raise TrainingError(f"{path} has no EMA weights ({EMA_STATE_KEY}); export the raw weights with --raw")
        weights = state[EMA_STATE_KEY]
    model = MergeVQ(config=config)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise TrainingError(f"{path}: the {'raw' if raw else 'EMA'} weights do not fit the embedded config: {first}") from None
    return model.eval()


def _select(cfg, key: str, path: Path):
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if node is None:
        raise TrainingError(f"{path}: the embedded config has no {key}")
    return node


def export_tokenizer(
    run_dir: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    raw: bool = False,
) -> ExportResult:
    """Write ``checkpoint`` (default: the newest complete one of ``run_dir``) as a
    ``from_pretrained`` folder at ``out`` (default ``<run_dir>/tokenizer``, ``tokenizer-raw`` with
    ``raw``)."""
    from mergevq.training.checkpoint import CHECKPOINT_DIR, find_resume_checkpoint

    if checkpoint is None:
        if run_dir is None:
            raise ConfigError("give a run directory or --checkpoint")
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run directory not found: {run_dir}")
        checkpoint = find_resume_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    if out is None:
        base = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
        out = base / ("tokenizer-raw" if raw else "tokenizer")
    model = tokenizer_from_checkpoint(checkpoint, raw=raw)
    directory = model.save_pretrained(out)
    return ExportResult(directory=Path(directory), checkpoint=Path(checkpoint), weights="raw" if raw else "ema")


def load_tokenizer(source: str | os.PathLike, *, raw: bool = False) -> MergeVQ:
    """The tokenizer every evaluation / extraction / sampling command takes, in eval mode, from any
    of: an exported folder (``config.json`` + ``model.safetensors``), a ``mergevq train`` run
    directory (its newest complete checkpoint; EMA weights unless ``raw``) or a checkpoint file."""
    from mergevq.tokenizer.model import CONFIG_FILE
    from mergevq.training.checkpoint import CHECKPOINT_DIR, find_resume_checkpoint

    path = Path(source).expanduser()
    if path.is_file():
        return tokenizer_from_checkpoint(path, raw=raw)
    if not path.is_dir():
        raise ConfigError(f"tokenizer not found: {path} (expected an exported folder, a run directory or a .ckpt)")
    if (path / CONFIG_FILE).is_file():
        if raw:
            raise ConfigError(f"{path} is an exported tokenizer: it holds one set of weights, --raw does not apply")
        return MergeVQ.from_pretrained(path).eval()
    checkpoint = find_resume_checkpoint(path)
    if checkpoint is None:
        raise ConfigError(
            f"{path} holds neither an exported tokenizer ({CONFIG_FILE}) nor a complete checkpoint in "
            f"{path / CHECKPOINT_DIR}"
        )
    return tokenizer_from_checkpoint(checkpoint, raw=raw)
