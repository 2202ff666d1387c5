"""Keeping native libraries' chatter out of the user's terminal.

Some C libraries write straight to file descriptor 2, past Python's ``sys.stderr``:
libmpg123 prints parser warnings for a broken mp3 (earmark reports the file itself), and
PyTorch's profiler prints a line when it starts and stops.
"""

from __future__ import annotations

import contextlib
import os
import sys


@contextlib.contextmanager
def native_stderr_silenced():
    """Point file descriptor 2 at /dev/null while the block runs (the whole process's, so
    keep the block short); Python's ``sys.stderr`` is flushed first, and all is restored
    after, also on an exception."""
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        pass
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to redirect
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
