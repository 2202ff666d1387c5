"""The one place where a server runs its models: stream chunks in batches, uploads in turn.

Streams that started together complete their chunks at the same moment; scoring them one
after another would make the last wait for all the others. :class:`InferenceWorker` takes
every chunk waiting when the model becomes free and scores them in one call per model
(:func:`earmark.infer.stream.score_chunks`), so the wait is one batch, not one chunk per
stream ahead of it. Whole-file jobs (``/v1/tag``) run one at a time between those batches:
waiting chunks always go first, and the models never run two jobs at once on the CPU's
threads.

The event loop hands work over with :meth:`score` and :meth:`call` and awaits the results.
The worker runs in a thread of its own (:meth:`start`) or in the thread that calls
:meth:`run`: ``earmark serve`` gives it the main thread, where PyTorch's OpenMP threads wake
fastest (on a 2-core machine a 2-thread model step ran 2-3x slower when called from a second
thread than from the main one).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from earmark.infer.stream import ChunkResult, PendingChunk, score_chunks


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)
    pending: list[PendingChunk] | None = None  # chunks of one session, in order
    call: Callable | None = None  # or a function to run


class InferenceWorker:
    """A queue of model work; ``max_batch`` chunks at most per model call."""

    def __init__(self, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.batches = 0  # model rounds of chunks run (for tests and metrics)
        self.largest = 0  # the most chunks scored in one round

    # ---- handing work over (from the event loop) ------------------------------------------------

    async def score(self, pending: list[PendingChunk]) -> list[ChunkResult]:
        """Results of one session's chunks, in order."""
        if not pending:
            return []
        return await self._submit(pending=pending)

    async def call(self, fn: Callable, *args):
        """``fn(*args)`` run by the worker, between chunk batches."""
        return await self._submit(call=lambda: fn(*args))

    async def _submit(self, **work):
        if self._stopped.is_set():
            raise RuntimeError("the inference worker has stopped")
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), **work)
        self._queue.put(job)
        return await job.future

    # ---- running ------------------------------------------------------------------------------

    def start(self) -> InferenceWorker:
        """Run in a daemon thread of its own."""
        self._thread = threading.Thread(target=self.run, name="earmark-inference", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop after the work already queued; joins the thread from :meth:`start`."""
        self._queue.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def run(self, until: Callable[[], bool] | None = None, poll: float = 0.25) -> None:
        """Work in the calling thread until :meth:`close` (or ``until()`` is true, checked
        every ``poll`` seconds while idle)."""
        calls: deque[_Job] = deque()
        stopping = False
        try:
            while True:
                jobs: list[_Job | None] = []
                if not (calls or stopping):  # idle: wait for work; otherwise only drain
                    try:
                        jobs.append(self._queue.get(timeout=poll))
                    except queue.Empty:
                        pass
                while True:
                    try:
                        jobs.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = stopping or None in jobs
                chunks = [j for j in jobs if j is not None and j.pending is not None]
                calls.extend(j for j in jobs if j is not None and j.call is not None)
                while chunks:  # every waiting chunk first, max_batch at a time
                    batch, size = [], 0
                    while chunks and (not batch or size + len(chunks[0].pending)
                                      <= self.max_batch):
                        size += len(chunks[0].pending)
                        batch.append(chunks.pop(0))
                    self._score(batch)
                if calls:  # then one whole-file job
                    self._run_call(calls.popleft())
                    continue
                if stopping or (until is not None and not jobs and until()):
                    return
        finally:
            self._stopped.set()
            for j in calls:
                j.loop.call_soon_threadsafe(_settle, j.future, None,
                                            RuntimeError("server shutting down"))

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

    def _run_call(self, job: _Job) -> None:
        try:
            result, error = job.call(), None
        except Exception as err:  # noqa: BLE001 - raised again in the request
            result, error = None, err
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away while its work ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
