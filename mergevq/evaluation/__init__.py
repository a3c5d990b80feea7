"""Evaluation passes over a model and a data set (tokenizer metrics, generation metrics).

They take built models and data, never YAML or argv (the CLI resolves those), and run in one
process or across the ranks :mod:`mergevq.distributed` describes."""
