"""Sound event detection metrics on DESED-style event tables (``earmark sed-eval``).

Four views of a detection system, all on ``{filename: [Event, ...]}`` mappings:

- :func:`event_based`: the DCASE collar-based F1 and error rate: an estimated event matches a
  reference event of the same label when its onset is within ``t_collar`` (200 ms) and its
  offset within ``max(t_collar, percentage_of_length * reference length)`` (200 ms or 20 %),
  each reference and estimate matched at most once (maximum bipartite matching).
- :func:`segment_based`: both event lists as activity rolls of 1 s segments, compared per
  segment and class.
- :func:`intersection_based`: psds_eval's F1 (detection and ground-truth intersection criteria
  ``dtc``, ``gtc``, ``cttc``). With psds_eval's defaults (0.5, 0.5, 0.3) this is the
  "event-based F1" of the HTS-AT paper's DESED table (its authors computed it with
  ``PSDSEval(...).compute_macro_f_score``).
- :func:`psds`: the Polyphonic Sound Detection Score from several operating points (one
  detection table per decision threshold), with the DCASE 2021 presets in
  :data:`PSDS_SCENARIOS`.

:func:`event_based` and :func:`segment_based` follow the semantics of sed_eval 0.2.1
(``sed_eval.sound_event.EventBasedMetrics`` / ``SegmentBasedMetrics``) with the DCASE task 4
settings, re-implemented here because sed_eval needs ``dcase_util``, which imports the
``pkg_resources`` module that current setuptools no longer ships. Like the DCASE baseline's
event-based evaluation (``empty_system_output_handling="zero_score"``), a class with reference
events but no output scores precision 0 and F1 0, so it pulls the macro average down rather than
dropping out of it; a class with no reference event has an undefined (``None``) F1 and error rate
and is left out of the macro averages. Micro ("overall") scores pool the counts of every class.

The evaluated files are the files of the ground truth plus those of the durations table (files
with no event at all). A file in the ground truth that the predictions do not name has no
detections. A prediction file that is not evaluated is ignored (matched by base name when the
prediction names a path). Without a durations table a file lasts until its latest onset or offset
in either table; give DESED's ``*_durations.tsv`` for PSDS, whose false-positive rate is per hour
of audio.

    >>> truth = {"a.wav": [Event(1.0, 4.0, "Dog")]}
    >>> pred = {"a.wav": [Event(1.15, 4.5, "Dog", 0.9)]}  # offset collar: 20 % of 3 s
    >>> event_based(truth, pred)["macro"]["f1"]
    1.0
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from earmark.data.events import (  # noqa: F401  (re-exported)
    COLUMNS,
    Event,
    Events,
    read_durations,
    read_events,
    read_predictions,
    write_events,
)
from earmark.errors import DataError

__all__ = [
    "Event",
    "PSDS_SCENARIOS",
    "event_based",
    "format_sed_table",
    "intersection_based",
    "psds",
    "read_durations",
    "read_events",
    "read_predictions",
    "run_sed_eval",
    "segment_based",
    "write_events",
]


# DCASE 2021 task 4 evaluation settings (also used in 2022-2023): scenario 1 rewards precise
# localisation, scenario 2 tolerates coarse boundaries but penalises confusing classes.
PSDS_SCENARIOS: dict[str, dict[str, float]] = {
    "dcase2021-1": {"dtc": 0.7, "gtc": 0.7, "cttc": 0.3, "alpha_ct": 0.0, "alpha_st": 1.0,
                    "max_efpr": 100.0},
    "dcase2021-2": {"dtc": 0.1, "gtc": 0.1, "cttc": 0.3, "alpha_ct": 0.5, "alpha_st": 1.0,
                    "max_efpr": 100.0},
}


# ---------------------------------------------------------------------------- evaluation set

def _files(truth: Events, durations: Mapping[str, float] | None) -> list[str]:
    return sorted(set(truth) | set(durations or ()))


def _align(files: Sequence[str], pred: Events) -> tuple[dict[str, list[Event]], list[str]]:
    """Predictions keyed by evaluated file name, and the prediction files left out."""
    known = set(files)
    by_base: dict[str, str | None] = {}
    for name in files:
        base = Path(name).name
        by_base[base] = None if base in by_base else name  # None: ambiguous base name
    aligned: dict[str, list[Event]] = {}
    ignored = []
    for name, events in pred.items():
        target = name if name in known else by_base.get(Path(name).name)
        if target is None:
            ignored.append(name)
        else:
            aligned.setdefault(target, []).extend(events)
    return aligned, sorted(ignored)


def _labels(truth: Events, pred: Events, labels: Sequence[str] | None) -> list[str]:
    found = {e.label for table in (truth, pred) for evs in table.values() for e in evs}
    return sorted(found | set(labels or ()))


def _latest_offsets(files: Sequence[str], *tables: Events) -> dict[str, float]:
    """Each file's latest offset in any of ``tables`` (sed_eval's evaluated length)."""
    return {f: max([e.offset for table in tables for e in table.get(f, ())], default=0.0)
            for f in files}


def _json_number(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _f1(precision: float, recall: float) -> float:
    if precision == 0 and recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)  # NaN when either is undefined


def _scores(n_tp: float, n_ref: float, n_sys: float, n_fn: float, n_fp: float,
            n_sub: float | None = None) -> dict[str, Any]:
    """Precision, recall, F1 and error rates from counts, in sed_eval's definitions."""
    precision = n_tp / n_sys if n_sys else 0.0  # "zero_score": no output scores 0, not NaN
    recall = _ratio(n_tp, n_ref)
    out = {"f1": _f1(precision, recall), "precision": precision, "recall": recall}
    rates = {"deletion_rate": _ratio(n_fn, n_ref), "insertion_rate": _ratio(n_fp, n_ref)}
    if n_sub is not None:
        rates = {"substitution_rate": _ratio(n_sub, n_ref), **rates}
    out["error_rate"] = sum(rates.values())
    out.update(rates)
    out = {k: _json_number(v) for k, v in out.items()}
    out.update(n_ref=int(n_ref), n_sys=int(n_sys), n_tp=int(n_tp))
    return out


def _macro(class_wise: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Class-wise averages, leaving out classes whose value is undefined (sed_eval's nanmean)."""
    keys = ("f1", "precision", "recall", "error_rate", "deletion_rate", "insertion_rate")
    out = {}
    for key in keys:
        values = [row[key] for row in class_wise.values() if row.get(key) is not None]
        out[key] = float(np.mean(values)) if values else None
    return out


# ---------------------------------------------------------------------------- event-based

def _max_matching(hits: np.ndarray) -> np.ndarray:
    """Maximum bipartite matching of a ``(n_ref, n_est)`` hit matrix by augmenting paths.

    Returns the estimate matched to each reference, -1 for none.
    """
    n_ref, n_est = hits.shape
    ref_match = np.full(n_ref, -1)
    est_owner = np.full(n_est, -1)
    neighbours = [np.flatnonzero(row) for row in hits]
    for start in range(n_ref):
        # Breadth-first search for a shortest alternating path ending at a free estimate.
        came_from: dict[int, int] = {}  # estimate -> reference that reached it
        frontier, seen, free = [start], {start}, -1
        while frontier and free < 0:
            next_frontier = []
            for j in frontier:
                for i in neighbours[j]:
                    if i in came_from:
                        continue
                    came_from[i] = j
                    if est_owner[i] < 0:
                        free = i
                        break
                    if est_owner[i] not in seen:
                        seen.add(est_owner[i])
                        next_frontier.append(est_owner[i])
                if free >= 0:
                    break
            frontier = next_frontier
        i = free
        while i >= 0:  # flip the path: every reference on it takes the next estimate
            j = came_from[i]
            previous = ref_match[j]
            ref_match[j], est_owner[i] = i, j
            i = previous
    return ref_match


def _time_hits(ref: Sequence[Event], est: Sequence[Event], t_collar: float,
               percentage_of_length: float) -> np.ndarray:
    """``(n_ref, n_est)``: onset within the collar and offset within max(collar, p * length)."""
    r_on = np.array([e.onset for e in ref], dtype=float)[:, None]
    r_off = np.array([e.offset for e in ref], dtype=float)[:, None]
    e_on = np.array([e.onset for e in est], dtype=float)[None, :]
    e_off = np.array([e.offset for e in est], dtype=float)[None, :]
    offset_collar = np.maximum(t_collar, percentage_of_length * (r_off - r_on))
    return (np.abs(r_on - e_on) <= t_collar) & (np.abs(r_off - e_off) <= offset_collar)


def event_based(truth: Events, pred: Events, t_collar: float = 0.200,
                percentage_of_length: float = 0.2, labels: Sequence[str] | None = None,
                durations: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Collar-based event F1, precision, recall and error rate, per class, macro and micro.

    ``labels`` adds classes that neither table names; ``durations`` only adds files without
    events to the evaluation. Returns ``{"params", "class_wise": {label: {...}}, "macro",
    "micro"}``; every score row has ``f1``, ``precision``, ``recall``, ``error_rate``,
    ``deletion_rate``, ``insertion_rate`` (``None`` where undefined) and class-wise and micro
    rows the counts ``n_ref``, ``n_sys``, ``n_tp``. Micro adds ``substitution_rate``: an
    unmatched estimate that fits an unmatched reference of another label in time is one
    substitution instead of a deletion plus an insertion.

    The matching is a maximum matching, as sed_eval's default ``event_matching_type="optimal"``,
    so the true positives, precision, recall and F1 equal sed_eval's; when several maximum
    matchings exist, the substitution count (micro error rate only) can differ from sed_eval's
    in rare ties.

        >>> truth = {"a.wav": [Event(1.0, 4.0, "Dog")]}
        >>> event_based(truth, {"a.wav": [Event(1.1, 4.55, "Dog")]})["micro"]["f1"]
        1.0
        >>> event_based(truth, {"a.wav": [Event(1.1, 4.65, "Dog")]})["micro"]["f1"]
        0.0
    """
    files = _files(truth, durations)
    pred, _ = _align(files, pred)
    classes = _labels(truth, pred, labels)
    counts = {c: np.zeros(3) for c in classes}  # n_ref, n_sys, n_tp
    n_sub = 0
    for name in files:
        ref, est = list(truth.get(name, ())), pred.get(name, [])
        hits = _time_hits(ref, est, t_collar, percentage_of_length)
        ref_label = np.array([e.label for e in ref], dtype=object)
        est_label = np.array([e.label for e in est], dtype=object)
        ref_done = np.zeros(len(ref), dtype=bool)
        est_done = np.zeros(len(est), dtype=bool)
        for c in {e.label for e in ref} | {e.label for e in est}:
            r_idx, e_idx = np.flatnonzero(ref_label == c), np.flatnonzero(est_label == c)
            match = _max_matching(hits[np.ix_(r_idx, e_idx)])
            matched = match >= 0
            ref_done[r_idx[matched]] = True
            est_done[e_idx[match[matched]]] = True
            counts[c] += (len(r_idx), len(e_idx), int(matched.sum()))
        # Substitutions as sed_eval counts them: each leftover reference, in table order, takes
        # the first leftover estimate that fits it in time, whatever its label.
        for j in np.flatnonzero(~ref_done):
            fits = np.flatnonzero(hits[j] & ~est_done)
            if fits.size:
                est_done[fits[0]] = True
                n_sub += 1
    class_wise = {c: _scores(tp, n_ref, n_sys, n_ref - tp, n_sys - tp)
                  for c, (n_ref, n_sys, tp) in counts.items()}
    n_ref, n_sys, n_tp = np.sum(list(counts.values()), axis=0) if counts else (0, 0, 0)
    micro = _scores(n_tp, n_ref, n_sys, n_ref - n_tp - n_sub, n_sys - n_tp - n_sub, n_sub)
    return {"params": {"t_collar": t_collar, "percentage_of_length": percentage_of_length},
            "class_wise": class_wise, "macro": _macro(class_wise), "micro": micro}


# ---------------------------------------------------------------------------- segment-based

def _event_roll(events: Sequence[Event], index: Mapping[str, int], resolution: float,
                n_segments: int) -> np.ndarray:
    """``(n_segments, C)`` activity: an event covers segments floor(onset/r) to ceil(offset/r)."""
    spans = [(math.floor(e.onset / resolution), math.ceil(e.offset / resolution), index[e.label])
             for e in events]
    roll = np.zeros((max([n_segments] + [b for _, b, _ in spans]), len(index)), dtype=bool)
    for a, b, c in spans:
        roll[a:b, c] = True
    return roll[:n_segments]


def segment_based(truth: Events, pred: Events, durations: Mapping[str, float] | None = None,
                  time_resolution: float = 1.0,
                  labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Segment-based F1, precision, recall and error rate, per class, macro and micro.

    Each file is cut into ``time_resolution`` segments up to its duration (``durations``, or
    its latest offset in either table); a class is active in a segment that any of its events
    touches. Micro counts, per segment, ``min(n_ref, n_sys) - n_tp`` substitutions and the
    surplus of either side as deletions or insertions. Same result layout as
    :func:`event_based`.

        >>> truth = {"a.wav": [Event(0.5, 2.5, "Dog")]}      # segments 0, 1, 2
        >>> pred = {"a.wav": [Event(1.2, 2.2, "Dog")]}       # segments 1, 2
        >>> round(segment_based(truth, pred)["micro"]["f1"], 4)
        0.8
    """
    if time_resolution <= 0:
        raise ValueError(f"time_resolution must be positive, got {time_resolution}")
    files = _files(truth, durations)
    pred, _ = _align(files, pred)
    classes = _labels(truth, pred, labels)
    index = {c: i for i, c in enumerate(classes)}
    lengths = dict(durations) if durations is not None else {}
    fallback = _latest_offsets(files, truth, pred)
    class_counts = np.zeros((5, len(classes)))  # n_ref, n_sys, n_tp, n_fn, n_fp
    n_sub = n_del = n_ins = 0
    for name in files:
        n_segments = math.ceil(lengths.get(name, fallback[name]) / time_resolution)
        ref = _event_roll(truth.get(name, ()), index, time_resolution, n_segments)
        est = _event_roll(pred.get(name, ()), index, time_resolution, n_segments)
        tp = ref & est
        class_counts += [ref.sum(0), est.sum(0), tp.sum(0), (ref & ~est).sum(0),
                         (est & ~ref).sum(0)]
        n_ref_seg, n_sys_seg = ref.sum(1), est.sum(1)
        n_sub += int((np.minimum(n_ref_seg, n_sys_seg) - tp.sum(1)).sum())
        n_del += int(np.maximum(0, n_ref_seg - n_sys_seg).sum())
        n_ins += int(np.maximum(0, n_sys_seg - n_ref_seg).sum())
    class_wise = {c: _scores(tp, n_ref, n_sys, fn, fp)
                  for c, (n_ref, n_sys, tp, fn, fp) in zip(classes, class_counts.T)}
    n_ref, n_sys, n_tp = class_counts[:3].sum(axis=1)
    micro = _scores(n_tp, n_ref, n_sys, n_del, n_ins, n_sub)
    return {"params": {"time_resolution": time_resolution},
            "class_wise": class_wise, "macro": _macro(class_wise), "micro": micro}


# ---------------------------------------------------------------------------- psds_eval

def _step_curve(x: np.ndarray, xp: np.ndarray, yp: np.ndarray) -> np.ndarray:
    """psds_eval's staircase ROC on the points ``x``: at each ``x`` the best ``yp`` reached at
    an ``xp <= x``, made non-decreasing, 0 before the first point."""
    order = np.argsort(xp, kind="stable")
    xs, ys = np.asarray(xp, dtype=float)[order], np.asarray(yp, dtype=float)[order]
    unique_x, first = np.unique(xs, return_index=True)
    best = np.fmax.accumulate(np.fmax.reduceat(ys, first))
    at = np.searchsorted(unique_x, x, side="right") - 1
    return np.where(at >= 0, best[np.clip(at, 0, None)], 0.0)


def _staircase_area(x: np.ndarray, y: np.ndarray, max_x: float | None = None,
                    decreasing_y: bool = False) -> float:
    """psds_eval's area under a staircase (rectangles, not trapezoids) from x[0] to ``max_x``."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if max_x is None:
        max_x = float(x.max())
    keep = x <= max_x
    return float(np.sum(np.diff(np.append(x[keep], max_x)) * y[keep]))


@functools.cache
def _psds_eval_class() -> type:
    from psds_eval import PSDSEval

    class _PSDSEval(PSDSEval):
        # psds_eval 0.5.3 (the latest release) fails on pandas >= 3 (step_curve calls
        # DataFrame.fillna(method=...)) and on recent numpy (_auc calls int() on a 2-D
        # array); these two helpers compute the same curves and areas with numpy alone.
        step_curve = staticmethod(_step_curve)
        _auc = staticmethod(_staircase_area)

        def _effective_fp_rate(self, alpha_ct=0.0):
            # With a single class there is no cross-trigger rate to average: psds_eval's eFPR
            # becomes NaN (even for alpha_ct = 0) and PSDS 0. Count no cross-triggers instead.
            rates = super()._effective_fp_rate(alpha_ct)
            efpr = rates.effective_fp_rate
            return rates._replace(effective_fp_rate=np.where(np.isnan(efpr), rates.fp_rate,
                                                             efpr))

    return _PSDSEval


def _overlap(events: Sequence[Event]) -> tuple[Event, Event] | None:
    """Two distinct same-label events that overlap, which psds_eval refuses."""
    by_label: dict[str, list[Event]] = {}
    for e in events:
        by_label.setdefault(e.label, []).append(e)
    for group in by_label.values():
        spans = sorted({(e.onset, e.offset): e for e in group}.values(),
                       key=lambda e: (e.onset, e.offset))
        latest = None
        for e in spans:
            if latest is not None and e.onset < latest.offset:
                return latest, e
            if latest is None or e.offset > latest.offset:
                latest = e
    return None


def _frame(events: Events, files: Sequence[str], source: str):
    import pandas as pd

    rows = []
    for name in files:
        file_events = events.get(name, ())
        pair = _overlap(file_events)
        if pair is not None:
            a, b = pair
            raise DataError(source, f"{name}: two overlapping {a.label!r} events "
                                    f"({a.onset}-{a.offset} s and {b.onset}-{b.offset} s); "
                                    "psds_eval needs events of one class not to overlap "
                                    "(merge them)")
        rows += [(name, e.onset, e.offset, e.label) for e in file_events]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    return frame.astype({"onset": float, "offset": float})


def _psds_evaluator(truth: Events, durations: Mapping[str, float], dtc: float, gtc: float,
                    cttc: float, truth_source: str):
    import pandas as pd

    files = _files(truth, durations)
    missing = [f for f in files if f not in durations]
    if missing:
        raise DataError("durations", f"no duration for {len(missing)} file(s) of the ground "
                                     f"truth, e.g. {missing[:3]}")
    meta = pd.DataFrame({"filename": files, "duration": [float(durations[f]) for f in files]})
    evaluator = _psds_eval_class()(dtc_threshold=dtc, gtc_threshold=gtc, cttc_threshold=cttc)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator.set_ground_truth(_frame(truth, files, truth_source), meta)
    return evaluator, files


def intersection_based(truth: Events, pred: Events, durations: Mapping[str, float],
                       dtc: float = 0.5, gtc: float = 0.5, cttc: float = 0.3, *,
                       truth_source: str = "ground truth",
                       pred_source: str = "predictions") -> dict[str, Any]:
    """psds_eval's intersection-based F1 per class and macro (``compute_macro_f_score``).

    A detection is a true positive when at least ``dtc`` of it lies on reference events of its
    class and those references are covered to at least ``gtc``. The defaults are psds_eval's,
    with which the HTS-AT paper computed its DESED table. Classes are those of the ground truth
    (psds_eval ignores detections of other labels). psds_eval gives a class without any true
    positive an F1 of NaN and leaves it out of the macro average; here it scores 0 and counts.
    ``*_source`` name the tables in errors (overlapping events of one class).

        >>> truth = {"a.wav": [Event(1.0, 3.0, "Dog")]}
        >>> r = intersection_based(truth, {"a.wav": [Event(1.5, 3.5, "Dog")]}, {"a.wav": 10.0})
        >>> r["macro"]["f1"]
        1.0
    """
    evaluator, files = _psds_evaluator(truth, durations, dtc, gtc, cttc, truth_source)
    pred, _ = _align(files, pred)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        _, per_class = evaluator.compute_macro_f_score(_frame(pred, files, pred_source))
    # NaN arises only from 0 true positives (0 / 0 in psds_eval's count of references).
    class_wise = {c: {"f1": 0.0 if math.isnan(f) else float(f)} for c, f in per_class.items()}
    macro = float(np.mean([row["f1"] for row in class_wise.values()])) if class_wise else None
    return {"params": {"dtc": dtc, "gtc": gtc, "cttc": cttc}, "class_wise": class_wise,
            "macro": {"f1": macro}}


def psds(truth: Events, pred_by_threshold: Mapping[float, Events],
         durations: Mapping[str, float], dtc: float = 0.7, gtc: float = 0.7, cttc: float = 0.3,
         alpha_ct: float = 0.0, alpha_st: float = 1.0, max_efpr: float = 100.0, *,
         truth_source: str = "ground truth", pred_source: str = "predictions") -> dict[str, Any]:
    """Polyphonic Sound Detection Score (Bilen et al., 2020) through psds_eval.

    ``pred_by_threshold`` holds one detection table per decision threshold (an operating point
    each; psds_eval skips a table identical to an earlier one). The defaults are DCASE 2021
    scenario 1; ``psds(truth, tables, durations, **PSDS_SCENARIOS["dcase2021-2"])`` gives
    scenario 2. ``max_efpr`` is in false positives per hour. Returns the score in [0, 1] under
    ``"psds"`` with the parameters, the thresholds and the number of operating points kept.

        >>> truth = {"a.wav": [Event(1.0, 3.0, "Dog")]}
        >>> tables = {0.3: {"a.wav": [Event(1.0, 3.0, "Dog"), Event(5.0, 6.0, "Dog")]},
        ...           0.5: {"a.wav": [Event(1.0, 3.0, "Dog")]}}
        >>> psds(truth, tables, {"a.wav": 10.0})["psds"]
        1.0
    """
    if not pred_by_threshold:
        raise ValueError("psds needs at least one detection table")
    evaluator, files = _psds_evaluator(truth, durations, dtc, gtc, cttc, truth_source)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")
        for threshold in sorted(pred_by_threshold):
            aligned, _ = _align(files, pred_by_threshold[threshold])
            source = f"{pred_source} at threshold {threshold}"
            evaluator.add_operating_point(_frame(aligned, files, source),
                                          info={"threshold": threshold})
        score = evaluator.psds(alpha_ct=alpha_ct, alpha_st=alpha_st, max_efpr=max_efpr)
    return {"psds": _json_number(score.value), "dtc": dtc, "gtc": gtc, "cttc": cttc,
            "alpha_ct": alpha_ct, "alpha_st": alpha_st, "max_efpr": max_efpr,
            "duration_unit": "hour", "thresholds": [float(t) for t in sorted(pred_by_threshold)],
            "operating_points": int(evaluator.num_operating_points())}


# ---------------------------------------------------------------------------- the command

def _pick_threshold(thresholds: Sequence[float], wanted: float | None) -> float:
    ordered = sorted(thresholds)
    target = 0.5 if wanted is None else wanted
    close = [t for t in ordered if math.isclose(t, target, abs_tol=1e-9)]
    if close:
        return close[0]
    if wanted is not None:
        raise ValueError(f"no prediction table for threshold {wanted}; have {ordered}")
    return ordered[len(ordered) // 2]


def run_sed_eval(truth: str | Path, pred: str | Path, meta: str | Path | None = None, *,
                 t_collar: float = 0.200, percentage_of_length: float = 0.2,
                 time_resolution: float = 1.0, threshold: float | None = None,
                 psds_scenarios: Sequence[str] = ("dcase2021-1", "dcase2021-2"),
                 labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Everything ``earmark sed-eval`` reports, as a JSON-serialisable dict.

    ``truth`` is a DESED TSV of reference events; ``pred`` a TSV of detections or a folder of
    ``predictions_th_<threshold>.tsv`` tables (the DCASE baseline's layout); ``meta`` a
    ``filename duration`` TSV. F1 scores come from one table: the only one, or the folder's
    table at ``threshold`` (default 0.5, else the middle threshold). PSDS (one entry per name
    in ``psds_scenarios``, see :data:`PSDS_SCENARIOS`) needs the folder, and is ``None``
    for a single table.

    Keys: ``files`` (evaluated), ``classes``, ``threshold``, ``durations_from`` (``"meta"``
    or ``"latest offset"``), ``event_based``, ``segment_based``, ``intersection_based``,
    ``psds``, ``ignored_pred_files`` (prediction files that are not in the evaluation).

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> truth = {"a.wav": [Event(1.0, 4.0, "Dog"), Event(5.0, 8.0, "Speech")]}
        >>> _ = write_events(root / "public.tsv", truth)
        >>> _ = (root / "public_durations.tsv").write_text(
        ...     "filename\\tduration\\na.wav\\t10.0\\nb.wav\\t10.0\\n")  # b.wav: no event
        >>> (root / "predictions").mkdir()
        >>> for th in ["0.30", "0.50", "0.70"]:  # one table per decision threshold
        ...     pred = {"a.wav": [Event(1.1, 4.2, "Dog"), Event(5.1, 7.5, "Speech")],
        ...             "b.wav": [Event(6.0, 7.0, "Dog")] if th == "0.30" else []}
        ...     _ = write_events(root / "predictions" / f"predictions_th_{th}.tsv", pred)
        >>> result = run_sed_eval(root / "public.tsv", root / "predictions",
        ...                       root / "public_durations.tsv")
        >>> result["files"], result["classes"], result["threshold"], result["durations_from"]
        (2, ['Dog', 'Speech'], 0.5, 'meta')
        >>> result["event_based"]["macro"]["f1"], round(result["psds"]["dcase2021-1"]["psds"], 3)
        (1.0, 1.0)
        >>> print(format_sed_table(result))  # doctest: +ELLIPSIS
        sound event detection: 2 files, 2 classes, detections at threshold 0.5
        ...
        PSDS dcase2021-1: 1.000  (dtc 0.7, gtc 0.7, cttc 0.3, alpha_ct 0, alpha_st 1, ...)
        PSDS dcase2021-2: 1.000  (dtc 0.1, gtc 0.1, cttc 0.3, alpha_ct 0.5, alpha_st 1, ...)
    """
    unknown = [s for s in psds_scenarios if s not in PSDS_SCENARIOS]
    if unknown:
        raise ValueError(f"unknown PSDS scenario(s) {unknown}; known: {sorted(PSDS_SCENARIOS)}")
    truth_path, pred_path = Path(truth), Path(pred)
    truth_events = read_events(truth_path)
    tables = read_predictions(pred_path) if pred_path.is_dir() else None
    chosen = _pick_threshold(list(tables), threshold) if tables else None
    single = tables[chosen] if tables else read_events(pred_path)
    durations = read_durations(meta) if meta is not None else None

    files = _files(truth_events, durations)
    if not files:
        raise DataError(truth_path, "no files to evaluate: the table has no rows")
    if durations is not None:
        missing = [f for f in files if f not in durations]
        if missing:
            raise DataError(meta, f"no duration for {len(missing)} file(s) of {truth_path}, "
                                  f"e.g. {missing[:3]}")
    pred_events, ignored = _align(files, single)
    if tables:
        ignored = sorted({name for t in tables.values() for name in _align(files, t)[1]})
    if ignored:
        warnings.warn(f"{pred_path}: {len(ignored)} file(s) not in {truth_path}"
                      f"{' or ' + str(meta) if meta else ''} are ignored, e.g. {ignored[:3]}",
                      stacklevel=2)
    if durations is None:
        aligned = [_align(files, t)[0] for t in tables.values()] if tables else [pred_events]
        durations = _latest_offsets(files, truth_events, *aligned)
    sources = {"truth_source": str(truth_path), "pred_source": str(pred_path)}
    result: dict[str, Any] = {
        "files": len(files),
        "classes": _labels(truth_events, pred_events, labels),
        "threshold": chosen,
        "durations_from": "meta" if meta is not None else "latest offset",
        "event_based": event_based(truth_events, pred_events, t_collar, percentage_of_length,
                                   labels, durations),
        "segment_based": segment_based(truth_events, pred_events, durations, time_resolution,
                                       labels),
        "intersection_based": intersection_based(truth_events, pred_events, durations,
                                                 **sources),
        "psds": None,
    }
    if tables:
        result["psds"] = {name: psds(truth_events, tables, durations, **PSDS_SCENARIOS[name],
                                     **sources)
                          for name in psds_scenarios}
    result["ignored_pred_files"] = ignored
    return result


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_sed_table(result: Mapping[str, Any]) -> str:
    """Per-class and macro/micro scores of :func:`run_sed_eval` as an aligned text table.

    F1, precision and recall are in percent, error rates as ratios; ``-`` marks an undefined
    value. PSDS lines follow when the result has them.

        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> _ = write_events(root / "truth.tsv", {"a.wav": [Event(1.0, 4.0, "Dog"),
        ...                                               Event(5.0, 8.0, "Speech")]})
        >>> _ = write_events(root / "pred.tsv", {"a.wav": [Event(1.1, 4.2, "Dog"),
        ...                                              Event(6.0, 9.0, "Speech")]})
        >>> print(format_sed_table(run_sed_eval(root / "truth.tsv", root / "pred.tsv")))
        sound event detection: 1 files, 2 classes
          event: onset collar 200 ms, offset collar max(200 ms, 20 % of the event)
          intersection (psds_eval F1): dtc 0.5, gtc 0.5, cttc 0.3
          segment: 1 s segments
          F1, P, R in %; ER is a ratio
        <BLANKLINE>
        class    ev F1    ev P    ev R  ev ER  int F1  seg F1  seg P   seg R  seg ER  n_ref
        ------  ------  ------  ------  -----  ------  ------  -----  ------  ------  -----
        Dog     100.00  100.00  100.00  0.000  100.00   85.71  75.00  100.00   0.333      1
        Speech    0.00    0.00    0.00  2.000  100.00   66.67  66.67   66.67   0.667      1
        ------  ------  ------  ------  -----  ------  ------  -----  ------  ------  -----
        macro    50.00   50.00   50.00  1.000  100.00   76.19  70.83   83.33   0.500
        micro    50.00   50.00   50.00  1.000       -   76.92  71.43   83.33   0.500      2
    """
    ev, seg = result["event_based"], result["segment_based"]
    inter = result.get("intersection_based") or {"class_wise": {}, "macro": {}, "params": {}}
    title = f"sound event detection: {result['files']} files, {len(result['classes'])} classes"
    if result.get("threshold") is not None:
        title += f", detections at threshold {result['threshold']:g}"
    p = ev["params"]
    ip = inter.get("params", {})
    notes = [
        f"event: onset collar {p['t_collar'] * 1000:g} ms, offset collar max("
        f"{p['t_collar'] * 1000:g} ms, {p['percentage_of_length'] * 100:g} % of the event)",
        f"intersection (psds_eval F1): dtc {ip.get('dtc', '-')}, gtc {ip.get('gtc', '-')}, "
        f"cttc {ip.get('cttc', '-')}",
        f"segment: {seg['params']['time_resolution']:g} s segments",
        "F1, P, R in %; ER is a ratio",
    ]
    header = ["class", "ev F1", "ev P", "ev R", "ev ER", "int F1", "seg F1", "seg P", "seg R",
              "seg ER", "n_ref"]

    def cells(name: str, e: Mapping, i: Mapping, s: Mapping, n_ref: Any) -> list[str]:
        return [name, _pct(e.get("f1")), _pct(e.get("precision")), _pct(e.get("recall")),
                _ratio_text(e.get("error_rate")), _pct(i.get("f1")), _pct(s.get("f1")),
                _pct(s.get("precision")), _pct(s.get("recall")),
                _ratio_text(s.get("error_rate")), "" if n_ref is None else str(n_ref)]

    rows = [header]
    for c in result["classes"]:
        e = ev["class_wise"].get(c, {})
        rows.append(cells(c, e, inter["class_wise"].get(c, {}), seg["class_wise"].get(c, {}),
                          e.get("n_ref")))
    body_end = len(rows)
    rows.append(cells("macro", ev["macro"], inter["macro"], seg["macro"], None))
    rows.append(cells("micro", ev["micro"], {}, seg["micro"], ev["micro"].get("n_ref")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                         for i, (cell, w) in enumerate(zip(r, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [title] + [f"  {n}" for n in notes] + ["", line(rows[0]), rule]
    lines += [line(r) for r in rows[1:body_end]] + [rule] + [line(r) for r in rows[body_end:]]
    for name, score in (result.get("psds") or {}).items():
        lines.append(f"PSDS {name}: {_ratio_text(score['psds'])}  (dtc {score['dtc']:g}, "
                     f"gtc {score['gtc']:g}, cttc {score['cttc']:g}, alpha_ct "
                     f"{score['alpha_ct']:g}, alpha_st {score['alpha_st']:g}, max_efpr "
                     f"{score['max_efpr']:g}/h, {score['operating_points']} operating points)")
    if result.get("ignored_pred_files"):
        lines.append(f"ignored {len(result['ignored_pred_files'])} prediction file(s) not in "
                     "the ground truth")
    return "\n".join(lines)
