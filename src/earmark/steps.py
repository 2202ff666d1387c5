"""Work in bounded pieces: a generator that yields after each model call and returns its
result, so that a caller can interleave other work (a server scores live streams between
the pieces of an upload) or stop between pieces.

    >>> def count(n):
    ...     for _ in range(n):
    ...         yield
    ...     return n
    >>> finish(count(3))
    3
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")

Steps = Generator[None, None, T]  # yields between pieces, returns the result


def finish(steps: Steps[T]) -> T:
    """Run ``steps`` to the end, without pausing between its pieces; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
