"""User-facing errors. `str(err)` is the one-line message: what is wrong, where, what to do.

The command lines catch `SorterError`, print `error: <message>` and exit with status 2; a
bare traceback is reserved for bugs.
"""

from __future__ import annotations


class SorterError(Exception):
    """A mistake the user can fix (bad file, key, port...)."""

    exit_code = 2


class ImageError(SorterError):
    """An image file that cannot be read or decoded."""


class ModelError(SorterError):
    """A model file or its metadata is missing, corrupt or inconsistent."""


class ConfigError(SorterError):
    """A configuration file or option is invalid."""


class DatasetError(SorterError):
    """A training or evaluation dataset is unusable."""


class SourceError(SorterError):
    """A camera, video or image-folder source cannot deliver frames."""
