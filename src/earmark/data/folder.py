"""``folder:DIR``: one subfolder per class, plus the file-system helpers every adapter shares.

Layout::

    DIR/dog/a.wav
    DIR/dog/more/b.flac       # files are found recursively inside a class folder
    DIR/rain/c.wav

Every audio file under ``DIR/<class>/`` becomes one single-label item. Folders whose name
starts with ``.`` or ``_`` (``_background_noise_``, ``.cache``) are not classes; files lying
directly in ``DIR`` belong to no class and are ignored with a warning.

The split is a deterministic function of the file's path relative to ``DIR``: the SHA-1 of
that path (with ``/`` separators) modulo 10 puts 10 % of the files in ``test`` (0), 10 % in
``valid`` (1) and the rest in ``train``. Adding or removing a file never moves another one,
and the split is the same on every machine. Small classes may end up with no test file.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

from earmark.audio.io import AUDIO_EXTENSIONS
from earmark.data.manifest import Item, Manifest
from earmark.errors import DataError

# How many missing paths an error message lists before "...".
_SHOW = 3


def is_audio(path: str | Path) -> bool:
    return Path(path).suffix.lower() in AUDIO_EXTENSIONS


def audio_files(directory: str | Path) -> list[Path]:
    """Audio files under ``directory`` (recursively), sorted, skipping hidden files and folders.

    >>> audio_files("data/dog")  # doctest: +SKIP
    [PosixPath('data/dog/a.wav'), PosixPath('data/dog/more/b.flac')]
    """
    # Not earmark.audio.io.find_audio_files: it resolves every path to drop duplicates, which
    # costs seconds on the 100k files of Speech Commands.
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if is_audio(f) and not f.startswith(".")]
    return sorted(found)


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


def check_audio_exists(paths: Iterable[str], listed_in: str | Path) -> None:
    """Raise one :class:`DataError` for all audio files that ``listed_in`` names but that are absent.

    The message gives how many are missing and the first few, so a half-finished download
    is recognised at once rather than one file at a time during training.
    """
    paths = list(paths)
    missing = missing_files(paths)
    if missing:
        raise DataError(listed_in, f"{describe_missing(missing, len(paths))}")


def describe_missing(missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:_SHOW]) + (", ..." if len(missing) > _SHOW else "")
    return f"{len(missing)} of {total} listed audio files are missing: {shown}"


def read_table(path: str | Path, columns: Iterable[str], delimiter: str = ",") -> list[dict]:
    """Rows of a CSV/TSV file with a header, as dicts; a :class:`DataError` if a column is absent.

    >>> read_table("meta/esc50.csv", ["filename", "fold"])[0]["fold"]  # doctest: +SKIP
    '1'
    """
    path = require_file(path, "table")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        absent = [c for c in columns if c not in header]
        if absent:
            raise DataError(path, f"missing column(s) {', '.join(absent)}; the header has "
                            f"{', '.join(header) or 'nothing'}")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def hash_split(relative_path: str) -> str:
    """``train``/``valid``/``test`` (80/10/10) from the SHA-1 of a ``/``-separated path."""
    bucket = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def load(root: str) -> Manifest:
    """A manifest of ``root/<class>/**/<audio>``, one single-label item per file.

    >>> m = load("sounds/")  # doctest: +SKIP
    >>> m.labels, len(m.split("train"))  # doctest: +SKIP
    (['dog', 'rain'], 160)
    """
    root_path = require_dir(root, "class folders")
    classes = sorted(d.name for d in root_path.iterdir()
                     if d.is_dir() and not d.name.startswith((".", "_")))
    stray = [p.name for p in root_path.iterdir() if p.is_file() and is_audio(p)]
    if stray:
        warnings.warn(f"{root_path}: {len(stray)} audio files outside any class folder are "
                      f"ignored (e.g. {stray[0]})", stacklevel=2)
    items = []
    for name in classes:
        for path in audio_files(root_path / name):
            rel = path.relative_to(root_path).as_posix()
            items.append(Item(path=absolute(path), labels=(name,), split=hash_split(rel)))
    if not items:
        raise DataError(root_path, "no audio files found in class subfolders "
                        f"(extensions {', '.join(AUDIO_EXTENSIONS)})")
    used = sorted({it.labels[0] for it in items})
    return Manifest(items=items, labels=used, multi_label=False, name=f"folder:{root_path.name}")
