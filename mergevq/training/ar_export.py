"""MergeAR out of a Stage 2 run: ``export_mergear`` writes a ``MergeAR.from_pretrained`` folder
(``config.json`` + ``model.safetensors``) from a checkpoint, and ``load_mergear`` is the one loader
every sampling / evaluation command takes (export folder | run directory | ``.ckpt``).

Weights: the EMA (``checkpoint["ema_state_dict"]``) when the run kept one, else the raw weights;
``raw=True`` always takes the raw ones. The architecture comes from the checkpoint's embedded config
(``model.params.model``), so a checkpoint is self-describing.
"""

from __future__ import annotations

import os
from pathlib import Path

from mergevq.ar.model import CONFIG_FILE, MergeAR, MergeARConfig
from mergevq.errors import ConfigError

__all__ = ["EXPORT_DIR", "export_mergear", "load_mergear", "mergear_from_checkpoint"]

EXPORT_DIR = "mergear"  # default export folder inside the run directory
_MODEL_NODE = "model.params.model"
_PREFIX = "model."


def mergear_from_checkpoint(checkpoint: str | os.PathLike, *, raw: bool = False) -> MergeAR:
    """The MergeAR of a Stage 2 ``mergevq train`` checkpoint (EMA weights when present, unless
    ``raw``), in eval mode on the CPU."""
    from mergevq.training.checkpoint import model_from_checkpoint

    return model_from_checkpoint(checkpoint, node=_MODEL_NODE, prefix=_PREFIX, model_type=MergeAR,
                                 config_type=MergeARConfig, raw=raw, ema_required=False)


def _newest_checkpoint(run_dir: Path) -> Path:
    from mergevq.training.checkpoint import CHECKPOINT_DIR, find_resume_checkpoint

    found = find_resume_checkpoint(run_dir)
    if found is None:
        raise ConfigError(f"no complete checkpoint in {run_dir / CHECKPOINT_DIR}")
    return found


def export_mergear(
    run_dir: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    raw: bool = False,
) -> Path:
    """Write ``checkpoint`` (default: the newest complete one of ``run_dir``) as a ``from_pretrained``
    folder at ``out`` (default ``<run_dir>/mergear``, ``mergear-raw`` with ``raw``); returns it. ``out``
    must be new, empty or an earlier export (replaced): see ``mergevq.training.export.plan_export_dir``."""
    from mergevq.training.export import plan_export_dir

    if checkpoint is None:
        if run_dir is None:
            raise ConfigError("give a run directory or a checkpoint")
        if not Path(run_dir).is_dir():
            raise ConfigError(f"run directory not found: {run_dir}")
        checkpoint = _newest_checkpoint(Path(run_dir))
    given = out is not None
    if out is None:
        base = Path(run_dir) if run_dir is not None else Path(checkpoint).parent
        out = base / (f"{EXPORT_DIR}-raw" if raw else EXPORT_DIR)
    plan = plan_export_dir(out, checkpoint=checkpoint, raw=raw, given=given)  # refuse before the slow load
    model = mergear_from_checkpoint(checkpoint, raw=raw)
    plan.apply()
    return Path(model.save_pretrained(out))


def load_mergear(source: str | os.PathLike) -> MergeAR:
    """MergeAR in eval mode from an exported folder (``config.json`` + ``model.safetensors``), a
    ``mergevq train`` run directory (its newest complete checkpoint, EMA weights if the run kept
    them) or a checkpoint file."""
    path = Path(source).expanduser()
    if path.is_file():
        return mergear_from_checkpoint(path)
    if not path.is_dir():
        raise ConfigError(f"MergeAR not found: {path} (expected an exported folder, a run directory or a .ckpt)")
    if (path / CONFIG_FILE).is_file():
        return MergeAR.from_pretrained(path).eval()
    return mergear_from_checkpoint(_newest_checkpoint(path))
