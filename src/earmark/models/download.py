"""Downloads for the cache of released checkpoints: resumable, locked, checked, atomic.

:func:`download` fetches one URL into one file. The bytes land in ``FILE.part`` beside the
target; a connection cut midway leaves that part, and the next attempt (in this call, or a
later run) asks the server for the rest with an HTTP ``Range`` request. Only a complete file
whose size and sha256 are what the caller expects is renamed over the target, so the target
is either absent or whole. A file that fails its check is set aside (renamed, never used).

:func:`file_lock` keeps two processes (or two threads) from fetching the same file at once:
the second waits for the first and then finds the file in place.

Only the standard library speaks HTTP here (``urllib``); the progress bar is tqdm's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from earmark._version import __version__
from earmark.errors import ModelError

CHUNK = 1 << 20  # bytes read and written at a time
ATTEMPTS = 5  # connections tried per download before giving up (each resumes the last)
TIMEOUT = 60.0  # s a connection may stay silent
USER_AGENT = f"earmark/{__version__}"


class DownloadError(ModelError):
    """A download that failed or gave a file that is not the one expected."""


class IntegrityError(DownloadError):
    """A file whose size or sha256 is not the one expected; it has been set aside."""


def sha256_of(path: str | Path) -> str:
    """The hex sha256 of a file, read in blocks (bounded memory for large checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def set_aside(path: str | Path, name: str | None = None) -> Path:
    """Rename ``path`` out of the way (``FILE.rejected-20260102T030405``, after ``name``
    where given) so that nothing uses it again, and keep it for whoever wants to look at it;
    returns the new name."""
    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    base = name or path.name
    target = path.with_name(f"{base}.rejected-{stamp}")
    n = 1
    while target.exists():  # two in one second
        n += 1
        target = path.with_name(f"{base}.rejected-{stamp}-{n}")
    os.replace(path, target)
    return target


def check_file(path: str | Path, size: int | None, sha256: str | None, what: str,
               name: str | Path | None = None) -> str:
    """The sha256 of ``path`` after checking it against ``size`` and ``sha256`` (each where
    given). On a mismatch the file is set aside and :class:`IntegrityError` names the file
    (``name``: the file it was to become), what ``what`` says, what was found and where the
    file went."""
    path = Path(path)
    shown = Path(name) if name is not None else path
    found_size = path.stat().st_size
    if size is not None and found_size != size:
        aside = set_aside(path, shown.name)
        raise IntegrityError(f"{shown}: {found_size} bytes where {what} has {size}; the file "
                             f"is set aside as {aside.name} and not used")
    digest = sha256_of(path)
    if sha256 is not None and digest != sha256.lower():
        aside = set_aside(path, shown.name)
        raise IntegrityError(f"{shown}: sha256 {digest} where {what} has {sha256}; the file is "
                             f"set aside as {aside.name} and not used")
    return digest


@contextlib.contextmanager
def file_lock(path: str | Path, timeout: float = 6 * 3600.0,
              on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if need be) while the block runs.

    Another holder, in this process or another, makes this wait (``on_wait`` is called once
    when it starts waiting) for at most ``timeout`` seconds. The operating system drops the
    lock of a process that dies, so a killed download never blocks the next one. Where
    ``fcntl`` is missing (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # each call opens its own file description: flock() then excludes threads as well
    with open(path, "a+b") as f:
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                if time.monotonic() > deadline:
                    raise DownloadError(f"{path}: still locked by another earmark process "
                                        f"after {timeout:.0f} s") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _progress_bar(enabled: bool | None, total: int | None, done: int, name: str):
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                desc=name, file=sys.stderr, disable=not show, leave=False)


def _total_from(response, start: int) -> int | None:
    """The size of the whole file from a response's headers (Content-Range of a 206, else
    Content-Length), or None."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length is not None else None


def _fetch_once(url: str, part: Path, name: str, size: int | None,
                progress: bool | None, timeout: float) -> None:
    """One connection: append what the server sends to ``part`` (from its current length,
    asking for a range when there is one); raises OSError when the connection breaks."""
    start = part.stat().st_size if part.exists() else 0
    if size is not None and start >= size:
        return  # the part is already whole (or too long: the check will say so)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:  # nothing left to send: the part is whole
            return
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    with response:
        if start and response.status != 206:  # the server ignored the range: start over
            start = 0
        total = _total_from(response, start)
        mode = "ab" if start else "wb"
        with open(part, mode) as f, _progress_bar(progress, total or size, start, name) as bar:
            while block := response.read(CHUNK):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        got = part.stat().st_size
        if total is not None and got < total:  # the server closed the connection early
            raise ConnectionError(f"connection closed after {got} of {total} bytes")


def download(url: str, dest: str | Path, size: int | None = None, sha256: str | None = None,
             progress: bool | None = None, attempts: int | None = None,
             timeout: float = TIMEOUT, expected_by: str = "the caller") -> str:
    """Download ``url`` to ``dest`` and return its sha256.

    Resumes ``dest.part`` where an earlier attempt stopped; tries ``attempts`` connections
    in all. The complete file is checked against ``size`` and ``sha256`` where they are
    given (a mismatch sets it aside and raises :class:`IntegrityError`, naming what said so:
    ``expected_by``), then renamed over ``dest``. ``progress``: a tqdm bar on stderr (None: only on a terminal).
    """
    attempts = ATTEMPTS if attempts is None else attempts
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            _fetch_once(url, part, dest.name, size, progress, timeout)
            break
        except (OSError, urllib.error.URLError) as err:  # a cut or refused connection
            last = err
            if attempt + 1 < attempts:
                time.sleep(min(2.0 ** attempt * 0.25, 5.0))
    else:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"{url}: download of {dest.name} failed after {attempts} "
                            f"attempts ({last}); {have} bytes are kept in {part} and the "
                            "next try resumes from there") from None
    digest = check_file(part, size, sha256, expected_by, name=dest)
    os.replace(part, dest)
    return digest
