"""Export a trained tokenizer from a Stage 1 checkpoint into a ``MergeVQ.from_pretrained`` folder
(``config.json`` + ``model.safetensors``). EMA weights by default (DESIGN §4 "EMA": evaluation and
Stage 2 use them); ``raw=True`` exports the raw generator weights instead.

An export folder is claimed with :mod:`mergevq.outputs` (command ``export``): exporting again into an
earlier export replaces it; any other non-empty folder is refused, never overwritten."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from mergevq.errors import ConfigError
from mergevq.outputs import OutputPlan, plan_output_dir
from mergevq.tokenizer.model import CONFIG_FILE, WEIGHTS_FILE, MergeVQ, MergeVQConfig

__all__ = ["ExportResult", "export_tokenizer", "load_tokenizer", "plan_export_dir", "tokenizer_from_checkpoint"]

EXPORT_COMMAND = "export"

_TOKENIZER_NODE = "model.params.tokenizer"
_PREFIX = "tokenizer."


@dataclass(frozen=True)
class ExportResult:
    directory: Path  # the from_pretrained-loadable folder
    checkpoint: Path  # the checkpoint it was read from
    weights: str  # "ema" or "raw"


def tokenizer_from_checkpoint(checkpoint: str | os.PathLike, *, raw: bool = False) -> MergeVQ:
    """The tokenizer of a ``mergevq train`` checkpoint with its EMA (default) or raw weights."""
    from mergevq.training.checkpoint import model_from_checkpoint

    return model_from_checkpoint(checkpoint, node=_TOKENIZER_NODE, prefix=_PREFIX, model_type=MergeVQ,
                                 config_type=MergeVQConfig, raw=raw, ema_required=True)


def plan_export_dir(out: str | os.PathLike, *, checkpoint: str | os.PathLike, raw: bool, given: bool) -> OutputPlan:
    """How ``mergevq export`` may write ``out`` (both stages write ``config.json`` + ``model.safetensors``):
    a new or empty folder, or an earlier export (replaced); anything else is a one-line OutputError.
    ``given``: the user named ``out`` (else it is the default folder inside the run), for messages.
    Call :meth:`OutputPlan.apply` once the model has loaded, just before writing."""
    return plan_output_dir(out, command=EXPORT_COMMAND, settings={"checkpoint": str(checkpoint), "raw": raw},
                           patterns=[CONFIG_FILE, WEIGHTS_FILE], resumable=False,
                           flag="--out" if given else "the default export folder")


def export_tokenizer(
    run_dir: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    raw: bool = False,
) -> ExportResult:
    """Write ``checkpoint`` (default: the newest complete one of ``run_dir``) as a
    ``from_pretrained`` folder at ``out`` (default ``<run_dir>/tokenizer``, ``tokenizer-raw`` with
    ``raw``), which must be new, empty or an earlier export (replaced): :func:`plan_export_dir`."""
    from mergevq.training.checkpoint import CHECKPOINT_DIR, find_resume_checkpoint

    if checkpoint is None:
        if run_dir is None:
            raise ConfigError("give a run directory or --checkpoint")
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run directory not found: {run_dir}")
        checkpoint = find_resume_checkpoint(run_dir)
        if checkpoint is None:
            raise ConfigError(f"no complete checkpoint in {Path(run_dir) / CHECKPOINT_DIR}")
    given = out is not None
    if out is None:
        base = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
        out = base / ("tokenizer-raw" if raw else "tokenizer")
    plan = plan_export_dir(out, checkpoint=checkpoint, raw=raw, given=given)  # refuse before the slow load
    model = tokenizer_from_checkpoint(checkpoint, raw=raw)
    plan.apply()
    directory = model.save_pretrained(out)
    return ExportResult(directory=Path(directory), checkpoint=Path(checkpoint), weights="raw" if raw else "ema")


def load_tokenizer(source: str | os.PathLike, *, raw: bool = False) -> MergeVQ:
    """The tokenizer every evaluation / extraction / sampling command takes, in eval mode, from any
    of: an exported folder (``config.json`` + ``model.safetensors``), a ``mergevq train`` run
    directory (its newest complete checkpoint; EMA weights unless ``raw``) or a checkpoint file.
    Its CNN runs channels_last, as in training (README "Performance": encode + decode 1.2x faster on a
    CPU; the same values up to float rounding)."""
    model = _load_tokenizer(source, raw=raw)
    model.set_channels_last(True)
    return model


def _load_tokenizer(source: str | os.PathLike, *, raw: bool) -> MergeVQ:
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
