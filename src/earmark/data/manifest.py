"""One manifest abstraction that every data source turns into.

A :class:`Manifest` is a list of :class:`Item` (a path, its labels, an optional
onset/offset inside the file, a split and a fold) plus the label vocabulary and
whether the task is single- or multi-label. Every ``SPEC`` of the command line
(``fsdd:DIR``, ``esc50:DIR``, ...) resolves to one through :func:`from_spec`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from earmark.errors import DataError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Item:
    path: str
    labels: tuple[str, ...]
    onset: float | None = None  # seconds into the file, None = from the start
    offset: float | None = None  # seconds into the file, None = to the end
    split: str = "train"
    fold: int | None = None


@dataclass
class Manifest:
    items: list[Item]
    labels: list[str]  # the vocabulary, in model output order
    multi_label: bool = False
    name: str = "manifest"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def subset(self, keep: Callable[[Item], bool]) -> Manifest:
        """A manifest with the same vocabulary and only the items ``keep`` accepts."""
        return replace(self, items=[it for it in self.items if keep(it)])

    def split(self, name: str) -> Manifest:
        return self.subset(lambda it: it.split == name)

    @property
    def folds(self) -> list[int]:
        return sorted({it.fold for it in self.items if it.fold is not None})

    def for_fold(self, k: int) -> tuple[Manifest, Manifest]:
        """(train, test) for cross validation: fold ``k`` is held out."""
        if k not in self.folds:
            raise DataError(self.name, f"fold {k} not in folds {self.folds}")
        return (self.subset(lambda it: it.fold != k), self.subset(lambda it: it.fold == k))

    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def write(self, path: str | Path) -> Path:
        """Write as CSV (``.csv``) or JSONL (anything else); labels joined by ``;`` in CSV."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix.lower() == ".csv":
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "labels", "onset", "offset", "split", "fold"])
                for it in self.items:
                    w.writerow([it.path, ";".join(it.labels), _blank(it.onset), _blank(it.offset),
                                it.split, _blank(it.fold)])
        else:
            with open(tmp, "w") as f:
                for it in self.items:
                    d = asdict(it)
                    d["labels"] = list(it.labels)
                    f.write(json.dumps(d) + "\n")
        tmp.replace(path)
        return path


def _blank(v) -> str:
    return "" if v is None else str(v)


def vocabulary(items: Iterable[Item]) -> list[str]:
    """Sorted label names that occur in ``items``."""
    return sorted({lab for it in items for lab in it.labels})


# ---- SPEC resolution -------------------------------------------------------------------------

_SOURCES: dict[str, Callable[[str], Manifest]] = {}


def register_source(prefix: str):
    """Decorator: ``@register_source("esc50")`` makes ``esc50:DIR`` a data SPEC."""

    def deco(fn: Callable[[str], Manifest]):
        _SOURCES[prefix] = fn
        return fn

    return deco


def sources() -> list[str]:
    _import_sources()
    return sorted(_SOURCES)


def from_spec(spec: str) -> Manifest:
    """Resolve a data SPEC such as ``fsdd:/data/fsdd`` or ``manifest:files.csv``."""
    _import_sources()
    if ":" not in spec:
        raise DataError(spec, f"a data SPEC is KIND:PATH with KIND one of {sorted(_SOURCES)}")
    kind, _, location = spec.partition(":")
    if kind not in _SOURCES:
        raise DataError(spec, f"unknown data kind {kind!r}; known: {sorted(_SOURCES)}")
    if not Path(location).exists():
        raise DataError(location, "does not exist")
    return _SOURCES[kind](location)


def _import_sources() -> None:
    # the adapters register themselves on import
    from earmark.data import sources as _  # noqa: F401
