"""One manifest abstraction that every data source turns into.

A :class:`Manifest` is a list of :class:`Item` (a path, its labels, an optional
onset/offset inside the file, a split, a fold and a group) plus the label vocabulary and
whether the task is single- or multi-label. Every ``SPEC`` of the command line
(``fsdd:DIR``, ``esc50:DIR``, ...) resolves to one through :func:`from_spec`.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from earmark.errors import DataError
from earmark.files import atomic_write

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Item:
    path: str
    labels: tuple[str, ...]
    onset: float | None = None  # seconds into the file, None = from the start
    offset: float | None = None  # seconds into the file, None = to the end
    split: str = "train"
    fold: int | None = None
    # who or where the clip comes from (speaker, session, device, location); cross validation
    # by group holds out all of a group's clips at once. None = not known
    group: str | None = None


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

    def split_or_all(self, name: str) -> Manifest:
        """The items of split ``name``, or every item where that split is empty: the clips a
        tool tunes or calibrates on (``valid`` or ``test``) when the data set has no such
        split."""
        part = self.split(name)
        return part if len(part) else self

    def split_sizes(self) -> dict[str, int]:
        """Items per split, in the order of ``SPLITS``: ``{"train": 40, "valid": 5, "test": 5}``."""
        return {name: sum(it.split == name for it in self.items) for name in SPLITS}

    @property
    def has_splits(self) -> bool:
        """False for a manifest file without a ``split`` column: all its items read as train."""
        return self.meta.get("split_column", True)

    def require_split(self, name: str) -> Manifest:
        """The items of split ``name``; a :class:`DataError` naming it and the sizes of the
        other splits when it has none.

        >>> m = Manifest([Item("a.wav", ("dog",)), Item("b.wav", ("cat",), split="valid")],
        ...              ["cat", "dog"], name="pets")
        >>> m.require_split("valid").items[0].path
        'b.wav'
        >>> m.require_split("test")
        Traceback (most recent call last):
        ...
        earmark.errors.DataError: pets: split 'test' is empty (train: 1, valid: 1)
        """
        part = self.split(name)
        if not len(part):
            others = ", ".join(f"{s}: {n}" for s, n in self.split_sizes().items() if s != name)
            raise DataError(self.name, f"split {name!r} is empty ({others})")
        return part

    @property
    def folds(self) -> list[int]:
        return sorted({it.fold for it in self.items if it.fold is not None})

    def for_fold(self, k: int) -> tuple[Manifest, Manifest]:
        """(train, test) for cross validation: fold ``k`` is held out."""
        if k not in self.folds:
            raise DataError(self.name, f"fold {k} not in folds {self.folds}")
        return (self.subset(lambda it: it.fold != k), self.subset(lambda it: it.fold == k))

    def groups(self) -> list[str]:
        """The distinct groups of the items, sorted (items without a group are left out)."""
        return list(self.group_sizes())

    def require_groups(self, groups: Iterable[str]) -> None:
        """A :class:`DataError` naming any of ``groups`` that no item has, and the groups
        there are."""
        known = self.groups()
        unknown = sorted(set(groups) - set(known))
        if unknown:
            raise DataError(self.name, f"no item has group {', '.join(map(repr, unknown))}; "
                            f"groups: {_some(known)}")

    def group_sizes(self) -> dict[str, int]:
        """Items per group, in the order of :meth:`groups`."""
        sizes: dict[str, int] = {}
        for it in self.items:
            if it.group is not None:
                sizes[it.group] = sizes.get(it.group, 0) + 1
        return dict(sorted(sizes.items()))

    def for_group(self, group: str | Iterable[str]) -> tuple[Manifest, Manifest]:
        """(train, test) for cross validation by group: every item of ``group`` (one name or
        several) is held out, whatever its split; all other items, ungrouped ones included,
        train.

        >>> m = Manifest([Item("a.wav", ("1",), group="george"),
        ...               Item("b.wav", ("2",), group="jackson", split="test"),
        ...               Item("c.wav", ("3",))], ["1", "2", "3"])
        >>> train, test = m.for_group("jackson")
        >>> [it.path for it in train], [it.path for it in test]
        (['a.wav', 'c.wav'], ['b.wav'])
        """
        held = {group} if isinstance(group, str) else set(group)
        self.require_groups(held)
        return (self.subset(lambda it: it.group not in held),
                self.subset(lambda it: it.group in held))

    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    def write(self, path: str | Path) -> Path:
        """Write as CSV (``.csv``) or JSONL (anything else); labels joined by ``;`` in CSV."""
        path = Path(path)
        if path.suffix.lower() == ".csv":
            with atomic_write(path, newline="") as f:
                w = csv.writer(f)
                w.writerow(["path", "labels", "onset", "offset", "split", "fold", "group"])
                for it in self.items:
                    w.writerow([it.path, ";".join(it.labels), _blank(it.onset), _blank(it.offset),
                                it.split if self.has_splits else "", _blank(it.fold),
                                _blank(it.group)])
        else:
            with atomic_write(path) as f:
                for it in self.items:
                    d = asdict(it)
                    d["labels"] = list(it.labels)
                    if not self.has_splits:  # reads back as a manifest without splits
                        del d["split"]
                    f.write(json.dumps(d) + "\n")
        return path


def _blank(v) -> str:
    return "" if v is None else str(v)


def _some(names: list[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def group_folds(manifest: Manifest, k: int | None = None, seed: int = 0
                ) -> dict[str, tuple[str, ...]]:
    """The held-out groups of each run of cross validation by group, by run name.

    ``k=None``: leave one group out, one run per group, named after it. ``k=K``: ``K`` folds
    of whole groups named ``fold-1`` .. ``fold-K``, balanced by item count: groups go, largest
    first, to the fold with the fewest items so far; ``seed`` orders groups of equal size, so
    the folds are the same on every machine for the same seed.

    >>> speakers = ["george", "george", "jackson", "jackson", "jackson", "lucas", "theo"]
    >>> m = Manifest([Item(f"{i}.wav", ("7",), group=s) for i, s in enumerate(speakers)], ["7"])
    >>> group_folds(m)
    {'george': ('george',), 'jackson': ('jackson',), 'lucas': ('lucas',), 'theo': ('theo',)}
    >>> group_folds(m, k=2, seed=0)
    {'fold-1': ('jackson', 'theo'), 'fold-2': ('george', 'lucas')}
    """
    sizes = manifest.group_sizes()
    if not sizes:
        raise DataError(manifest.name, "no item has a group, so there is nothing to hold out "
                        "by group (the fsdd, speechcommands and esc50 sources set one; a "
                        "manifest file takes a 'group' column)")
    if len(sizes) < 2:
        raise DataError(manifest.name, f"cross validation by group needs at least 2 groups, "
                        f"found 1 ({next(iter(sizes))!r})")
    if k is None:
        return {g: (g,) for g in sizes}
    if not 2 <= k <= len(sizes):
        raise DataError(manifest.name, f"cannot make {k} folds of {len(sizes)} groups: the "
                        f"number of folds must be 2 to {len(sizes)}")
    order = list(sizes)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -sizes[g])  # stable: the shuffle decides among equal sizes
    folds: list[list[str]] = [[] for _ in range(k)]
    totals = [0] * k
    for g in order:
        j = min(range(k), key=lambda i: (totals[i], i))
        folds[j].append(g)
        totals[j] += sizes[g]
    return {f"fold-{j + 1}": tuple(sorted(f)) for j, f in enumerate(folds)}


def vocabulary(items: Iterable[Item]) -> list[str]:
    """Sorted label names that occur in ``items``."""
    return sorted({lab for it in items for lab in it.labels})
