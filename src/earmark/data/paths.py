"""Paths and tables: the file-system helpers every data adapter shares (finding audio files,
checking that what a table lists exists, reading CSV/TSV tables with clear errors)."""

from __future__ import annotations

import contextvars
import csv
import os
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from earmark.audio.io import AUDIO_EXTENSIONS, find_audio_files
from earmark.errors import DataError

# How many missing paths an error message lists before "...".
_SHOW = 3


def is_audio(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def audio_files(directory: str | Path) -> list[Path]:
    """Audio files under ``directory`` (recursively), sorted, skipping hidden files and folders
    (:func:`earmark.audio.io.find_audio_files` of one folder).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "dog" / "more").mkdir(parents=True)
    >>> for name in ("dog/a.wav", "dog/more/b.flac", "dog/.hidden.wav", "dog/notes.txt"):
    ...     (root / name).touch()
    >>> [p.relative_to(root).as_posix() for p in audio_files(root / "dog")]
    ['dog/a.wav', 'dog/more/b.flac']
    """
    return find_audio_files(directory, empty_folders=True)


def require_file(path: str | Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DataError` naming it and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"missing {what}")
    return path


def require_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(path, f"missing {what} (expected a folder)")
    return path


def absolute(path: str | Path) -> str:
    """An absolute, normalised path string (symlinks are kept, unlike ``Path.resolve``)."""
    return os.path.abspath(path)


def missing_files(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if not os.path.isfile(p)]


_MISSING_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("missing_allowed",
                                                                       default=False)


@contextmanager
def missing_files_allowed():
    """Within the block, data sets load with files missing: commands that score item by item
    (``earmark eval``) then skip and report each, instead of refusing the whole set."""
    token = _MISSING_ALLOWED.set(True)
    try:
        yield
    finally:
        _MISSING_ALLOWED.reset(token)


def check_audio_exists(paths: Iterable[str], listed_in: str | Path) -> None:
    """Raise one :class:`DataError` for all audio files that ``listed_in`` names but that are absent.

    The message gives how many are missing and the first few, so a half-finished download
    is recognised at once rather than one file at a time during training. Inside
    :func:`missing_files_allowed` nothing is raised.
    """
    if _MISSING_ALLOWED.get():
        return
    paths = list(paths)
    missing = missing_files(paths)
    if missing:
        raise DataError(listed_in, f"{describe_missing(missing, len(paths))}")


def describe_missing(missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:_SHOW]) + (", ..." if len(missing) > _SHOW else "")
    return f"{len(missing)} of {total} listed audio files are missing: {shown}"


def read_table(path: str | Path, columns: Iterable[str], delimiter: str = ",") -> list[dict]:
    """Rows of a CSV/TSV file with a header, as dicts; a :class:`DataError` if a column is absent.

    >>> import tempfile
    >>> table = Path(tempfile.mkdtemp()) / "esc50.csv"
    >>> _ = table.write_text("filename,fold,target\\n1-100-A-0.wav,1,0\\n")
    >>> read_table(table, ["filename", "fold"])[0]["fold"]
    '1'
    >>> read_table(table, ["category"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    earmark.errors.DataError: ...esc50.csv: missing column(s) category; the header has filename, fold, target
    """
    header, rows = read_rows(path, delimiter)
    absent = [c for c in columns if c not in header]
    if absent:
        raise DataError(path, f"missing column(s) {', '.join(absent)}; the header has "
                        f"{', '.join(header) or 'nothing'}")
    return rows


def read_rows(path: str | Path, delimiter: str = ",") -> tuple[list[str], list[dict]]:
    """(header, rows) of a table with a header line: names and values stripped, every
    column kept (see :func:`read_table` for one that must have given columns)."""
    path = require_file(path, "table")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        return header, [{k: (v or "").strip() for k, v in row.items() if k is not None}
                        for row in reader]
