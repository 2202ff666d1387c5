"""Tagging many files at full speed: decoding in background threads, clips scored in batches.

    >>> import earmark
    >>> from earmark.infer.batch import tag_files
    >>> from earmark.infer.tagger import Tagger
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> tagger = Tagger(model, {"labels": ["dog", "rain", "siren"]})
    >>> for path, result in tag_files(tagger, ["dog.wav", "missing.wav", "extra.wav"], top_k=2):
    ...     print(path, [label for label, _ in result] if isinstance(result, list) else result)
    ...                                             # doctest: +ELLIPSIS
    dog.wav [...]
    missing.wav missing.wav: ...
    extra.wav [...]

Files are taken in windows of a few batches: every file of a window is decoded (and
resampled) by a pool of threads (libsndfile and soxr work outside the GIL), each clip is
fitted to the model's input as :meth:`Tagger.score_wave` fits it, clips of one length are
scored together in batches of ``batch_size``, and the window's results are yielded in the
order the files were given. The labels equal those of one call per file (the scores up to
float rounding); memory holds one window of clips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from earmark.audio import io as audio_io
from earmark.audio.io import audio_info
from earmark.errors import AudioError
from earmark.infer.tagger import Tagger

WINDOW_BATCHES = 4  # files decoded ahead, in batches: enough for whole batches per length
# Decoding threads: a quarter of the cores. On 2 cores, in two interleaved checks at batch
# 32, one thread tagged the FSDD test clips at 2.6x and 3.4x one file at a time and two at
# 2.1x and 2.4x: a second decoder only competes with the model's own threads.
DECODE_WORKERS = max(1, (os.cpu_count() or 1) // 4)


def tag_files(tagger: Tagger, files: list, top_k: int = 5, batch_size: int = 32,
              workers: int | None = None) -> Iterator[tuple[object, list[tuple[str, float]] | AudioError]]:
    """``(file, labels)`` for each of ``files`` in order; ``labels`` is the AudioError for a
    file that cannot be read. Files longer than ``LONG_FILE_SECONDS`` are scored alone,
    block by block, as :meth:`Tagger.tag` does. ``workers``: decoding threads (default
    ``DECODE_WORKERS``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    with ThreadPoolExecutor(max(1, workers or DECODE_WORKERS)) as pool:
        pending = None
        for start, stop in _windows(len(files), batch_size):
            chunk = files[start:stop]
            decoded = pool.map(lambda f: _decode(tagger, f), chunk)  # the next window decodes
            if pending is not None:                                 # while this one scores
                yield from _score_window(tagger, *pending, top_k, batch_size)
            pending = (chunk, decoded)
        if pending is not None:
            yield from _score_window(tagger, *pending, top_k, batch_size)


def _windows(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of the windows of ``n`` files: one batch first, so scoring starts as soon
    as one batch is decoded rather than a whole window, then ``WINDOW_BATCHES`` batches."""
    start, size = 0, batch_size
    while start < n:
        yield start, min(n, start + size)
        start, size = start + size, batch_size * WINDOW_BATCHES


def _decode(tagger: Tagger, f) -> torch.Tensor | AudioError | None:
    """The clip fitted to the model's input; None for a long file (scored alone later)."""
    try:
        if audio_info(f).duration > audio_io.LONG_FILE_SECONDS:  # files and PACK#KEY clips
            return None
        return tagger.fit_wave(tagger.waveform(f))
    except AudioError as err:
        return err


def _score_window(tagger: Tagger, files: list, decoded, top_k: int, batch_size: int):
    waves = list(decoded)
    results: list = [None] * len(files)
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(waves):
        if isinstance(w, AudioError):
            results[i] = w
        elif w is None:
            try:
                results[i] = tagger.tag(files[i], top_k=top_k)
            except AudioError as err:
                results[i] = err
        else:
            groups.setdefault(w.shape[-1], []).append(i)
    for idx in groups.values():
        for b in range(0, len(idx), batch_size):
            part = idx[b:b + batch_size]
            scores = tagger.score_batch(torch.stack([waves[i] for i in part]))
            for i, s in zip(part, scores):
                results[i] = tagger.top(s, top_k)
    yield from zip(files, results)
