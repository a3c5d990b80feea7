"""``mergevq experiment NAME``: the paper's claims measured at demo scale (README "What the method does
at small scale"). Each experiment is a module with a ``Settings`` dataclass (read from
``configs/experiments/NAME.yaml``) and ``run(settings, context) -> ExperimentReport``."""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module; the config of each is configs/experiments/<name>.yaml
EXPERIMENTS: dict[str, str] = {
    "mergear_vs_causal": "mergevq.experiments.mergear_vs_causal",
    "alignment": "mergevq.experiments.alignment",
    "k_sweep": "mergevq.experiments.k_sweep",
    "recovery": "mergevq.experiments.recovery",
}


def experiment_module(name: str) -> ModuleType:
    from mergevq.errors import ConfigError

    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; valid: {', '.join(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
