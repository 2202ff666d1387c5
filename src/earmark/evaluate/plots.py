"""PNG plots of evaluation results: confusion matrix and per-class average precision.

Figures are drawn on matplotlib's Agg canvas directly, without pyplot, so plotting needs
no display, leaves the user's pyplot backend and figure list untouched, and is safe in
worker processes. Files are written atomically: a crash never leaves a half-written PNG.

    >>> import tempfile
    >>> from earmark.evaluate import metrics, plots
    >>> labels = ["dog", "cat"]
    >>> m = metrics.evaluate([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [0, 1, 1], labels,
    ...                      multi_label=False)
    >>> m["confusion_matrix"]
    [[1, 0], [1, 1]]
    >>> path = plots.plot_confusion_matrix(m["confusion_matrix"], labels,
    ...                                    Path(tempfile.mkdtemp()) / "cm.png")
    >>> path.name, path.read_bytes()[1:4]
    ('cm.png', b'PNG')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from earmark.files import atomic_write

__all__ = ["plot_confusion_matrix", "plot_per_class_ap"]

# Above this many classes, per-cell annotations and tick labels become unreadable.
_ANNOTATE_MAX = 20
_TICKS_MAX = 60


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` to ``path`` as PNG via a temporary file in the same folder."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plot_confusion_matrix(cm: Any, labels: Sequence[str], path: str | Path,
                          title: str | None = None) -> Path:
    """Row-normalised confusion matrix as a heat map; counts written in the cells if C <= 20.

    ``cm`` is ``(C, C)`` counts with rows = true class, columns = predicted class (what
    :func:`earmark.evaluate.metrics.confusion_matrix` returns). Colour shows the fraction
    of each true class, so rare classes are as visible as common ones.

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "cm.png"
        >>> plot_confusion_matrix([[5, 1], [0, 6]], ["dog", "cat"], path) == path
        True
        >>> path.read_bytes()[1:4]
        b'PNG'
    """
    cm = _as_array(cm).astype(np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be (C, C), got shape {cm.shape}")
    num_classes = cm.shape[0]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a {num_classes}-class confusion matrix")
    support = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)

    side = float(np.clip(0.45 * num_classes + 2.5, 4.0, 20.0))
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"Confusion matrix ({int(cm.sum())} clips)")
    if num_classes <= _TICKS_MAX:
        ticks = np.arange(num_classes)
        ax.set_xticks(ticks, [str(label) for label in labels], rotation=90)
        ax.set_yticks(ticks, [str(label) for label in labels])
    if num_classes <= _ANNOTATE_MAX:
        for i in range(num_classes):
            for j in range(num_classes):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if fraction[i, j] > 0.5 else "black")
    return _save(fig, path)


def plot_per_class_ap(per_class_ap: Any, labels: Sequence[str], path: str | Path,
                      top: int = 50) -> Path:
    """Horizontal bars of average precision per class, best first, at most ``top`` classes.

    Classes whose AP is undefined (NaN or ``None``: no positive clip) are left out; the title
    gives the mAP over all defined classes, not only the ones shown.

        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "ap.png"
        >>> plot_per_class_ap([0.9, 0.4, None], ["dog", "cat", "owl"], path) == path
        True
        >>> path.read_bytes()[1:4]
        b'PNG'
    """
    values = _as_array(per_class_ap)
    ap = np.array([np.nan if v is None else float(v) for v in values.ravel()], dtype=np.float64)
    if len(labels) != ap.size:
        raise ValueError(f"{len(labels)} labels given for {ap.size} AP values")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    defined = np.flatnonzero(~np.isnan(ap))
    if defined.size == 0:
        raise ValueError("no class has a defined AP (no class has a positive clip)")
    order = defined[np.argsort(-ap[defined], kind="stable")][:top]

    fig = Figure(figsize=(7.0, max(2.5, 0.22 * order.size + 1.2)))
    ax = fig.add_subplot()
    y = np.arange(order.size)
    ax.barh(y, ap[order], color="tab:blue")
    ax.set_yticks(y, [str(labels[c]) for c in order], fontsize=8)
    ax.invert_yaxis()  # best class on top
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("average precision")
    shown = f"top {order.size} of {defined.size}" if order.size < defined.size else \
        f"{defined.size} classes"
    ax.set_title(f"Per-class AP ({shown}, mAP {ap[defined].mean():.3f})")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_timeline(events_by_file: dict, path: str | Path, durations: dict | None = None,
                  max_files: int = 8) -> Path:
    """Sound events as horizontal bars, one row per label, one panel per file (PNG).

    ``events_by_file`` maps a file name to events with ``onset``, ``offset``, ``label`` and
    optionally ``score`` (bar opacity). ``durations`` (seconds per file) sets the x range.
    """
    names = list(events_by_file)[:max_files]
    if not names:
        raise ValueError("no files to plot")
    heights = [max(1, len({e.label for e in events_by_file[n]})) for n in names]
    fig = Figure(figsize=(10, 1.0 + 0.35 * sum(heights) + 0.6 * len(names)))
    axes = fig.subplots(len(names), 1, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    cmap = matplotlib.colormaps["tab10"]
    everyone = sorted({e.label for n in names for e in events_by_file[n]})
    color = {lab: cmap(i % 10) for i, lab in enumerate(everyone)}  # one colour per label
    for ax, name in zip(axes, names):
        events = events_by_file[name]
        labels = sorted({e.label for e in events})
        for e in events:
            y = labels.index(e.label)
            alpha = 0.35 + 0.65 * float(e.score) if getattr(e, "score", None) is not None else 0.9
            ax.barh(y, e.offset - e.onset, left=e.onset, height=0.7,
                    color=color[e.label], alpha=min(1.0, alpha))
        ax.set_yticks(range(len(labels)), labels)
        end = (durations or {}).get(name) or max((e.offset for e in events), default=1.0)
        ax.set_xlim(0, end)
        ax.set_ylim(-0.6, max(len(labels), 1) - 0.4)
        ax.set_title(Path(str(name)).name + ("" if events else " (no events)"), fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, path)
