"""One-pass jobs over a trained model and a data set: tokenizer evaluation, reconstructions, code
extraction, sampling, generation metrics.

They take built models and data, never YAML or argv (the CLI resolves those), and run in one
process or across the ranks :mod:`mergevq.distributed` describes (contiguous shards, rank-ordered
gathers), so N processes give the same numbers as one."""
