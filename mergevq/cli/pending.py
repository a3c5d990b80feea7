"""Subcommands that a later issue implements: they say so plainly and exit with status 2."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class PendingCommand:
    name: str
    help: str
    issue: int

    def add_parser(self, subparsers) -> None:
        parser = subparsers.add_parser(self.name, help=f"{self.help} [not implemented yet]")
        parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(run=self.run)

    def run(self, args: argparse.Namespace) -> int:  # noqa: ARG002 - same signature as real commands
        print(
            f"mergevq {self.name}: not implemented yet; it arrives with issue #{self.issue}. "
            "Nothing was run.",
            file=sys.stderr,
        )
        return 2


def command(name: str, help: str, issue: int) -> PendingCommand:  # noqa: A002 - argparse's word
    return PendingCommand(name=name, help=help, issue=issue)
