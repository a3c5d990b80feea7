"""``mergevq extract-codes`` (placeholder until issue #6 lands)."""

from mergevq.cli import pending

_COMMAND = pending.command("extract-codes", "run a tokenizer over a dataset and store Stage 2 token sequences", 6)
add_parser = _COMMAND.add_parser
