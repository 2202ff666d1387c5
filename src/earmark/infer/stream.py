"""Online tagging: audio arrives in blocks of any size, scores leave one chunk at a time.

A :class:`StreamSession` holds all of a stream's state explicitly (the samples of the
chunk being filled, the model's cache or the sliding window, the resampler, the clock), so
one tagger can serve several streams and :meth:`StreamSession.reset` starts afresh.

    >>> import earmark
    >>> from earmark.infer.tagger import Tagger
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> tagger = Tagger(model, {"labels": ["dog", "rain", "siren"]})
    >>> session = tagger.stream(chunk_seconds=1.0)
    >>> wave, _ = earmark.load_audio("dog.wav")     # 5 s; a microphone gives blocks as they come
    >>> for block in wave.split(4000):              # blocks of 0.25 s
    ...     for r in session.push(block):
    ...         print(r.start, r.end, len(r.labels))          # r.labels: the top 3, best first
    0.0 1.0 3
    1.0 2.0 3
    2.0 3.0 3
    3.0 4.0 3
    4.0 5.0 3
    >>> session.flush()                             # no samples left over
    []

Two kinds of model:

- streaming models (SAT, paper 003 section 3) have ``forward_chunk(wave, cache)`` and
  ``prime_cache(batch)``: each chunk is one model call that attends to the cache of the
  previous chunk. The cache starts primed with silence, as the official inference script
  does, and the chunk length defaults to the one the model was trained for.
- full-context models (ViT, HTS-AT, ...) see a sliding window: at the end of each chunk the
  last ``window_seconds`` of audio (the model's clip length, at most 10 s; less while the
  stream is younger than that) are scored, so each result costs a full clip's work.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from earmark.audio.io import RESAMPLE_QUALITY, iter_blocks
from earmark.errors import AudioError, EarmarkError
from earmark.infer.chunks import (
    ChunkResult,
    PendingChunk,
    ScoredChunks,
    score_chunks,
)
from earmark.infer.scorer import Scorer

# Sliding windows longer than this cost more than the clip models were trained on (10 s).
MAX_WINDOW_SECONDS = 10.0
STREAM_NAME = "<stream>"  # how AudioError names a live stream


class StreamSession:
    """One live stream through a tagger; see the module docstring.

    ``push`` takes 1-D blocks of any size (numpy or torch, float or integer PCM) at
    ``sample_rate`` (default the model's; other rates are resampled with a streaming
    resampler, so block boundaries do not change the results) and returns one
    :class:`ChunkResult` per chunk completed. Memory is bounded: the session keeps at most
    one chunk (streaming models) or one window (full-context models) of samples.

        >>> import earmark
        >>> from earmark.infer.tagger import Tagger
        >>> sat = earmark.create_model("sat-tiny", 3, depth=1, embed_dim=48, num_heads=3,
        ...                            chunk_seconds=1.0)
        >>> session = StreamSession(Tagger(sat, {"labels": ["dog", "rain", "siren"]}), top_k=2)
        >>> results = session.push(torch.zeros(8000)) + session.push(torch.zeros(16000))
        >>> results += session.flush()                  # the last 0.5 s, zero-padded
        >>> [(r.start, r.end, len(r.labels)) for r in results]   # SAT: its own 1 s chunks
        [(0.0, 1.0, 2), (1.0, 1.5, 2)]
    """

    def __init__(self, tagger: Scorer, chunk_seconds: float | None = None, top_k: int = 3,
                 tail: str = "pad", sample_rate: int | None = None,
                 window_seconds: float | None = None, fast: bool = True,
                 compile: bool = False):
        model = tagger.model
        self.fast = fast  # streaming models: run chunks through a traced step (same numbers)
        self.compile = compile  # or a torch.compile'd one (faster, compiles for ~30 s first)
        self.chunk_step = None  # the traced step of a streaming model (None: its own)
        self.tagger = tagger
        self.streaming = model.is_streaming
        self.sample_rate = int(tagger.sample_rate)  # the model's rate; the clock counts at it
        self.input_rate = int(sample_rate or self.sample_rate)
        if chunk_seconds is None:
            chunk_seconds = tagger.chunk_seconds
        if not chunk_seconds > 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        if tail not in ("pad", "drop"):
            raise ValueError(f"tail must be 'pad' or 'drop', got {tail!r}")
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if self.input_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self.chunk_seconds = float(chunk_seconds)
        self.chunk_samples = max(1, round(chunk_seconds * self.sample_rate))
        self.top_k = top_k
        self.tail = tail
        if self.streaming:
            if window_seconds is not None:
                raise ValueError("window_seconds is for full-context models; a streaming model "
                                 "carries its past in its cache")
            self.window_samples = 0
        else:
            if window_seconds is None:
                window_seconds = min(float(model.clip_seconds), MAX_WINDOW_SECONDS)
            if not window_seconds > 0:
                raise ValueError(f"window_seconds must be positive, got {window_seconds}")
            self.window_samples = max(1, round(window_seconds * self.sample_rate))
        self.reset()

    # ---- state -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new stream: fresh cache and buffers, the clock back at 0 s."""
        self._chunks = 0  # chunks emitted so far
        self._fill = 0  # samples of the current chunk received so far
        self._resampler = None
        if self.input_rate != self.sample_rate:
            import soxr

            self._resampler = soxr.ResampleStream(self.input_rate, self.sample_rate, 1,
                                                  dtype="float32", quality=RESAMPLE_QUALITY)
        self.cache = None
        if self.streaming:
            self._chunk = torch.zeros(self.chunk_samples)  # (N,) the chunk being filled
            with torch.no_grad():
                self.cache = self.tagger.primed_cache()
                if self.chunk_step is None and self.fast:
                    # same numbers, less per-op overhead: a traced and frozen chunk step,
                    # traced once per tagger
                    self.chunk_step = self.tagger.chunk_step(self.chunk_samples, self.compile)
        else:
            # ring buffer of the last window_samples samples; _pos is where the next one goes
            self._ring = torch.zeros(self.window_samples)
            self._pos = 0
            self._filled = 0

    @property
    def time(self) -> float:
        """Seconds of audio received since the stream started (at the model's rate)."""
        return (self._chunks * self.chunk_samples + self._fill) / self.sample_rate

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor the session holds between calls (sample buffers and cache)."""
        if not self.streaming:
            return [self._ring]
        cache = [t for t in vars(self.cache).values() if torch.is_tensor(t)]
        return [self._chunk, *cache]

    # ---- audio in ----------------------------------------------------------------------------

    def push(self, samples) -> list[ChunkResult]:
        """Add a block of samples; returns the results of the chunks it completed, in order."""
        return self.take(score_chunks(self.feed(samples)))

    def flush(self) -> list[ChunkResult]:
        """End the stream: the tail shorter than a chunk is zero-padded to a chunk and scored
        (``tail="pad"``) or dropped (``"drop"``). The session then starts afresh, as after
        :meth:`reset`."""
        out = self.take(score_chunks(self.finish()))
        self.reset()
        return out

    def feed(self, samples) -> list[PendingChunk]:
        """Like :meth:`push`, but the chunks completed are returned unscored: pass them to
        :func:`~earmark.infer.chunks.score_chunks` (in order), alone or together with other
        streams' chunks, which is how a server scores many streams in one batch, then hand
        what it returns to :meth:`take`."""
        x = self._as_array(samples)
        if not np.isfinite(x).all():
            raise AudioError(STREAM_NAME,
                             f"NaN or infinite samples in the block after {self.time:.2f} s")
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x)
        return self._consume(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))

    def take(self, scored: ScoredChunks) -> list[ChunkResult]:
        """Take this session's cache from a :func:`~earmark.infer.chunks.score_chunks` call
        over chunks :meth:`feed` or :meth:`finish` gave (a streaming model's next chunk
        goes on from it); returns the call's results. Nothing changes for a full-context
        model, or when the call held none of this session's chunks."""
        if self in scored.caches:
            self.cache = scored.caches[self]
        return scored.results

    def finish(self) -> list[PendingChunk]:
        """Like :meth:`flush`, unscored and without the reset: the resampler's last samples
        and the padded tail as chunks for :func:`~earmark.infer.chunks.score_chunks`; call
        :meth:`reset` once they are scored."""
        out: list[PendingChunk] = []
        if self._resampler is not None:
            rest = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._resampler = None  # ended; reset() makes a new one
            out += self._consume(torch.from_numpy(np.ascontiguousarray(rest, dtype=np.float32)))
        if self._fill and self.tail == "pad":
            real = self._fill
            self._write(torch.zeros(self.chunk_samples - real))
            out.append(self._complete(real))
        elif self._fill:
            self._fill = 0  # dropped
        return out

    def _as_array(self, samples) -> np.ndarray:
        """A block -> float32 (N,) numpy array; integer PCM is scaled to [-1, 1)."""
        if torch.is_tensor(samples):
            samples = samples.detach().cpu().numpy()
        x = np.asarray(samples)
        if x.ndim != 1:
            raise AudioError(STREAM_NAME, f"expected a 1-D block of mono samples, got shape "
                                          f"{x.shape}; mix channels down first")
        if np.issubdtype(x.dtype, np.integer):
            return x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
        return x.astype(np.float32, copy=False)

    def _consume(self, x: torch.Tensor) -> list[PendingChunk]:
        out = []
        i = 0
        while i < x.shape[0]:
            take = min(x.shape[0] - i, self.chunk_samples - self._fill)
            self._write(x[i:i + take])
            i += take
            if self._fill == self.chunk_samples:
                out.append(self._complete(self.chunk_samples))
        return out

    def _write(self, piece: torch.Tensor) -> None:
        """Append ``piece`` (at most what the current chunk still needs) to the buffers."""
        n = piece.shape[0]
        if self.streaming:
            self._chunk[self._fill:self._fill + n] = piece
        else:
            w = self.window_samples
            if n >= w:
                self._ring.copy_(piece[-w:])
                self._pos, self._filled = 0, w
            else:
                first = min(n, w - self._pos)
                self._ring[self._pos:self._pos + first] = piece[:first]
                self._ring[:n - first] = piece[first:]
                self._pos = (self._pos + n) % w
                self._filled = min(w, self._filled + n)
        self._fill += n

    def _window(self) -> torch.Tensor:
        """A copy of the last ``window_samples`` samples (fewer early in the stream), oldest
        first."""
        if self._filled < self.window_samples:
            return self._ring[:self._filled].clone()  # nothing has wrapped yet: _pos == _filled
        return torch.cat((self._ring[self._pos:], self._ring[:self._pos]))  # a new tensor

    # ---- scores out --------------------------------------------------------------------------

    def _complete(self, real: int) -> PendingChunk:
        """The full chunk just completed, to be scored; ``real`` of its samples are audio."""
        first = self._chunks * self.chunk_samples  # sample index of the chunk's start
        wave = self._chunk.clone() if self.streaming else self._window()
        self._chunks += 1
        self._fill = 0
        return PendingChunk(self, wave, first, real)


# ---- files and the microphone -----------------------------------------------------------------


def _sink(on_result: Callable[[ChunkResult], object] | None, collect: bool):
    """A handler of results that passes each to ``on_result`` and keeps them (``collect``)
    or only counts them."""
    results: list[ChunkResult] = []
    count = [0]

    def handle(batch: list[ChunkResult]) -> None:
        for r in batch:
            if on_result is not None:
                on_result(r)
            if collect:
                results.append(r)
            count[0] += 1

    return handle, lambda: results if collect else count[0]


def stream_file(tagger: Scorer, path: str | Path, chunk_seconds: float | None = None,
                realtime: bool = False, top_k: int = 3, block_seconds: float = 0.1,
                on_result: Callable[[ChunkResult], object] | None = None,
                collect: bool = True, tail: str = "pad", compile: bool = False
                ) -> list[ChunkResult] | int:
    """Tag a sound file as if it arrived live, read block by block in bounded memory.

    ``on_result`` is called with each :class:`ChunkResult` as soon as it exists; nothing is
    printed. ``realtime`` paces the blocks at the speed of the audio. Returns the results,
    or only their number when ``collect`` is False (hour-long files).

        >>> import earmark
        >>> from earmark.infer.tagger import Tagger
        >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
        >>> tagger = Tagger(model, {"labels": ["dog", "rain", "siren"]})
        >>> results = stream_file(tagger, "dog.wav", chunk_seconds=2.0,
        ...                       on_result=lambda r: print(r.start, r.end, len(r.labels)))
        0.0 2.0 3
        2.0 4.0 3
        4.0 5.0 3
        >>> stream_file(tagger, "dog.wav", chunk_seconds=2.0, collect=False)   # a count
        3
    """
    session = StreamSession(tagger, chunk_seconds, top_k=top_k, tail=tail, compile=compile)
    handle, result = _sink(on_result, collect)
    t0, pushed = time.perf_counter(), 0.0
    for block in iter_blocks(path, block_seconds, sample_rate=tagger.sample_rate):
        if realtime:
            # a block is available once the audio it holds has been "played"
            pushed += block.shape[-1] / tagger.sample_rate
            time.sleep(max(0.0, t0 + pushed - time.perf_counter()))
        handle(session.push(block))
    handle(session.flush())
    return result()


def _import_sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as err:  # OSError: the module is there, PortAudio is not
        raise EarmarkError(
            f"microphone input needs the sounddevice package and PortAudio ({err}); "
            "install them with: pip install 'earmark[mic]'") from err
    return sounddevice


def stream_mic(tagger: Scorer, chunk_seconds: float | None = None, top_k: int = 3,
               device: int | str | None = None, seconds: float | None = None,
               on_result: Callable[[ChunkResult], object] | None = None,
               block_seconds: float = 0.1, collect: bool = False) -> list[ChunkResult] | int:
    """Tag the microphone live until ``seconds`` have been recorded or Ctrl-C.

    Records at the input device's own rate (the session resamples), calls ``on_result``
    with each :class:`ChunkResult` as it comes and returns the number of chunks (the
    results when ``collect``); nothing is printed. Needs the optional ``sounddevice``
    package: ``pip install 'earmark[mic]'``.

        >>> stream_mic(tagger, seconds=10, on_result=print)      # doctest: +SKIP
    """
    sd = _import_sounddevice()
    rate = int(sd.query_devices(device, "input")["default_samplerate"])
    session = StreamSession(tagger, chunk_seconds, top_k=top_k, sample_rate=rate)
    handle, result = _sink(on_result, collect)
    frames = max(1, round(block_seconds * rate))
    total = None if seconds is None else round(seconds * rate)
    got, warned = 0, False
    try:
        with sd.InputStream(samplerate=rate, channels=1, dtype="float32", device=device,
                            blocksize=frames) as stream:
            while total is None or got < total:
                n = frames if total is None else min(frames, total - got)
                data, overflowed = stream.read(n)  # data: (n, channels)
                if overflowed and not warned:
                    warnings.warn("microphone input overflowed: samples were lost because "
                                  "tagging is slower than real time", stacklevel=2)
                    warned = True
                got += n
                handle(session.push(np.asarray(data).mean(axis=1)))
    except KeyboardInterrupt:
        pass
    handle(session.flush())
    return result()
