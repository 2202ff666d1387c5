"""Sound event detection with a model: :func:`detect` runs a scorer over audio and turns
its frame or chunk scores into events; :func:`tune_detection` tunes per-class thresholds
on strongly labelled files. The steps on arrays (label map, median filter, thresholds,
hysteresis, runs -> events) are in :mod:`earmark.infer.events`.

    >>> import earmark
    >>> import torch
    >>> from earmark.infer.tagger import Tagger
    >>> model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
    >>> tagger = Tagger(model, {"labels": ["dog", "rain"]})
    >>> wave = 0.1 * torch.randn(3 * tagger.sample_rate)
    >>> events = detect(tagger, wave, threshold=0.0, chunk_seconds=1.0)  # every chunk active
    >>> sorted((e.onset, e.offset, e.label) for e in events)
    [(0.0, 3.0, 'dog'), (0.0, 3.0, 'rain')]
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from earmark.audio import io as audio_io
from earmark.audio.io import audio_info, iter_blocks
from earmark.errors import ModelError
from earmark.infer.chunks import chunk_scores, iter_chunk_scores
from earmark.infer.events import (
    DetectionConfig,
    chunks_to_events,
    desed_label_map,
    frames_to_events,
)
from earmark.infer.scorer import Scorer
from earmark.infer.thresholds import tune_thresholds
from earmark.steps import Steps, finish


def detection_config(scorer: Scorer, threshold: float | None = None,
                     median_filter: float | None = None, min_duration: float | None = None,
                     min_gap: float | None = None,
                     label_map: Mapping[str, str] | str | Path | None = None) -> DetectionConfig:
    """A model's detection settings: those saved with it (tuned thresholds), else the
    defaults, with each setting given here in their place. ``label_map``: a mapping model
    label -> detection label, ``"desed"`` (AudioSet -> DESED, as HTS-AT) or a JSON file of
    the mapping.

        >>> import earmark
        >>> from earmark.infer.tagger import Tagger
        >>> model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2)
        >>> tagger = Tagger(model, {"labels": ["dog", "rain"],
        ...                         "detection": {"threshold": {"dog": 0.3, "rain": 0.6}}})
        >>> detection_config(tagger).threshold
        {'dog': 0.3, 'rain': 0.6}
        >>> c = detection_config(tagger, threshold=0.5, min_gap=0.2, label_map={"dog": "Dog"})
        >>> c.threshold, c.min_gap, c.label_map
        (0.5, 0.2, {'dog': 'Dog'})
    """
    saved = scorer.config.get("detection")
    config = DetectionConfig.from_dict(saved) if saved else DetectionConfig()
    if label_map == "desed":
        label_map = desed_label_map(scorer.labels)
    elif isinstance(label_map, (str, Path)):
        label_map = json.loads(Path(label_map).read_text())
    changes = {"threshold": threshold, "median_filter": median_filter,
               "min_duration": min_duration, "min_gap": min_gap, "label_map": label_map}
    return DetectionConfig.from_dict({**config.to_dict(),
                                      **{k: v for k, v in changes.items() if v is not None}})


def detect(tagger: Scorer, audio, sample_rate: int | None = None, threshold=None, config=None,
           chunk_seconds: float | None = None) -> list:
    """Sound events ``[Event(onset, offset, label, score)]`` sorted by onset.

    Models with frame outputs (HTS-AT) detect from their frame scores; others from the
    scores of consecutive chunks of ``chunk_seconds``: by default a streaming model's own
    chunk (scored through its cache, as live), and a full-context model's clip length (one
    score per clip-long piece, as it was trained).
    ``config`` is a :class:`earmark.infer.events.DetectionConfig` (thresholds, median
    filter, minimum length, gap merging, label map); by default the one saved with the
    model, if any. ``threshold`` overrides its thresholds. Long files are read block by
    block.
    """
    return finish(detect_steps(tagger, audio, sample_rate, threshold, config, chunk_seconds))


def detect_steps(tagger: Scorer, audio, sample_rate: int | None = None, threshold=None,
                 config=None, chunk_seconds: float | None = None,
                 block_seconds: float | None = None) -> Steps[list]:
    """:func:`detect` as a series of bounded model calls (see :mod:`earmark.steps`),
    yielding after each: one per chunk for chunk-scored models; for models with frame
    outputs, one per block of ``block_seconds`` of an in-memory waveform (whole when None),
    of ``BLOCK_SECONDS`` of a long file. Events that a block boundary cuts in two are
    joined."""
    if config is None:
        config = detection_config(tagger)
    if threshold is not None:
        config = replace(config, threshold=threshold)
    if not tagger.has_frames or chunk_seconds is not None:
        chunks = []
        for c in iter_chunk_scores(tagger, audio, _chunk(tagger, chunk_seconds), sample_rate):
            chunks.append(c)
            yield
        return chunks_to_events(chunks, tagger.labels, config)
    sr = tagger.sample_rate
    if isinstance(audio, (str, Path)) and audio_info(audio).duration > audio_io.LONG_FILE_SECONDS:
        blocks = iter_blocks(audio, audio_io.BLOCK_SECONDS, sample_rate=sr)
    else:
        wave = tagger.waveform(audio, sample_rate)
        n = wave.shape[-1] if block_seconds is None else max(1, round(block_seconds * sr))
        blocks = wave.split(n)
    events, start = [], 0.0
    for block in blocks:
        frames, hop = tagger.frame_scores(block, sr)
        dur = block.shape[-1] / sr
        found = frames_to_events(frames.numpy(), tagger.labels, hop, config,
                                 offset_seconds=start, duration=dur)
        events = _join_at(events + found, start) if events else found
        start += dur
        yield
    return events


def tune_detection(tagger: Scorer, manifest, config=None, metric: str = "event_f1",
                   chunk_seconds: float | None = None):
    """Per-class thresholds tuned on strongly labelled files (``manifest.meta["events"]``,
    as the ``desed`` and synth soundscape sources give); returns a DetectionConfig.
    The thresholds apply to the detection labels (after ``config.label_map``)."""
    config = config or DetectionConfig()
    events = manifest.meta.get("events")
    if not events:
        raise ModelError(f"{manifest.name}: no strong labels (meta['events']) to tune on")
    scores, truths, hop = [], [], None
    for item in manifest.items:
        if item.path not in events:
            continue
        if tagger.has_frames and chunk_seconds is None:
            frames, hop = tagger.frame_scores(item.path)
        else:
            chunks = chunk_scores(tagger, item.path, _chunk(tagger, chunk_seconds))
            frames = torch.stack([c.scores for c in chunks])
            hop = chunks[0].end - chunks[0].start
        scores.append(frames.numpy())
        truths.append(events[item.path])
    if not scores:
        raise ModelError(f"{manifest.name}: none of its files has strong labels")
    thresholds = tune_thresholds(scores, truths, tagger.labels, hop, metric=metric,
                                 config=config)
    return replace(config, threshold=thresholds)


def _chunk(scorer: Scorer, chunk_seconds: float | None) -> float:
    """The chunk a model without frames detects in: ``chunk_seconds``, else a streaming
    model's own chunk (:attr:`Scorer.chunk_seconds`: through its cache, as it runs live),
    else the clip length of a full-context model (one score per clip-long piece, as it was
    trained: a shorter piece would be scored padded)."""
    if chunk_seconds:
        return chunk_seconds
    return scorer.chunk_seconds if scorer.model.is_streaming else scorer.model.clip_seconds


def _join_at(events: list, boundary: float) -> list:
    """Merge events of one label that a block boundary at ``boundary`` cut in two."""
    out: list = []
    for ev in sorted(events, key=lambda e: (e.label, e.onset)):
        prev = out[-1] if out else None
        if (prev is not None and prev.label == ev.label and abs(prev.offset - boundary) < 1e-6
                and abs(ev.onset - boundary) < 1e-6):
            best = max(s for s in (prev.score, ev.score) if s is not None) \
                if prev.score is not None or ev.score is not None else None
            out[-1] = type(ev)(prev.onset, ev.offset, ev.label, best)
        else:
            out.append(ev)
    return sorted(out, key=lambda e: (e.onset, e.label))
