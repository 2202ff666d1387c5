"""The one place where a server runs its models: stream chunks in batches, uploads in turn.

Streams that started together complete their chunks at the same moment; scoring them one
after another would make the last wait for all the others. :class:`InferenceWorker` takes
every chunk waiting when the model becomes free and scores them in one call per model
(:func:`earmark.infer.chunks.score_chunks`), so the wait is one batch, not one chunk per
stream ahead of it.

Whole-file jobs (``/v1/tag``) are generators that yield after each bounded piece of work
(a block of audio through the model): the worker runs one piece of one job, then scores
every chunk that fell due meanwhile, then the next job's piece, in turn. So a stream waits at
most one piece behind an upload, however long the upload; the models never run two things
at once on the CPU's threads; and a job whose time is up (``deadline``), whose client has
gone (its awaiting task was cancelled) or whose server is stopping ends at its next piece.

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
import time
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from earmark.infer.chunks import PendingChunk, ScoredChunks, score_chunks
from earmark.serve import memory


class DeadlineExceeded(Exception):
    """A job's time ran out before it finished (see :meth:`InferenceWorker.steps`)."""


class ShuttingDown(Exception):
    """The worker stopped before the job finished."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)
    pending: list[PendingChunk] | None = None  # chunks of one session, in order
    steps: Generator | None = None  # or a job run piece by piece
    deadline: float | None = None  # time.monotonic() by which steps must have finished
    # set by the event loop when nobody awaits the result any more
    abandoned: threading.Event = field(default_factory=threading.Event)


class InferenceWorker:
    """A queue of model work; ``max_batch`` chunks at most per model call."""

    def __init__(self, max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._stopping = threading.Event()  # close() was called: end every job now
        self.batches = 0  # model rounds of chunks run (for tests and metrics)
        self.largest = 0  # the most chunks scored in one round

    # ---- handing work over (from the event loop) ------------------------------------------------

    async def score(self, pending: list[PendingChunk]) -> ScoredChunks:
        """One session's chunks scored: their results in order, and the session's new cache
        for :meth:`~earmark.infer.stream.StreamSession.take`."""
        if not pending:
            return ScoredChunks([])
        return await self._submit(pending=pending)

    async def call(self, fn: Callable, *args):
        """``fn(*args)`` run by the worker in one piece, between chunk batches."""
        return await self.steps(_one_step(fn, *args))

    async def steps(self, job: Generator, deadline: float | None = None):
        """The return value of generator ``job``, run by the worker one piece (``next``) at
        a time between chunk batches and other jobs' pieces. Raises
        :class:`DeadlineExceeded` when ``time.monotonic()`` passes ``deadline`` first,
        :class:`ShuttingDown` when the worker stops first. Cancelling the awaiting task
        (the client went away) ends the job at its next piece; either way the generator is
        closed, so its ``finally`` blocks run."""
        return await self._submit(steps=job, deadline=deadline)

    async def _submit(self, **work):
        if self._stopped.is_set() or self._stopping.is_set():
            raise ShuttingDown("the inference worker has stopped")
        loop = asyncio.get_running_loop()
        job = _Job(loop, loop.create_future(), **work)
        self._queue.put(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.abandoned.set()
            raise

    # ---- running ------------------------------------------------------------------------------

    def start(self) -> InferenceWorker:
        """Run in a daemon thread of its own."""
        self._thread = threading.Thread(target=self.run, name="earmark-inference", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop: chunks already queued are scored, every whole-file job ends with
        :class:`ShuttingDown` at its next piece; joins the thread from :meth:`start`."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def run(self, until: Callable[[], bool] | None = None, poll: float = 0.25) -> None:
        """Work in the calling thread until :meth:`close` (or ``until()`` is true, checked
        every ``poll`` seconds while idle)."""
        calls: deque[_Job] = deque()
        try:
            while True:
                jobs: list[_Job | None] = []
                if not calls and not self._stopping.is_set():  # idle: wait for work
                    try:
                        jobs.append(self._queue.get(timeout=poll))
                    except queue.Empty:
                        pass
                while True:  # otherwise only drain
                    try:
                        jobs.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                chunks = [j for j in jobs if j is not None and j.pending is not None]
                calls.extend(j for j in jobs if j is not None and j.steps is not None)
                while chunks:  # every waiting chunk first, max_batch at a time
                    batch, size = [], 0
                    while chunks and (not batch or size + len(chunks[0].pending)
                                      <= self.max_batch):
                        size += len(chunks[0].pending)
                        batch.append(chunks.pop(0))
                    self._score(batch)
                if self._stopping.is_set():
                    return
                if calls:  # then one piece of the job whose turn it is
                    job = calls.popleft()
                    if self._step(job):
                        calls.append(job)
                    elif not calls:  # the last upload is done: hand its memory back
                        memory.release()
                    continue
                if until is not None and not jobs and until():
                    return
        finally:
            self._stopped.set()
            self._stopping.set()
            while True:  # jobs handed over while stopping
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    calls.append(job)
            for job in calls:
                if job.steps is not None:
                    job.steps.close()
                _hand_back(job, None, ShuttingDown("server shutting down"))

    def _score(self, jobs: list[_Job]) -> None:
        pending = [p for j in jobs for p in j.pending]
        try:
            scored = score_chunks(pending)
        except Exception as err:  # noqa: BLE001 - handed to each waiting stream
            for j in jobs:
                _hand_back(j, None, err)
            return
        self.batches += 1
        self.largest = max(self.largest, len(pending))
        i = 0
        for j in jobs:
            n = len(j.pending)
            _hand_back(j, ScoredChunks(scored.results[i:i + n], scored.caches), None)
            i += n

    def _step(self, job: _Job) -> bool:
        """Run one piece of ``job``; True when it has more to do."""
        if job.abandoned.is_set():  # nobody waits for the result: stop spending on it
            job.steps.close()
            return False
        if job.deadline is not None and time.monotonic() > job.deadline:
            job.steps.close()
            _hand_back(job, None, DeadlineExceeded())
            return False
        try:
            next(job.steps)
            return True
        except StopIteration as done:
            result, error = done.value, None
        except Exception as err:  # noqa: BLE001 - raised again in the request
            result, error = None, err
        _hand_back(job, result, error)
        return False


def _one_step(fn: Callable, *args) -> Generator:
    return fn(*args)
    yield  # a generator that does all its work in its first piece


def _hand_back(job: _Job, result, error) -> None:
    """Settle ``job``'s future in its event loop's thread (nothing to do once that loop has
    closed: nobody awaits it)."""
    try:
        job.loop.call_soon_threadsafe(_settle, job.future, result, error)
    except RuntimeError:  # the loop is closed
        pass


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the client went away while its work ran
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
