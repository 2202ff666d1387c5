"""Exceptions earmark raises for bad input; each names the file and the reason."""

from __future__ import annotations

from pathlib import Path


class EarmarkError(Exception):
    """Base class of earmark's own errors."""


class AudioError(EarmarkError, ValueError):
    """An audio file that cannot be used: unreadable, empty, NaN samples, ...

    ``str(err)`` reads ``"<path>: <reason>"`` so a batch command can print it as is.
    """

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DataError(EarmarkError, ValueError):
    """A data set, manifest or label file that does not have the expected layout."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(EarmarkError, ValueError):
    """A model directory, checkpoint or model name that cannot be used."""
