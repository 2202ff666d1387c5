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


class HeaderError(AudioError):
    """An audio file whose header holds a value that cannot be right: a sample rate, a
    channel count or a length outside what earmark takes (see
    :func:`earmark.audio.packed.check_header`). Decoding it would fail or cost far more than
    the file's size suggests."""


class TooLongError(HeaderError):
    """Audio whose header says it is longer than the caller takes."""


class DataError(EarmarkError, ValueError):
    """A data set, manifest or label file that does not have the expected layout."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(EarmarkError, ValueError):
    """A model directory, checkpoint or model name that cannot be used."""


class ConfigError(EarmarkError, ValueError):
    """A configuration file with a field that is missing, unknown, of the wrong type or
    contradicted by what it describes: a run's ``train_config.json``, for instance.

    ``str(err)`` reads ``"<path>: <field>: <reason>"`` (``"<path>: <reason>"`` for the file
    as a whole); ``field`` is dotted for nested values (``"frontend.n_mels"``).
    """

    def __init__(self, path: str | Path, field: str | None, reason: str):
        self.path = str(path)
        self.field = field
        self.reason = reason
        super().__init__(f"{self.path}: {field}: {reason}" if field else f"{self.path}: {reason}")


class ModelConfigError(ConfigError, ModelError):
    """A model directory's ``config.json`` (or a training checkpoint's model config) that
    cannot describe its model; a :class:`ModelError` as every other reason a model fails to
    load."""
