"""Small file helpers shared across earmark: writes that never leave half a file behind.

Every file earmark writes goes through :func:`atomic_path` (for writers that take a path:
soundfile, safetensors, ONNX, matplotlib, Lightning) or :func:`atomic_write` (an open file):
the content lands in a temporary file with a unique name in the target's folder, is flushed
to disk, then renamed over the target. A crash leaves the old file or the new one, never a
mix, and two processes writing the same file at once each rename a whole file of their own.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temporary_name(path: str | Path) -> Path:
    """A hidden, unique name beside ``path`` that keeps its suffix (some writers choose the
    format from it): ``runs/a/metrics.json`` -> ``runs/a/.metrics.3f2a...tmp.json``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp{path.suffix}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once: setting it to read it is not thread-safe


def make_ordinary(path: str | Path) -> None:
    """Give ``path`` the permissions of a file ``open()`` (or a folder ``mkdir()``) creates:
    some writers, safetensors and ``tempfile`` among them, make theirs private to their owner."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_UMASK)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: str | Path, sync: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` (after an
    fsync unless ``sync=False``) when the block ends, removed when it raises.

    >>> with atomic_path("model.onnx") as tmp:  # doctest: +SKIP
    ...     onnx.save_model(proto, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        make_ordinary(tmp)
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_args) -> Iterator[IO]:
    """``open(path, mode)`` that replaces ``path`` only when the block ends without error.

    >>> with atomic_write("labels.csv", newline="") as f:  # doctest: +SKIP
    ...     f.write("index,mid,display_name\\n")
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write writes a new file; mode {mode!r} has no 'w'")
    if "b" not in mode:
        open_args.setdefault("encoding", "utf-8")
    with atomic_path(path, sync=False) as tmp, open(tmp, mode, **open_args) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, newlines as given)."""
    with atomic_write(path, newline="") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically.

    >>> write_json("metrics.json", {"accuracy": 0.99})  # doctest: +SKIP
    PosixPath('metrics.json')
    """
    return write_text(path, json.dumps(data, indent=2) + "\n")
