"""Small file helpers shared across earmark: writes that never leave half a file behind.

Every file earmark writes goes through :func:`atomic_path` (for writers that take a path:
soundfile, safetensors, ONNX, matplotlib, Lightning) or :func:`atomic_write` (an open file):
the content lands in a temporary file with a unique name in the target's folder, is flushed
to disk, then renamed over the target. A crash leaves the old file or the new one, never a
mix, and two processes writing the same file at once each rename a whole file of their own.
What a killed writer leaves behind, its temporary, goes at the next write to that folder
(:func:`remove_leftovers`). Files come out with the permissions ``open()`` gives (0666 less
the umask), folders with those of ``mkdir()``.

Configuration files are read with :func:`read_json` and checked by :func:`check_fields`
against a small schema (field -> type, as a dataclass annotates it), so that a wrong field
is reported with the file, the field and what was expected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import os
import re
import shutil
import socket
import time
import types
import typing
import uuid
import zlib
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from earmark.errors import ConfigError


def _machine() -> str:
    """8 hex digits that name this machine and its process-id namespace: a pid in a
    temporary's name only says something about processes where both are the same (run
    folders may sit on a disk that several machines or containers share)."""
    ident = socket.gethostname()
    with contextlib.suppress(OSError):
        ident += os.readlink("/proc/self/ns/pid")  # Linux; containers have their own
    return f"{zlib.crc32(ident.encode()):08x}"


_MACHINE = _machine()


def temporary_name(path: str | Path) -> Path:
    """A hidden, unique name beside ``path`` that keeps its suffix (some writers choose the
    format from it) and names its writer (machine and pid, see :func:`remove_leftovers`):
    ``runs/a/metrics.json`` -> ``runs/a/.metrics.1c9e27d0-4242-3f2a....tmp.json``."""
    path = Path(path)
    return path.with_name(
        f".{path.stem}.{_MACHINE}-{os.getpid()}-{uuid.uuid4().hex[:16]}.tmp{path.suffix}")


# temporary_name's names; before they held machine and pid, 32 hex digits and no writer
_TEMPORARY = re.compile(
    r"\..+\.(?:(?P<machine>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{16}|[0-9a-f]{32})"
    r"\.tmp(?:\.[^.]*)?")
LEFTOVER_AGE = 3600.0  # s untouched after which a temporary of another machine is a leftover
_cleaned: set[str] = set()  # folders this process has already cleaned


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (POSIX; elsewhere: assumed)."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _leftover(entry: os.DirEntry, now: float) -> bool:
    found = _TEMPORARY.fullmatch(entry.name)
    if found is None:
        return False
    if found["machine"] == _MACHINE:
        # written on this machine: a leftover once its writer is gone, at once (a resumed run
        # does not wait an hour for the space of a killed one's checkpoint)
        return not process_alive(int(found["pid"]))
    # another machine's (or an older earmark's) writer cannot be asked: a write in progress
    # touches its file, so one untouched for an hour is taken as dead
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > LEFTOVER_AGE
    except OSError:  # gone meanwhile
        return False


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder`` (files, and the hidden
    folders of ``save_model_dir``); returns what went.

    Only names :func:`temporary_name` makes count, and never one whose writer may still run:
    one of this machine goes when the process its name holds is gone, one of another
    machine when it has not been touched for :data:`LEFTOVER_AGE`. A folder is cleaned at the
    first write of each process (thousands of writes to one folder list it once).
    """
    key = os.path.abspath(folder)  # not resolve(): this runs before every write
    if key in _cleaned:
        return []
    _cleaned.add(key)
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(key))
    except OSError:
        return []
    for entry in entries:
        if not _leftover(entry, now):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:  # another process cleaned it first, or it is not ours to remove
            continue
        removed.append(Path(entry.path))
    return removed


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

    >>> with atomic_path("model.bin") as tmp:
    ...     _ = tmp.write_bytes(b"weights")
    >>> Path("model.bin").read_bytes()
    b'weights'
    >>> with atomic_path("model.bin") as tmp:
    ...     _ = tmp.write_bytes(b"half a")
    ...     raise OSError("disk full")
    Traceback (most recent call last):
    OSError: disk full
    >>> Path("model.bin").read_bytes()  # the old content, and no temporary file beside it
    b'weights'
    >>> [p.name for p in Path(".").glob("*model.bin*")]
    ['model.bin']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent)
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

    >>> with atomic_write("labels.csv", newline="") as f:
    ...     _ = f.write("index,mid,display_name\\n")
    >>> Path("labels.csv").read_text()
    'index,mid,display_name\\n'
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

    >>> write_json("metrics.json", {"accuracy": 0.99})
    PosixPath('metrics.json')
    >>> json.loads(Path("metrics.json").read_text())
    {'accuracy': 0.99}
    """
    return write_text(path, json.dumps(data, indent=2) + "\n")


# ---- configuration files: JSON objects checked against a schema ------------------------------


def read_json(path: str | Path, error: type[ConfigError] = ConfigError) -> Any:
    """The JSON value in ``path``, or ``error`` naming the file when it is unreadable or no
    valid JSON (with the line and column)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(path, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(path, None, f"unreadable ({err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        what = "empty file" if not text.strip() else "not valid JSON"
        raise error(path, None, f"{what} ({err})") from None


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
          list: "a list", dict: "an object", type(None): "null"}


def _alternatives(hint: Any) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _matches(value: Any, hint: Any) -> bool:
    if len(alternatives := _alternatives(hint)) > 1:
        return any(_matches(value, h) for h in alternatives)
    origin = typing.get_origin(hint)
    if origin is list:  # list[str]: the items too
        return isinstance(value, list) and all(_matches(v, typing.get_args(hint)[0])
                                               for v in value)
    if origin is not None:
        return isinstance(value, origin)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):  # JSON true is no number, though Python's bool is an int
        return hint is bool
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    """``float | None`` -> ``"a number or null"``; ``list[str]`` -> ``"a list of strings"``."""
    if len(alternatives := _alternatives(hint)) > 1:
        return " or ".join(_describe(h) for h in alternatives)
    if typing.get_origin(hint) is list:
        item = _describe(typing.get_args(hint)[0]).removeprefix("an ").removeprefix("a ")
        return f"a list of {item}s"
    return _NAMES.get(typing.get_origin(hint) or hint, getattr(hint, "__name__", str(hint)))


def _show(value: Any) -> str:
    shown = json.dumps(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def check_fields(path: str | Path, data: Any, schema: dict[str, Any],
                 optional: Collection[str] = (), prefix: str = "",
                 error: type[ConfigError] = ConfigError) -> dict:
    """Check a JSON object read from ``path`` against ``schema`` (field -> its type, written
    as an annotation: ``int``, ``float | None``, ``list[str]``): every field but those in
    ``optional`` present, no other field, each of its type (an integer passes for a number).
    Raises ``error`` naming the file, the field (after ``prefix``) and what was expected;
    returns ``data``.

    >>> check_fields("run/train_config.json", {"lr": "fast"}, {"lr": float})
    Traceback (most recent call last):
    ...
    earmark.errors.ConfigError: run/train_config.json: lr: expected a number, got "fast"
    """
    if not isinstance(data, dict):
        raise error(path, prefix.rstrip(".") or None,
                    f"expected an object of fields, got {_describe(type(data))}")
    unknown = [name for name in data if name not in schema]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(schema), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise error(path, None, f"unknown field{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(prefix + n for n in unknown)}{hint}")
    missing = [name for name in schema if name not in data and name not in optional]
    if missing:
        raise error(path, prefix + missing[0],
                    f"missing; expected {_describe(schema[missing[0]])}")
    for name, value in data.items():
        if not _matches(value, schema[name]):
            raise error(path, prefix + name,
                        f"expected {_describe(schema[name])}, got {_show(value)}")
    return data


def dataclass_schema(cls: type) -> tuple[dict[str, Any], set[str]]:
    """(schema, optional fields) of a dataclass for :func:`check_fields`: its fields with
    their annotations; those with a default are optional (files written before the field
    existed lack it)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    optional = {f.name for f in fields
                if f.default is not dataclasses.MISSING
                or f.default_factory is not dataclasses.MISSING}
    return {f.name: hints[f.name] for f in fields}, optional


def display_names(paths: list) -> list[str]:
    """Names of files in a table (an events TSV, a timeline): their paths relative to the
    folder that holds them all, so ``a/x.wav`` and ``b/x.wav`` stay apart and the files of
    one folder are their base names.

        >>> display_names(["/data/a/x.wav", "/data/b/x.wav"])
        ['a/x.wav', 'b/x.wav']
        >>> display_names(["/data/a/x.wav", "/data/a/y.wav"])
        ['x.wav', 'y.wav']
    """
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    try:
        root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    except ValueError:  # different drives
        return [str(p) for p in paths]
    return [os.path.relpath(p, root) for p in absolute]
