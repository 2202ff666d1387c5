"""One inference thread that scores the chunks of every open stream, many at a time.

Streams that started together complete their chunks at the same moment; scoring them one
after another would make the last wait for all the others. :class:`ChunkBatcher` takes
every chunk waiting when the model becomes free and scores them in one call per model
(:func:`earmark.infer.stream.score_chunks`), so the wait is one batch, not one stream's
chunk per stream ahead of it. The event loop hands chunks over with :meth:`submit` and
awaits their results; the model never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field

from earmark.infer.stream import ChunkResult, PendingChunk, score_chunks


@dataclass
class _Job:
    pending: list[PendingChunk]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


class ChunkBatcher:
    """A worker thread with a queue of chunks; ``max_batch`` chunks at most per call."""

    def __init__(self, max_batch: int = 64):
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="earmark-chunks", daemon=True)
        self._thread.start()
        self.batches = 0  # model rounds run (for tests and metrics)
        self.largest = 0  # the most chunks scored in one round

    async def score(self, pending: list[PendingChunk]) -> list[ChunkResult]:
        """Results of one session's chunks, in order, scored in the worker thread."""
        if not pending:
            return []
        loop = asyncio.get_running_loop()
        job = _Job(pending, loop, loop.create_future())
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            size = len(job.pending)
            while size < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this round
                    break
                jobs.append(nxt)
                size += len(nxt.pending)
            self._score(jobs)

    def _score(self, jobs: list[_Job]) -> None:
        pending = [p for j in jobs for p in j.pending]
        try:
            results = score_chunks(pending)
        except Exception as err:  # noqa: BLE001 - handed to each waiting stream
            for j in jobs:
                j.loop.call_soon_threadsafe(_settle, j.future, None, err)
            return
        self.batches += 1
        self.largest = max(self.largest, len(pending))
        i = 0
        for j in jobs:
            n = len(j.pending)
            j.loop.call_soon_threadsafe(_settle, j.future, results[i:i + n], None)
            i += n


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the stream went away while its chunk was scored
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
