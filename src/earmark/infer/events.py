"""Sound event detection on arrays: frame (or chunk) scores -> timed events.

Pure functions on arrays; no model is needed (:mod:`earmark.infer.detect` runs one and
calls these). Any model that yields frame scores ``(T, C)`` at a known frame rate (HTS-AT's
event presence map), or chunk scores from :meth:`earmark.infer.tagger.Tagger.chunk_scores`,
goes through the same steps:

1. ``label_map`` (optional): model labels -> detection labels, several sources combined by
   their maximum (e.g. the eight AudioSet speech classes -> DESED ``Speech``);
2. a median filter along time, per class (in seconds);
3. binarisation by a per-class threshold (``score >= threshold`` is active), optionally with
   hysteresis (:class:`Hysteresis`): a run above the low threshold is kept if it reaches
   the high one;
4. runs of active frames become events, frame ``i`` covering ``[i * hop, (i + 1) * hop)``;
   gaps shorter than ``min_gap`` are bridged, events shorter than ``min_duration`` dropped.

An event's score is the **maximum** of its class score (after mapping and filtering) over
its frames. Thresholds are tuned per class on a validation split with
:func:`earmark.infer.thresholds.tune_thresholds`.

    >>> import numpy as np
    >>> scores = np.zeros((10, 2)); scores[2:5, 0] = 0.9; scores[6:9, 1] = 0.7
    >>> events = frames_to_events(scores, ["dog", "cat"], frame_seconds=0.1,
    ...                           config=DetectionConfig(threshold=0.5))
    >>> [(e.onset, e.offset, e.label) for e in events]
    [(0.2, 0.5, 'dog'), (0.6, 0.9, 'cat')]

:func:`earmark.data.events.write_events` writes them as a DESED TSV.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from earmark.data.events import Event

__all__ = [
    "DEFAULT_THRESHOLD",
    "DESED_HEADER",
    "HTSAT_DESED_AUDIOSET_INDICES",
    "HTSAT_DESED_THRESHOLDS",
    "DetectionConfig",
    "Hysteresis",
    "chunks_to_events",
    "desed_label_map",
    "frames_to_events",
    "hysteresis_runs",
    "kernel_frames",
    "map_scores",
    "median_filter",
]

# Used for a class that a threshold dict does not name.
DEFAULT_THRESHOLD = 0.5

DESED_HEADER = ("filename", "onset", "offset", "event_label")

# How HTS-AT maps its 527 AudioSet outputs onto DESED's ten classes, as AudioSet class
# indices (rows of class_labels_indices.csv), and its per-class thresholds on the
# token-semantic ("tscam") output. Facts from the official code,
# RetroCirce/HTS-Audio-Transformer: config.py (fl_audioset_mapping, fl_class_num) and
# fl_evaluate.py (thres); it marks a frame active when any mapped class exceeds the DESED
# class's threshold, i.e. the maximum over the mapped classes, as map_scores does.
HTSAT_DESED_AUDIOSET_INDICES: dict[str, tuple[int, ...]] = {
    "Speech": (0, 1, 2, 3, 4, 5, 6, 7),
    "Frying": (366, 367, 368),
    "Dishes": (364,),
    "Running_water": (288, 289, 290, 291, 292, 293, 294, 295, 296, 297),
    "Blender": (369,),
    "Electric_shaver_toothbrush": (382,),
    "Alarm_bell_ringing": (310, *range(388, 403)),
    "Cat": (81, 82, 83, 84, 85),
    "Dog": (74, 75, 76, 77, 78, 79),
    "Vacuum_cleaner": (377,),
}
HTSAT_DESED_THRESHOLDS: dict[str, float] = {
    "Speech": 0.275, "Frying": 0.2, "Dishes": 0.2, "Running_water": 0.23, "Blender": 0.48,
    "Electric_shaver_toothbrush": 0.2, "Alarm_bell_ringing": 0.18, "Cat": 0.51, "Dog": 0.39,
    "Vacuum_cleaner": 0.14,
}

TIME_EPS = 1e-9  # seconds; keeps e.g. 3 * 0.1 s from counting as shorter than 0.3 s


@dataclass
class DetectionConfig:
    """How frame scores become events. Per-class values are dicts keyed by detection label.

    - ``threshold``: one float for all classes, or ``label -> float`` (others get
      :data:`DEFAULT_THRESHOLD`); a frame is active when ``score >= threshold``.
    - ``median_filter``: kernel in seconds (float or ``label -> float``; 0 = off), rounded
      to an odd number of frames.
    - ``min_duration``: events shorter than this (seconds) are dropped.
    - ``min_gap``: gaps shorter than this (seconds) between two events of one class are
      bridged.
    - ``label_map``: model label -> detection label; unmapped labels are dropped, several
      labels mapped to one combine by their maximum.
    - ``hysteresis``: a low threshold; a run of frames at or above it becomes an event when
      it reaches the class threshold somewhere (``None`` = off).

    >>> cfg = DetectionConfig(threshold={"Dog": 0.4}, median_filter=0.3, min_duration=0.1)
    >>> DetectionConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    threshold: float | dict[str, float] = DEFAULT_THRESHOLD
    median_filter: float | dict[str, float] = 0.0
    min_duration: float = 0.0
    min_gap: float = 0.0
    label_map: dict[str, str] | None = None
    hysteresis: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_duration", "min_gap"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        for name, value in _per_class_items(self.median_filter):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"median_filter{name} must be a finite number >= 0 seconds, "
                                 f"got {value}")
        for name, value in _per_class_items(self.threshold):
            if not np.isfinite(value):
                raise ValueError(f"threshold{name} must be finite, got {value}")
        if self.hysteresis is not None and not np.isfinite(self.hysteresis):
            raise ValueError(f"hysteresis must be finite or None, got {self.hysteresis}")

    def threshold_of(self, label: str) -> float:
        """The threshold of one detection label."""
        return _per_class(self.threshold, label, DEFAULT_THRESHOLD)

    def median_seconds_of(self, label: str) -> float:
        """The median filter of one detection label, in seconds (0 = off)."""
        return _per_class(self.median_filter, label, 0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (dicts copied, so editing it leaves the config unchanged)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, dict) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectionConfig:
        """Inverse of :meth:`to_dict`; ``thresholds`` is accepted for ``threshold``."""
        data = dict(data)
        if "thresholds" in data:
            if "threshold" in data:
                raise ValueError("give either 'threshold' or 'thresholds', not both")
            data["threshold"] = data.pop("thresholds")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown detection settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    def _check_keys(self, labels: Sequence[str]) -> None:
        """Warn about per-class keys that name no detection label (likely a typo)."""
        for name in ("threshold", "median_filter"):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                unknown = sorted(set(value) - set(labels))
                if unknown:
                    warnings.warn(f"{name} names labels that are not detected: {unknown}",
                                  stacklevel=4)


def _per_class_items(value: float | Mapping[str, float]) -> list[tuple[str, float]]:
    if isinstance(value, Mapping):
        return [(f"[{k!r}]", float(v)) for k, v in value.items()]
    return [("", float(value))]


def _per_class(value: float | Mapping[str, float], label: str, default: float) -> float:
    if isinstance(value, Mapping):
        return float(value.get(label, default))
    return float(value)


def _as_scores(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor on any device or dtype
        x = x.detach().cpu().float().numpy()
    s = np.asarray(x, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"frame scores must be (T, C), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("frame scores contain NaN or inf")
    return s


def _check_labels(scores: np.ndarray, labels: Sequence[str]) -> list[str]:
    labels = list(labels)
    if len(labels) != scores.shape[1]:
        raise ValueError(f"{len(labels)} labels for {scores.shape[1]} score columns")
    return labels


def check_frame_seconds(frame_seconds: float) -> float:
    frame_seconds = float(frame_seconds)
    if not np.isfinite(frame_seconds) or frame_seconds <= 0:
        raise ValueError(f"frame_seconds must be positive, got {frame_seconds}")
    return frame_seconds


# ---- score transforms ------------------------------------------------------------------------


def map_scores(frame_scores: Any, labels: Sequence[str],
               label_map: Mapping[str, str] | None) -> tuple[np.ndarray, list[str]]:
    """Combine model classes into detection classes by their maximum.

    Labels absent from ``label_map`` are dropped; detection labels come in the order of
    their first appearance among the map's values, skipping those whose sources are all
    absent from ``labels``. ``label_map=None`` returns the scores unchanged.

    >>> s = np.array([[0.2, 0.7, 0.9]])
    >>> map_scores(s, ["bark", "growl", "meow"], {"bark": "Dog", "growl": "Dog"})
    (array([[0.7]]), ['Dog'])
    """
    scores = _as_scores(frame_scores)
    labels = _check_labels(scores, labels)
    if label_map is None:
        return scores, labels
    columns: dict[str, list[int]] = {target: [] for target in label_map.values()}
    for i, label in enumerate(labels):
        if label in label_map:
            columns[label_map[label]].append(i)
    columns = {target: idx for target, idx in columns.items() if idx}
    if not columns:
        raise ValueError("label_map names none of the model's labels "
                         f"(first labels: {labels[:5]})")
    # (T, C') from the maximum over each target's source columns
    out = np.stack([scores[:, idx].max(axis=1) for idx in columns.values()], axis=1)
    return out, list(columns)


def median_filter(scores: Any, kernel_frames: int | Sequence[int]) -> np.ndarray:
    """Median filter along time (axis 0), one odd kernel size per class (1 = unchanged).

    Edges repeat the first and last frame, so a filter never invents silence at the ends.

    >>> median_filter(np.array([[0.], [1.], [0.], [0.]]), 3).ravel()
    array([0., 0., 0., 0.])
    """
    s = _as_scores(scores)
    sizes = ([int(kernel_frames)] * s.shape[1] if np.isscalar(kernel_frames)
             else [int(k) for k in kernel_frames])
    if len(sizes) != s.shape[1]:
        raise ValueError(f"{len(sizes)} kernel sizes for {s.shape[1]} classes")
    bad = sorted({k for k in sizes if k < 1 or k % 2 == 0})
    if bad:
        raise ValueError(f"median kernel sizes must be odd and >= 1, got {bad}")
    out = s.copy()
    sizes_arr = np.array(sizes)
    for k in np.unique(sizes_arr):
        if k == 1 or s.shape[0] == 0:
            continue
        cols = np.flatnonzero(sizes_arr == k)
        out[:, cols] = ndimage.median_filter(s[:, cols], size=(int(k), 1), mode="nearest")
    return out


def kernel_frames(seconds: float, frame_seconds: float) -> int:
    """A kernel of ``seconds`` as an odd number of frames (0 s -> 1, i.e. off).

    >>> kernel_frames(0.45, 0.1)
    5
    """
    n = int(round(seconds / check_frame_seconds(frame_seconds)))
    return max(1, n if n % 2 else n + 1)


# ---- frames -> events ------------------------------------------------------------------------


def prepare_scores(frame_scores: Any, labels: Sequence[str], frame_seconds: float,
                   config: DetectionConfig) -> tuple[np.ndarray, list[str]]:
    """Mapped and median-filtered scores ``(T, C')`` with their labels."""
    scores, labels = map_scores(frame_scores, labels, config.label_map)
    config._check_keys(labels)
    kernels = [kernel_frames(config.median_seconds_of(lab), frame_seconds) for lab in labels]
    return median_filter(scores, kernels), labels


class Changes(NamedTuple):
    """What a :meth:`Hysteresis.step` changed, one row per event, ordered by frame then
    class; frames count from the tracker's first step."""

    onsets: np.ndarray  # (K, 3) int: class, first frame of the run, frame that reached high
    offsets: np.ndarray  # (M, 3) int: class, first frame of the run, frame after its last


_NO_CHANGES = np.zeros((0, 3), dtype=np.int64)


class Hysteresis:
    """Two-level thresholds over time, per class, fed frame by frame or block by block.

    A run of frames whose score is at or above ``low`` becomes an event when it reaches
    ``high`` somewhere, and ends at the first frame below ``low``: a score that hovers
    around ``high`` makes one event, not many. ``high`` and ``low`` are one value or one
    per class; ``low=None``, or a ``low`` above ``high``, is ``high`` (plain thresholding).

    :meth:`step` takes the next frames, ``(T, C)`` or one frame ``(C,)``, and returns the
    :class:`Changes`: an onset where a run reaches ``high`` (with the frame where the run
    began, which an offline detector reports as its onset), an offset where an event's run
    ends. Feeding an array in any blocks gives the same changes as feeding it whole.
    :meth:`close` ends the events still on (the end of the audio). :func:`hysteresis_runs`
    applies it to a whole array; :class:`earmark.serve.events.EventTracker` chunk by chunk.

    >>> h = Hysteresis(high=0.5, low=0.3)
    >>> [h.step([x]).onsets.tolist() for x in (0.4, 0.6, 0.35)]   # on at frame 1, run from 0
    [[], [[0, 0, 1]], []]
    >>> h.step([0.1]).offsets.tolist()                             # off at frame 3
    [[0, 0, 3]]
    """

    def __init__(self, high: float | Sequence[float], low: float | Sequence[float] | None = None):
        self.high = np.asarray(high, dtype=np.float64)
        self.low = self.high if low is None else np.minimum(np.asarray(low, np.float64),
                                                            self.high)
        self.frames = 0  # frames stepped through so far
        self._run: np.ndarray | None = None  # (C,) the last frame was at or above low
        self._on = np.zeros(0, dtype=bool)  # (C,) ... and its run has reached high
        self._start = np.zeros(0, dtype=np.int64)  # (C,) first frame of that run

    @property
    def on(self) -> np.ndarray:
        """``(C,)`` bool: the classes in an event after the frames stepped through."""
        return np.array(self._on) if self._run is not None else np.zeros(0, dtype=bool)

    def step(self, scores: Any) -> Changes:
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim == 1:
            s = s[None]
        n, c = s.shape
        if self._run is None:
            self._run, self._on = np.zeros(c, dtype=bool), np.zeros(c, dtype=bool)
            self._start = np.zeros(c, dtype=np.int64)
        elif c != self._run.shape[0]:
            raise ValueError(f"{c} classes after {self._run.shape[0]}")
        if n == 0:
            return Changes(_NO_CHANGES, _NO_CHANGES)
        t = np.arange(self.frames, self.frames + n)[:, None]  # (n, 1) frame numbers
        active = s >= self.low  # (n, c)
        before = np.vstack([self._run[None], active[:-1]])  # active on the frame before
        starts, ends = active & ~before, ~active & before
        # the first frame of the run each frame is in; -1: the run carried in from the last
        # step (an end frame keeps the run that it ends)
        first = np.maximum.accumulate(np.where(starts, t, -1), axis=0)
        carried = first < 0
        first = np.where(carried, self._start, first)
        last_high = np.maximum.accumulate(np.where(s >= self.high, t, -1), axis=0)
        on = active & ((last_high >= first) | (carried & self._on))
        was_on = np.vstack([(self._run & self._on)[None], on[:-1]])
        ti, ci = np.nonzero(on & ~was_on)
        onsets = np.stack([ci, first[ti, ci], t[ti, 0]], axis=1)
        ti, ci = np.nonzero(ends & was_on)
        offsets = np.stack([ci, first[ti, ci], t[ti, 0]], axis=1)
        self._run, self._on, self._start = active[-1], on[-1], first[-1]
        self.frames += n
        return Changes(onsets.astype(np.int64), offsets.astype(np.int64))

    def close(self) -> np.ndarray:
        """Offsets ``(M, 3)`` (class, first frame, :attr:`frames`) of the events still on;
        every class is then off, as before the first frame."""
        if self._run is None:
            return _NO_CHANGES
        ci = np.flatnonzero(self._run & self._on)
        out = np.stack([ci, self._start[ci], np.full(len(ci), self.frames)], axis=1)
        self._run[:], self._on[:] = False, False
        return out.astype(np.int64)


def hysteresis_runs(scores: Any, high: float | Sequence[float],
                    low: float | Sequence[float] | None = None) -> list[np.ndarray]:
    """The events of :class:`Hysteresis` over a whole array ``(T, C)``: per class, the
    ``(N, 2)`` start and end (exclusive) frames of its runs at or above ``low`` that reach
    ``high``, in order.

    >>> hysteresis_runs(np.array([[0.4], [0.6], [0.4], [0.1], [0.6]]), 0.5, 0.3)[0].tolist()
    [[0, 3], [4, 5]]
    """
    s = np.asarray(scores, dtype=np.float64)
    levels = Hysteresis(high, low)
    done = np.concatenate([levels.step(s).offsets, levels.close()])
    return [done[done[:, 0] == k, 1:] for k in range(s.shape[1])]


def _merge_runs(runs: np.ndarray, frame_seconds: float, min_gap: float,
                min_duration: float) -> np.ndarray:
    """One class's runs ``(N, 2)`` with gaps under ``min_gap`` bridged, then those shorter
    than ``min_duration`` dropped."""
    if len(runs) > 1 and min_gap > 0:
        merged = [list(runs[0])]
        for a, b in runs[1:]:
            if (a - merged[-1][1]) * frame_seconds < min_gap - TIME_EPS:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        runs = np.array(merged)
    if len(runs) and min_duration > 0:
        runs = runs[(runs[:, 1] - runs[:, 0]) * frame_seconds >= min_duration - TIME_EPS]
    return runs


def scores_to_events(scores: np.ndarray, labels: list[str], frame_seconds: float,
                     config: DetectionConfig, offset_seconds: float = 0.0,
                     duration: float | None = None,
                     thresholds: Sequence[float] | None = None) -> list[Event]:
    end_limit = np.inf if duration is None else offset_seconds + duration
    if thresholds is None:
        thresholds = [config.threshold_of(label) for label in labels]
    all_runs = hysteresis_runs(scores, thresholds, config.hysteresis)
    events = []
    for c, label in enumerate(labels):
        runs = _merge_runs(all_runs[c], frame_seconds, config.min_gap, config.min_duration)
        for a, b in runs:
            # rounded to the microsecond, so 6 * 0.1 s reads 0.6 s
            onset = round(offset_seconds + a * frame_seconds, 6)
            offset = round(min(offset_seconds + b * frame_seconds, end_limit), 6)
            events.append(Event(float(onset), float(offset), label,
                                float(scores[a:b, c].max())))
    events.sort(key=lambda e: (e.onset, e.label))
    return events


def frames_to_events(frame_scores: Any, labels: Sequence[str], frame_seconds: float,
                     config: DetectionConfig | None = None, offset_seconds: float = 0.0,
                     duration: float | None = None) -> list[Event]:
    """Events from frame scores ``(T, C)``, frame ``i`` covering ``[i, i + 1) * frame_seconds``.

    Times are in seconds from the start of the file; ``offset_seconds`` shifts them (the
    start of a block of a long file) and ``duration``, when given, clips the last offset
    (a final frame or chunk that is shorter than the rest). Events come sorted by onset,
    then label; each carries the maximum of its class score over its frames.

    >>> s = np.zeros((6, 1)); s[1:3, 0] = 0.8
    >>> frames_to_events(s, ["dog"], 0.5, DetectionConfig(threshold=0.5), offset_seconds=10)
    [Event(onset=10.5, offset=11.5, label='dog', score=0.8)]
    """
    config = config or DetectionConfig()
    frame_seconds = check_frame_seconds(frame_seconds)
    scores, labels = prepare_scores(frame_scores, labels, frame_seconds, config)
    return scores_to_events(scores, labels, frame_seconds, config, offset_seconds, duration)


def chunks_to_events(chunks: Sequence[Any], labels: Sequence[str],
                     config: DetectionConfig | None = None) -> list[Event]:
    """Events from consecutive chunk scores, e.g. :meth:`Tagger.chunk_scores` output.

    Each chunk has ``start``, ``end`` (seconds) and ``scores`` ``(C,)``; chunks are equally
    long except the last, which may be shorter.

    >>> from types import SimpleNamespace as C
    >>> chunks = [C(start=0.0, end=1.0, scores=[0.9]), C(start=1.0, end=1.4, scores=[0.8])]
    >>> chunks_to_events(chunks, ["dog"])
    [Event(onset=0.0, offset=1.4, label='dog', score=0.9)]
    """
    if not chunks:
        return []
    rows = []
    for chunk in chunks:
        s = chunk.scores
        if hasattr(s, "detach"):
            s = s.detach().cpu().float().numpy()
        rows.append(np.asarray(s, dtype=np.float64).reshape(-1))
    start = float(chunks[0].start)
    return frames_to_events(np.stack(rows), labels, float(chunks[0].end) - start, config,
                            offset_seconds=start, duration=float(chunks[-1].end) - start)


# ---- HTS-AT on DESED -------------------------------------------------------------------------


def desed_label_map(audioset_labels: Sequence[str]) -> dict[str, str]:
    """HTS-AT's AudioSet -> DESED ``label_map`` for a model with the 527 AudioSet labels.

    Use it with :data:`HTSAT_DESED_THRESHOLDS` to follow the paper's DESED evaluation.

    >>> names = [f"class {i}" for i in range(527)]
    >>> desed_label_map(names)["class 74"]
    'Dog'
    """
    labels = list(audioset_labels)
    if len(labels) != 527:
        raise ValueError(f"expected the 527 AudioSet labels, got {len(labels)}")
    return {labels[i]: target for target, idx in HTSAT_DESED_AUDIOSET_INDICES.items()
            for i in idx}
