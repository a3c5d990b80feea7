"""Where mergevq finds its configs and keeps its caches.

A config NAME (``tokenizer/GR_d64``, ``.yaml`` optional) is looked up in this order:

1. a file at that path, as given (relative to the working directory);
2. ``$MERGEVQ_CONFIGS/NAME``;
3. the source checkout's ``configs/``: the checkout the package is imported from (``PYTHONPATH`` or an
   editable install), or the checkout a regular install was built from (``setup.py`` records its
   absolute path in ``mergevq/_source_checkout.txt``) while that folder still exists, so an edit
   there is what the next run reads;
4. the copy of ``configs/`` packaged inside ``mergevq`` (an install from a wheel or sdist whose
   source folder is gone).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SOURCE_CHECKOUT_FILE", "cache_root", "config_roots", "configs_root", "resolve_config"]

_PACKAGE = Path(__file__).resolve().parent
SOURCE_CHECKOUT_FILE = "_source_checkout.txt"
"""Written into the installed package by setup.py: the absolute path of the checkout it was built from."""


def cache_root() -> Path:
    """Root of every mergevq cache (demo data, converted weights): ``$MERGEVQ_CACHE`` or
    ``~/.cache/mergevq``."""
    env = os.environ.get("MERGEVQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mergevq"


def _checkout_configs() -> Path | None:
    """``configs/`` of the source checkout this package comes from, if it still exists."""
    checkout = _PACKAGE.parent
    # A checkout has setup.py beside the package; an installed copy sits in site-packages, where a
    # folder named "configs" could belong to anybody.
    if (checkout / "setup.py").is_file() and (checkout / "configs").is_dir():
        return checkout / "configs"
    record = _PACKAGE / SOURCE_CHECKOUT_FILE
    if record.is_file():
        recorded = Path(record.read_text(encoding="utf-8").strip())
        if recorded.is_absolute() and (recorded / "setup.py").is_file() and (recorded / "configs").is_dir():
            return recorded / "configs"
    return None


def config_roots() -> list[Path]:
    """The folders searched for a config name, in order (existing ones only): ``$MERGEVQ_CONFIGS``,
    the source checkout's ``configs/``, the packaged copy."""
    roots: list[Path] = []
    env = os.environ.get("MERGEVQ_CONFIGS")
    if env:
        roots.append(Path(env).expanduser().resolve())
    checkout = _checkout_configs()
    if checkout is not None:
        roots.append(checkout.resolve())
    packaged = _PACKAGE / "configs"
    if packaged.is_dir():
        roots.append(packaged)
    existing = [root for root in dict.fromkeys(roots) if root.is_dir()]
    return existing


def configs_root() -> Path:
    """The first of :func:`config_roots` (where a name is looked up first after a plain path)."""
    roots = config_roots()
    if roots:
        return roots[0]
    env = os.environ.get("MERGEVQ_CONFIGS")
    return Path(env).expanduser() if env else _PACKAGE / "configs"


def resolve_config(name: str | os.PathLike) -> Path:
    """The absolute path of config ``name`` (search order: module docstring), so ``mergevq train
    tokenizer/GR_d64`` works from any directory. A name found nowhere comes back as given: the loader
    reports the missing file with its name."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    if not path.is_absolute():
        for root in config_roots():
            for candidate in (root / path, root / f"{path}.yaml"):
                if candidate.is_file():
                    return candidate.resolve()
    return path
