"""``mergevq linear-probe`` (placeholder until issue #5 lands)."""

from mergevq.cli import pending

_COMMAND = pending.command("linear-probe", "linear probe of the frozen encoder's [CLS] or pooled features", 5)
add_parser = _COMMAND.add_parser
