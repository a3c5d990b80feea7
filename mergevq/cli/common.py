"""The flags every subcommand spells the same way (issue #13 item 5) and the config-file report.

Meaning everywhere: ``--config NAME|FILE`` the task config; ``--out DIR`` the command's output folder;
``--batch-size`` images (or samples) per forward pass and process; ``--num-workers`` DataLoader
workers per process; ``--devices`` devices per node; ``--accelerator`` auto|cpu|cuda|npu;
``--precision`` 32|bf16-mixed|16-mixed; ``--seed`` the global seed of the command. Each common flag
sets one config key of its subcommand (:class:`FlagKeys`), so it can also be written as
``KEY=VALUE``; given both, the flag wins.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import dataclass, fields

__all__ = ["FlagKeys", "add_common_flags", "flag_overrides", "print_config_files"]


@dataclass(frozen=True)
class FlagKeys:
    """The config key each common flag sets in one subcommand; None: the subcommand does not offer it."""

    batch_size: str | None = None
    num_workers: str | None = None
    devices: str | None = None
    accelerator: str | None = None
    precision: str | None = None
    seed: str | None = None


# flag name, argparse type, metavar, what it means (the help adds the key)
_FLAGS: dict[str, tuple[type, str, str]] = {
    "batch_size": (int, "N", "images (or samples) per forward pass and process"),
    "num_workers": (int, "N", "DataLoader workers per process"),
    "devices": (str, "N|auto", "devices per node"),
    "accelerator": (str, "auto|cpu|cuda|npu", "the device type"),
    "precision": (str, "32|bf16-mixed|16-mixed", "numeric precision"),
    "seed": (int, "N", "the global seed"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_common_flags(parser: argparse.ArgumentParser, *, keys: FlagKeys) -> None:
    """--batch-size, --num-workers, --devices, --accelerator, --precision, --seed for the keys that are not
    None; each help text names its config key (e.g. "(eval.batch_size)"). Default None = the config's value."""
    for field in fields(keys):
        key = getattr(keys, field.name)
        if key is None:
            continue
        kind, metavar, meaning = _FLAGS[field.name]
        # values are checked where the key is read (mergevq.backend), with the same message as in a config
        parser.add_argument(_flag(field.name), dest=field.name, type=kind, default=None, metavar=metavar,
                            help=f"{meaning} ({key}; default: the config's)")


def _value(name: str, value: object) -> str:
    """The override's right-hand side: parsed as YAML by mergevq.config, so strings are quoted
    (precision "32" stays a string) and integers stay integers."""
    if name == "devices":
        text = str(value)
        return text if text.isdigit() else json.dumps(text)
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


def flag_overrides(args: argparse.Namespace, keys: FlagKeys) -> list[str]:
    """["eval.batch_size=64", ...] for each common flag given on the command line, in a fixed order; the
    caller appends them AFTER the user's KEY=VALUE overrides (the explicit flag wins)."""
    overrides: list[str] = []
    for field in fields(keys):
        key = getattr(keys, field.name)
        value = getattr(args, field.name, None)
        if key is not None and value is not None:
            overrides.append(f"{key}={_value(field.name, value)}")
    return overrides


def print_config_files(files: Iterable[str], *, is_main: bool = True) -> None:
    """One ``config: /abs/path.yaml`` line per composed file, in composition order, on stdout (rank 0;
    stdout, so that stderr keeps only warnings and the one-line error of a failed run)."""
    if not is_main:
        return
    for path in files:
        print(f"config: {path}", flush=True)
