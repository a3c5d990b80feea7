"""Errors of the data package (taming never imports mergevq, so it has its own)."""


class DataError(Exception):
    """A dataset cannot be built: missing folder, empty file list, no readable image. One line."""
