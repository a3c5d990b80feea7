"""Where mergevq finds its configs and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def cache_root() -> Path:
    """Root of every mergevq cache (demo data, converted weights): ``$MERGEVQ_CACHE`` or
    ``~/.cache/mergevq``."""
    env = os.environ.get("MERGEVQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mergevq"


def configs_root() -> Path:
    """``$MERGEVQ_CONFIGS``, else the checkout's ``configs/`` (source tree), else the copy that a
    regular install places inside the package."""
    env = os.environ.get("MERGEVQ_CONFIGS")
    if env:
        return Path(env).expanduser()
    checkout = _PACKAGE.parent
    # A source checkout has setup.py beside the package; an installed copy sits in site-packages,
    # where a folder named "configs" could belong to anybody.
    if (checkout / "setup.py").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    return _PACKAGE / "configs"


def resolve_config(name: str | os.PathLike) -> Path:
    """A config path as given if it exists, else relative to :func:`configs_root` (``.yaml``
    optional), so ``mergevq train demo/tokenizer`` works from any directory."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (configs_root() / path, configs_root() / f"{path}.yaml"):
        if candidate.is_file():
            return candidate
    return path  # the loader reports the missing file with its name
