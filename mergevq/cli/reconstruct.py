"""``mergevq reconstruct`` (placeholder until issue #5 lands)."""

from mergevq.cli import pending

_COMMAND = pending.command("reconstruct", "write original / reconstruction pairs and merge-group pictures", 5)
add_parser = _COMMAND.add_parser
