"""Clip-level tagging metrics: accuracy, mAP, mAUC, d-prime, confusion matrix.

Pure functions on arrays. ``scores`` is ``(N, C)`` (logits or probabilities: every metric
here depends only on the ranking within a row or a column); ``targets`` is ``(N, C)``
multi-hot (one-hot for single-label data) or, for single-label data, ``(N,)`` class indices.
torch tensors are accepted wherever numpy arrays are.

    >>> import numpy as np
    >>> scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    >>> targets = np.array([0, 1, 1])
    >>> top_k_accuracy(scores, targets, k=1)
    0.6666666666666666
    >>> m = evaluate(scores, targets, labels=["dog", "cat"], multi_label=False)
    >>> print(format_table(m))
    single-label, 3 clips, 2 classes
      accuracy        0.6667
      top-2 accuracy  1.0000
      mAP             1.0000
      mAUC            1.0000
      d-prime         -
    <BLANKLINE>
    label  support      AP     AUC  recall
    -----  -------  ------  ------  ------
    dog          1  1.0000  1.0000  1.0000
    cat          2  1.0000  1.0000  0.5000
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "confusion_matrix",
    "d_prime",
    "evaluate",
    "format_table",
    "mean_auc",
    "mean_average_precision",
    "per_class_auc",
    "per_class_average_precision",
    "top_k_accuracy",
]


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, on any device and dtype (bfloat16 included)
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _scores(scores: Any) -> np.ndarray:
    s = _as_array(scores).astype(np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s


def _multi_hot(targets: Any, num_classes: int) -> np.ndarray:
    """``(N,)`` class indices or ``(N, C)`` multi-hot -> ``(N, C)`` int8 multi-hot."""
    t = _as_array(targets)
    if t.ndim == 1:
        if not np.issubdtype(t.dtype, np.integer) and not np.all(np.mod(t, 1) == 0):
            raise ValueError("1-D targets must be integer class indices")
        idx = t.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
            raise ValueError(f"class index out of range [0, {num_classes}): "
                             f"min {idx.min()}, max {idx.max()}")
        out = np.zeros((idx.size, num_classes), dtype=np.int8)
        out[np.arange(idx.size), idx] = 1
        return out
    if t.ndim != 2 or t.shape[1] != num_classes:
        raise ValueError(f"targets must be (N,) class indices or (N, {num_classes}) multi-hot, "
                         f"got shape {t.shape}")
    return (t > 0.5).astype(np.int8)  # tolerant of float 0/1 targets


def _pair(scores: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _scores(scores)
    t = _multi_hot(targets, s.shape[1])
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"scores have {s.shape[0]} clips but targets have {t.shape[0]}")
    return s, t


def _class_indices(targets: np.ndarray) -> np.ndarray:
    """One-hot ``(N, C)`` -> ``(N,)``; refuses rows that are not single-label."""
    positives = targets.sum(axis=1)
    if np.any(positives != 1):
        bad = int(np.flatnonzero(positives != 1)[0])
        raise ValueError(f"single-label metric needs exactly one positive class per clip; "
                         f"clip {bad} has {int(positives[bad])}")
    return targets.argmax(axis=1)


def _nanmean(values: np.ndarray) -> float:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else math.nan


def top_k_accuracy(scores: Any, targets: Any, k: int = 1) -> float:
    """Fraction of clips whose ``k`` highest-scored classes include a true class.

    For single-label data this is the usual top-k accuracy; for multi-hot targets a clip
    counts as a hit when any of its positive classes is among the top ``k``. ``k`` larger
    than the number of classes is capped at it.

        >>> top_k_accuracy([[0.1, 0.5, 0.4]], [2], k=2)
        1.0
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    s, t = _pair(scores, targets)
    if s.shape[0] == 0:
        return math.nan
    k = min(k, s.shape[1])
    # Stable sort of the negated scores: ties go to the lower class index, as argmax does.
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # (N, k)
    hits = np.take_along_axis(t, top, axis=1).any(axis=1)
    return float(hits.mean())


def per_class_average_precision(scores: Any, targets: Any) -> np.ndarray:
    """Average precision of each class, ``(C,)``; NaN for a class with no positive clip.

        >>> per_class_average_precision([[0.9, 0.2], [0.1, 0.3]], [[1, 0], [0, 0]])
        array([ 1., nan])
    """
    s, t = _pair(scores, targets)
    ap = np.full(s.shape[1], np.nan)
    for c in np.flatnonzero(t.sum(axis=0) > 0):
        ap[c] = average_precision_score(t[:, c], s[:, c])
    return ap


def mean_average_precision(scores: Any, targets: Any) -> float:
    """Macro mAP over the classes that have at least one positive clip (NaN if none has).

        >>> mean_average_precision([[0.9, 0.2], [0.1, 0.3]], [[1, 0], [0, 0]])
        1.0
    """
    return _nanmean(per_class_average_precision(scores, targets))


def per_class_auc(scores: Any, targets: Any) -> np.ndarray:
    """ROC AUC of each class, ``(C,)``; NaN for a class lacking positives or negatives."""
    s, t = _pair(scores, targets)
    auc = np.full(s.shape[1], np.nan)
    positives = t.sum(axis=0)
    for c in np.flatnonzero((positives > 0) & (positives < t.shape[0])):
        auc[c] = roc_auc_score(t[:, c], s[:, c])
    return auc


def mean_auc(scores: Any, targets: Any) -> float:
    """Macro ROC AUC over the classes with both positive and negative clips (NaN if none).

        >>> mean_auc([[0.9, 0.2], [0.1, 0.3]], [[1, 0], [0, 1]])
        1.0
    """
    return _nanmean(per_class_auc(scores, targets))


def d_prime(auc: float | np.ndarray) -> float | np.ndarray:
    """Sensitivity index from ROC AUC, ``sqrt(2) * Phi^-1(auc)``.

    The conversion AudioSet papers report (Gemmeke et al. 2017; Hershey et al. 2017):
    AUC 0.5 is d' 0, AUC 1 is +inf.

        >>> round(d_prime(0.9), 4)
        1.8124
    """
    value = np.sqrt(2.0) * norm.ppf(auc)
    return float(value) if np.ndim(value) == 0 else value


def confusion_matrix(scores: Any, targets: Any, num_classes: int | None = None) -> np.ndarray:
    """``(C, C)`` int counts: row = true class, column = predicted (argmax) class.

    Single-label only: every clip needs exactly one true class.

        >>> confusion_matrix([[0.9, 0.1], [0.7, 0.3]], [0, 1], num_classes=2)
        array([[1, 0],
               [1, 0]])
    """
    s = _scores(scores)
    num_classes = s.shape[1] if num_classes is None else num_classes
    if s.shape[1] != num_classes:
        raise ValueError(f"scores have {s.shape[1]} classes, expected {num_classes}")
    _, t = _pair(s, targets)
    truth = _class_indices(t)
    pred = s.argmax(axis=1)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (truth, pred), 1)
    return cm


def _json_number(x: float) -> float | None:
    """NaN and inf are not JSON: they become ``null``."""
    x = float(x)
    return x if math.isfinite(x) else None


def evaluate(scores: Any, targets: Any, labels: Sequence[str], multi_label: bool,
             top_k: Sequence[int] = (1, 5)) -> dict[str, Any]:
    """All clip-level metrics of a split as a JSON-serialisable dict.

    Keys: ``task`` ("single-label" or "multi-label"), ``num_clips``, ``num_classes``,
    ``mAP``, ``mAUC``, ``d_prime`` (of mAUC), ``per_class`` (one row per label with
    ``label``, ``support`` (positive clips), ``AP``, ``AUC``). Single-label adds
    ``accuracy`` (top-1), ``top_k_accuracy`` (``{"1": .., "5": ..}``, k capped at C),
    ``recall`` in each per-class row (the class's own accuracy) and ``confusion_matrix``
    (nested lists, rows true, columns predicted). Undefined values (a class with no
    positives, d' of a perfect AUC) are ``None``.

        >>> m = evaluate([[0.9, 0.1], [0.2, 0.8]], [0, 1], ["dog", "cat"], multi_label=False)
        >>> m["accuracy"], m["mAP"]
        (1.0, 1.0)
    """
    s, t = _pair(scores, targets)
    num_clips, num_classes = s.shape
    labels = [str(label) for label in labels]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for {num_classes} classes")

    ap = per_class_average_precision(s, t)
    auc = per_class_auc(s, t)
    mauc = _nanmean(auc)
    support = t.sum(axis=0)
    result: dict[str, Any] = {
        "task": "multi-label" if multi_label else "single-label",
        "num_clips": int(num_clips),
        "num_classes": int(num_classes),
    }
    rows = [{"label": labels[c], "support": int(support[c]), "AP": _json_number(ap[c]),
             "AUC": _json_number(auc[c])} for c in range(num_classes)]

    if not multi_label:
        cm = confusion_matrix(s, t, num_classes)
        ks = sorted({min(int(k), num_classes) for k in top_k} | {1})
        result["accuracy"] = _json_number(top_k_accuracy(s, t, 1))
        result["top_k_accuracy"] = {str(k): _json_number(top_k_accuracy(s, t, k)) for k in ks}
        diagonal = np.diag(cm)
        for c, row in enumerate(rows):
            row["recall"] = _json_number(diagonal[c] / support[c]) if support[c] else None

    result["mAP"] = _json_number(_nanmean(ap))
    result["mAUC"] = _json_number(mauc)
    result["d_prime"] = _json_number(d_prime(mauc)) if not math.isnan(mauc) else None
    result["per_class"] = rows
    if not multi_label:
        result["confusion_matrix"] = cm.tolist()
    return result


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(metrics: dict[str, Any]) -> str:
    """Headline metrics then one aligned row per class, as plain text.

    ``metrics`` is what :func:`evaluate` returns.

        >>> m = evaluate([[0.9, 0.1], [0.2, 0.8]], [0, 1], ["dog", "cat"], multi_label=False)
        >>> print(format_table(m).splitlines()[0])
        single-label, 2 clips, 2 classes
    """
    title = (f"{metrics.get('task', 'metrics')}, {metrics.get('num_clips', '?')} clips, "
             f"{metrics.get('num_classes', '?')} classes")
    lines = [title]
    headline: list[tuple[str, Any]] = []
    if "accuracy" in metrics:
        headline.append(("accuracy", metrics["accuracy"]))
        for k, value in metrics.get("top_k_accuracy", {}).items():
            if k != "1":
                headline.append((f"top-{k} accuracy", value))
    headline += [("mAP", metrics.get("mAP")), ("mAUC", metrics.get("mAUC")),
                 ("d-prime", metrics.get("d_prime"))]
    name_width = max(len(name) for name, _ in headline)
    lines += [f"  {name:<{name_width}}  {_fmt(value)}" for name, value in headline]

    rows = metrics.get("per_class", [])
    if rows:
        columns = ["label", "support", "AP", "AUC"] + (["recall"] if "recall" in rows[0] else [])
        cells = [columns] + [[_fmt(row.get(col)) for col in columns] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

        def line(r: list[str]) -> str:
            # Label column left-aligned, numbers right-aligned.
            return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(r, widths))).rstrip()

        lines.append("")
        lines.append(line(cells[0]))
        lines.append("  ".join("-" * w for w in widths))
        lines += [line(r) for r in cells[1:]]
    return "\n".join(lines)
