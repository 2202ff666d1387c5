"""Giving freed memory back to the system after uploads.

An upload's buffers (the request body, its samples, the resampled wave, a long input's
spectrogram) are tens of megabytes each, allocated and freed by several threads (the event
loop reads the body, the inference worker scores it). glibc's allocator keeps what they free
in its heaps and arenas for reuse, so a server's resident memory stays near its peak long
after a burst of uploads has been answered. ``malloc_trim(0)`` hands the free pages of every
arena back to the kernel; the worker calls :func:`release` when its last upload is done,
not between a stream's chunks, so streams never wait for it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return libc.malloc_trim  # glibc only; musl and macOS have no such call
    except (OSError, AttributeError, TypeError):
        return None


def release() -> bool:
    """Return the allocator's free memory to the system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
