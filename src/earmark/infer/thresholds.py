"""Per-class detection thresholds tuned on strongly labelled files: each candidate threshold
runs the detection steps of :mod:`earmark.infer.events` and is scored by an event-based or a
frame-based F1 against the reference events.

    >>> import numpy as np
    >>> scores = np.array([[0.1], [0.7], [0.8], [0.2], [0.1]])  # one file, 0.1 s frames
    >>> tune_thresholds([scores], [[(0.1, 0.3, "dog")]], ["dog"], 0.1)
    {'dog': 0.45}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from earmark.data.events import Event
from earmark.infer.events import (
    TIME_EPS,
    DetectionConfig,
    check_frame_seconds,
    prepare_scores,
    scores_to_events,
)

# Collars of the event-based F1 used by tune_thresholds (the DCASE task 4 convention).
ONSET_COLLAR = 0.2
OFFSET_COLLAR = 0.2
OFFSET_COLLAR_RATE = 0.2

# Thresholds tune_thresholds tries by default: 0.05, 0.10, ..., 0.95.
THRESHOLD_CANDIDATES = tuple(round(0.05 * i, 2) for i in range(1, 20))

def _triplet(event: Any) -> tuple[float, float, str]:
    if isinstance(event, Event):
        return float(event.onset), float(event.offset), str(event.label)
    onset, offset, label = event[:3]
    return float(onset), float(offset), str(label)


def _matched(pred: list[tuple[float, float]], truth: list[tuple[float, float]]) -> int:
    """How many truth events a prediction matches within the onset and offset collars.

    Greedy in onset order: each truth event takes the first unused prediction in collar.
    """
    used = [False] * len(pred)
    hits = 0
    for t_on, t_off in sorted(truth):
        off_collar = max(OFFSET_COLLAR, OFFSET_COLLAR_RATE * (t_off - t_on))
        for j, (p_on, p_off) in enumerate(pred):
            if (not used[j] and abs(p_on - t_on) <= ONSET_COLLAR + TIME_EPS
                    and abs(p_off - t_off) <= off_collar + TIME_EPS):
                used[j] = True
                hits += 1
                break
    return hits


def _f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    # A class that is absent and never predicted scores 1: predicting nothing was right.
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def _truth_frames(truth: Iterable[Any], labels: list[str], n_frames: int,
                  frame_seconds: float) -> np.ndarray:
    """``(T, C)`` bool: a frame is positive when its centre lies inside a truth event."""
    out = np.zeros((n_frames, len(labels)), dtype=bool)
    column = {label: c for c, label in enumerate(labels)}
    centres = (np.arange(n_frames) + 0.5) * frame_seconds
    for onset, offset, label in map(_triplet, truth):
        if label in column:
            out[(centres >= onset) & (centres < offset), column[label]] = True
    return out


def tune_thresholds(frame_scores_list: Sequence[Any], truth_events_list: Sequence[Iterable[Any]],
                    labels: Sequence[str], frame_seconds: float,
                    candidates: Sequence[float] | np.ndarray = THRESHOLD_CANDIDATES,
                    metric: str = "event_f1",
                    config: DetectionConfig | None = None) -> dict[str, float]:
    """Per-class thresholds that maximise a per-class F1 on a validation split.

    ``frame_scores_list[i]`` is one file's ``(T_i, C)`` scores and ``truth_events_list[i]``
    its reference events (:class:`Event` or ``(onset, offset, label)``), in detection labels
    (after ``config.label_map``). The rest of ``config`` (median filter, hysteresis, ...)
    applies while tuning.

    - ``event_f1``: events from :func:`frames_to_events` matched to the truth with a 200 ms
      onset collar and an offset collar of ``max(200 ms, 20 % of the truth event)``, the
      DCASE task 4 convention (a simple greedy matcher, not sed_eval's).
    - ``frame_f1``: frames after mapping, median filter and threshold against truth frames
      (a frame is positive when its centre lies in a truth event); faster, and blind to
      ``min_duration``, ``min_gap`` and ``hysteresis``.

    Ties go to the middle of the best candidates, away from the edges of the plateau.

    >>> s = np.array([[0.3], [0.6], [0.6], [0.3]])
    >>> t = tune_thresholds([s], [[(0.1, 0.3, "dog")]], ["dog"], 0.1, metric="frame_f1")
    >>> 0.3 < t["dog"] <= 0.6
    True
    """
    if metric not in ("event_f1", "frame_f1"):
        raise ValueError(f"metric must be 'event_f1' or 'frame_f1', got {metric!r}")
    if len(frame_scores_list) != len(truth_events_list):
        raise ValueError(f"{len(frame_scores_list)} score arrays but "
                         f"{len(truth_events_list)} truth lists")
    if not len(frame_scores_list):
        raise ValueError("tune_thresholds needs at least one file")
    cands = np.sort(np.asarray(candidates, dtype=np.float64).reshape(-1))
    if cands.size == 0:
        raise ValueError("no threshold candidates")
    config = config or DetectionConfig()
    frame_seconds = check_frame_seconds(frame_seconds)
    prepared = [prepare_scores(s, labels, frame_seconds, config) for s in frame_scores_list]
    out_labels = prepared[0][1]
    truths = [list(map(_triplet, t)) for t in truth_events_list]
    n_cls, n_cand = len(out_labels), cands.size
    tp = np.zeros((n_cand, n_cls))
    fp = np.zeros((n_cand, n_cls))
    fn = np.zeros((n_cand, n_cls))

    for (scores, _), truth in zip(prepared, truths):
        if metric == "frame_f1":
            positive = _truth_frames(truth, out_labels, scores.shape[0], frame_seconds)
            active = scores[None] >= cands[:, None, None]  # (K, T, C)
            tp += (active & positive).sum(axis=1)
            fp += (active & ~positive).sum(axis=1)
            fn += (~active & positive).sum(axis=1)
            continue
        ref = {label: [(on, off) for on, off, lab in truth if lab == label]
               for label in out_labels}
        for k, th in enumerate(cands):
            events = scores_to_events(scores, out_labels, frame_seconds, config,
                             thresholds=[th] * n_cls)
            for c, label in enumerate(out_labels):
                pred = [(e.onset, e.offset) for e in events if e.label == label]
                hits = _matched(pred, ref[label])
                tp[k, c] += hits
                fp[k, c] += len(pred) - hits
                fn[k, c] += len(ref[label]) - hits

    f1 = _f1(tp, fp, fn)  # (K, C)
    chosen = {}
    for c, label in enumerate(out_labels):
        best = np.flatnonzero(np.isclose(f1[:, c], f1[:, c].max()))
        chosen[label] = float(cands[best[len(best) // 2]])
    return chosen
