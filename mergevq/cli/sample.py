"""``mergevq sample`` (placeholder until issue #6 lands)."""

from mergevq.cli import pending

_COMMAND = pending.command("sample", "class-conditional MergeAR sampling to PNGs and an ADM-layout npz", 6)
add_parser = _COMMAND.add_parser
