"""Keeping native libraries' chatter out of the user's terminal.

Some C libraries write straight to file descriptor 2, past Python's ``sys.stderr``:
libmpg123 prints parser warnings for a broken mp3 (earmark reports the file itself), and
PyTorch's profiler prints a line when it starts and stops.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

_lock = threading.Lock()
_depth = 0  # blocks open now, in any thread
_saved: int | None = None  # descriptor 2 as it was before the first of them


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while the block runs (the whole process's, so
    keep the block short); Python's ``sys.stderr`` is flushed first, and all is restored
    after, also on an exception. Blocks may overlap across threads (decoding threads open
    mp3s while the main thread reads one): the first to enter redirects, the last to leave
    restores."""
    global _depth, _saved
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        pass
    with _lock:
        if _depth == 0:
            try:
                _saved = os.dup(2)
            except OSError:  # no descriptor 2 to redirect
                _saved = None
            if _saved is not None:
                with open(os.devnull, "w") as null:
                    os.dup2(null.fileno(), 2)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                os.dup2(_saved, 2)
                os.close(_saved)
                _saved = None
