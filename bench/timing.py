"""Timing helpers shared by the benchmarks: candidates measured in turns, round by round.

On a shared machine absolute times drift within a run; measuring every candidate once per
round, in the same order, keeps each round's figures comparable, and the benches report
medians over rounds (and, for ratios, the median of the per-round ratios).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def wall(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(measures: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """``rounds`` rounds in which each measure runs once, in order: {name: [value per round]}."""
    out: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(rounds):
        for name, measure in measures.items():
            out[name].append(measure())
    return out


def round_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-round ratios of two candidates' figures from :func:`alternate`."""
    return [a / b for a, b in zip(numerator, denominator)]


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in values.items()}
