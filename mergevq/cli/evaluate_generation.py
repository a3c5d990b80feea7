"""``mergevq evaluate-generation`` (placeholder until issue #6 lands)."""

from mergevq.cli import pending

_COMMAND = pending.command("evaluate-generation", "FID / IS / KID / precision-recall of samples vs a reference", 6)
add_parser = _COMMAND.add_parser
