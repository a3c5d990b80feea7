"""User-facing errors: the CLI prints their one-line message without a traceback."""


class MergeVQError(Exception):
    """Bad input from the user (config, paths, flags). The message is one line that names the
    file, key or value at fault and what is expected."""


class ConfigError(MergeVQError):
    """A config file, key, target or override is wrong."""


class BackendError(MergeVQError):
    """The requested accelerator or precision cannot be used here."""


class WeightsError(MergeVQError):
    """A pretrained-weight artifact is missing, corrupt or fails its checksum."""


class TrainingError(MergeVQError):
    """Training cannot go on (e.g. too many non-finite losses in a row) or cannot resume."""


class OutputError(MergeVQError):
    """An output folder or file cannot be used without mixing or losing earlier results."""
