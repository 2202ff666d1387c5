"""Scores of audio cut into chunks: live streams' chunks scored in batches, and the chunk
scores of a whole file or waveform.

:func:`score_chunks` runs the model calls of completed chunks of one or many streams
(:meth:`earmark.infer.stream.StreamSession.feed` makes them), batching what can share a
call, and hands each streaming session its new cache back in what it returns
(:class:`ScoredChunks`); the session takes it with
:meth:`~earmark.infer.stream.StreamSession.take`. :func:`iter_chunk_scores` scores
consecutive pieces of a file or waveform, a streaming model's through its cache as it would
run live.

    >>> import earmark
    >>> import torch
    >>> from earmark.infer.tagger import Tagger
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> tagger = Tagger(model, {"labels": ["dog", "rain", "siren"]})
    >>> wave = 0.1 * torch.randn(int(2.5 * tagger.sample_rate))
    >>> [(c.start, c.end, tuple(c.scores.shape)) for c in chunk_scores(tagger, wave, 1.0)]
    [(0.0, 1.0, (3,)), (1.0, 2.0, (3,)), (2.0, 2.5, (3,))]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from earmark.audio.io import iter_blocks
from earmark.infer.scorer import Scorer

__all__ = ["ChunkResult", "ChunkScores", "PendingChunk", "ScoredChunks", "chunk_scores",
           "iter_chunk_scores", "score_chunks"]


@dataclass
class ChunkResult:
    """The scores of one chunk of a stream.

    ``start``/``end`` are seconds from the start of the stream (``end`` is where the audio
    ended for a zero-padded last chunk). ``window`` is the span of the stream whose samples
    went into this model call: the chunk itself for a streaming model (which also carries
    its cache of the previous chunk), the sliding window for a full-context model.
    """

    start: float
    end: float
    scores: torch.Tensor  # (C,) probabilities
    labels: list[tuple[str, float]]  # top-k (label, score), best first
    latency_ms: float  # wall time of the model call(s), front end included
    window: tuple[float, float] | None = None


class ChunkStream(Protocol):
    """What :func:`score_chunks` reads from a stream (a
    :class:`~earmark.infer.stream.StreamSession`)."""

    tagger: Scorer
    streaming: bool  # the model carries a cache from chunk to chunk
    cache: Any  # a streaming model's cache before its next chunk (None otherwise)
    chunk_step: Callable | None  # a traced chunk step, or None for the model's own
    sample_rate: int
    chunk_samples: int
    top_k: int


@dataclass
class PendingChunk:
    """A completed chunk of a stream that waits for its model call."""

    session: ChunkStream
    wave: torch.Tensor  # (N,) the chunk (streaming models) or the window, oldest first
    first: int  # sample index of the chunk's start in the stream
    real: int  # samples of the chunk that are audio, not padding

    def result(self, scores: torch.Tensor, latency_ms: float) -> ChunkResult:
        s = self.session
        sr, first = s.sample_rate, self.first
        last = first + s.chunk_samples
        window = ((last - self.wave.shape[0]) / sr, last / sr)  # a streaming chunk: first
        return ChunkResult(first / sr, (first + self.real) / sr, scores,
                           s.tagger.top(scores, s.top_k), latency_ms, window)


@dataclass
class ScoredChunks:
    """What :func:`score_chunks` gives back: ``results`` in the order of the chunks, and
    ``caches``, each streaming session's cache after its last chunk of the call (keyed by
    the session), which the session takes with
    :meth:`~earmark.infer.stream.StreamSession.take` before its next chunks are scored."""

    results: list[ChunkResult]
    caches: dict[Any, Any] = field(default_factory=dict)


def score_chunks(pending: list[PendingChunk]) -> ScoredChunks:
    """Score chunks of one or many streams, batching what can share a model call.

    Chunks of one session are scored in the order given, the first with the session's
    cache and each later one with the cache the one before it left (a session must not
    appear in two concurrent calls). Chunks of different sessions of one tagger go through
    the model together: a streaming model's chunks with their caches stacked, a
    full-context model's windows of equal length. The scores equal those of one call per
    chunk up to float rounding; each result's ``latency_ms`` is its batch's time. No
    session is changed: the caches come back in the :class:`ScoredChunks`.
    """
    results: list[ChunkResult | None] = [None] * len(pending)
    caches: dict[Any, Any] = {}
    todo = list(enumerate(pending))
    while todo:
        # one round: at most one chunk per session, the earliest it has left
        batch, later, seen = [], [], set()
        for i, p in todo:
            (later if id(p.session) in seen else batch).append((i, p))
            seen.add(id(p.session))
        groups: dict[tuple, list[tuple[int, PendingChunk]]] = {}
        for i, p in batch:
            key = (id(p.session.tagger), p.wave.shape[0])  # the tagger decides streaming
            groups.setdefault(key, []).append((i, p))
        for group in groups.values():
            t0 = time.perf_counter()
            scores = _score_group([p for _, p in group], caches)
            latency = (time.perf_counter() - t0) * 1000.0
            for (i, p), row in zip(group, scores):
                results[i] = p.result(row, latency)
        todo = later
    return ScoredChunks(results, caches)  # type: ignore[arg-type]


def _score_group(group: list[PendingChunk], caches: dict[Any, Any]) -> list[torch.Tensor]:
    """Model call(s) for chunks of distinct sessions of one tagger, one kind, one length;
    a streaming model's new caches go into ``caches`` (which holds those of earlier rounds
    of the same call)."""
    session = group[0].session
    tagger, model = session.tagger, session.tagger.model
    with torch.inference_mode():
        if not session.streaming:
            return list(tagger.score_batch(torch.stack([p.wave for p in group])))
        before = [caches.get(p.session, p.session.cache) for p in group]
        waves = torch.stack([p.wave for p in group]).to(tagger.device)  # (B, N)
        if len(group) == 1:
            step = session.chunk_step or model.forward_chunk
            logits, cache = step(waves, before[0])
            after = [cache]
        else:  # stacked caches through the eager step (a trace holds one batch size)
            from earmark.models.sat import ChunkCache

            logits, cache = model.forward_chunk(waves, ChunkCache.cat(before))
            after = cache.split()
        for p, c in zip(group, after):
            caches[p.session] = c
        return list(model.activation(logits).float().cpu())


# ---- chunk scores of a file or waveform --------------------------------------------------------


@dataclass
class ChunkScores:
    start: float  # seconds
    end: float
    scores: torch.Tensor  # (C,)


def chunk_scores(scorer: Scorer, audio, chunk_seconds: float,
                 sample_rate: int | None = None) -> list[ChunkScores]:
    """Scores of consecutive ``chunk_seconds`` pieces (the last one may be shorter)."""
    return list(iter_chunk_scores(scorer, audio, chunk_seconds, sample_rate))


def iter_chunk_scores(scorer: Scorer, audio, chunk_seconds: float,
                      sample_rate: int | None = None) -> Iterator[ChunkScores]:
    """:func:`chunk_scores` one chunk at a time: a file is read block by block and each
    chunk's scores are yielded as soon as they exist, so memory does not grow with the
    length of the audio. A streaming model whose own chunk is ``chunk_seconds`` scores
    its chunks through its cache, as a live stream (:meth:`Scorer.stream`) does."""
    if chunk_seconds <= 0:
        raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
    if isinstance(audio, (str, Path)):
        blocks = iter_blocks(audio, chunk_seconds, sample_rate=scorer.sample_rate)
    else:
        n = max(1, int(round(chunk_seconds * scorer.sample_rate)))
        blocks = scorer.waveform(audio, sample_rate).split(n)
    if scorer.model.is_streaming and abs(chunk_seconds - scorer.model.chunk_seconds) < 1e-9:
        session = scorer.stream(chunk_seconds)
        for block in blocks:
            for r in session.push(block):
                yield ChunkScores(r.start, r.end, r.scores)
        for r in session.flush():
            yield ChunkScores(r.start, r.end, r.scores)
        return
    start = 0.0
    for block in blocks:
        dur = block.shape[-1] / scorer.sample_rate
        yield ChunkScores(start, start + dur, scorer.score_wave(block))
        start += dur
