"""Debounced onset and offset events from a stream of chunk scores.

Thresholding every chunk on its own makes a sound that hovers around the threshold fire
again and again. :class:`EventTracker` uses hysteresis instead: a label's event opens when
its score reaches ``threshold`` and closes only when it falls below the lower ``release``
level, so one sound gives one onset and one offset.

    >>> tracker = EventTracker(["dog", "siren"], threshold=0.5, release=0.3)
    >>> [m["type"] for m in tracker.update(0.0, 1.0, [0.6, 0.1])]
    ['onset']
    >>> tracker.update(1.0, 2.0, [0.45, 0.1])     # below the threshold, above the release
    []
    >>> tracker.update(2.0, 3.0, [0.2, 0.1])
    [{'type': 'offset', 'label': 'dog', 'time': 2.0, 'score': 0.6}]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from earmark.infer.events import Hysteresis

# release level when none is given, as a fraction of the threshold
DEFAULT_RELEASE_RATIO = 0.6


class EventTracker:
    """Per-label hysteresis over consecutive chunks (:class:`earmark.infer.events.Hysteresis`,
    the rule offline detection uses, one chunk per step).

    ``update(start, end, scores)`` takes one chunk's scores (one per label) and returns the
    messages it causes: ``{"type": "onset", "label", "time": start, "score"}`` when a label
    reaches ``threshold``, ``{"type": "offset", "label", "time", "score"}`` when an open
    label falls below ``release``, with ``time`` the start of that chunk (where the sound was
    last above the release level ends) and ``score`` the event's peak. ``close(time)`` ends
    every open event, at the end of the stream.
    """

    def __init__(self, labels: Sequence[str], threshold: float = 0.5,
                 release: float | None = None):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if release is None:
            release = DEFAULT_RELEASE_RATIO * threshold
        if not 0.0 <= release <= threshold:
            raise ValueError(f"release must be in [0, threshold={threshold}], got {release}")
        self.labels = list(labels)
        self.threshold = float(threshold)
        self.release = float(release)
        self._levels = Hysteresis(self.threshold, self.release)
        self._peak = np.full(len(self.labels), -np.inf)  # (C,) peak of each open event

    def update(self, start: float, end: float, scores: Sequence[float]) -> list[dict]:
        if len(scores) != len(self.labels):
            raise ValueError(f"{len(scores)} scores for {len(self.labels)} labels")
        s = np.array([float(x) for x in scores])
        changes = self._levels.step(s)
        # one chunk: a label turns on or off, never both; messages in label order
        out = sorted([(i, self._message("offset", i, start, self._peak[i]))
                      for i in changes.offsets[:, 0]]
                     + [(i, self._message("onset", i, start, s[i]))
                        for i in changes.onsets[:, 0]], key=lambda m: m[0])
        self._peak = np.where(self._levels.on, np.maximum(self._peak, s), -np.inf)
        return [m for _, m in out]

    def close(self, time: float) -> list[dict]:
        """Offsets at ``time`` for every event still open (the stream ended)."""
        out = [self._message("offset", i, time, self._peak[i])
               for i in sorted(self._levels.close()[:, 0])]
        self._peak[:] = -np.inf
        return out
    def _message(self, kind: str, i: int, time: float, score: float) -> dict:
        return {"type": kind, "label": self.labels[i], "time": round(float(time), 6),
                "score": round(float(score), 6)}
