"""How a run divides a data set: train, validation and test items by the data set's own split,
by a held-out fold, or by held-out groups (speakers, sessions); the same rules pick the
items ``earmark eval --split`` scores."""

from __future__ import annotations

from dataclasses import replace

import torch

from earmark.data.manifest import Manifest
from earmark.errors import DataError


def split_manifest(manifest: Manifest, fold: int | None, seed: int = 0
                   ) -> tuple[Manifest, Manifest, Manifest]:
    """(train, valid, test). With a fold, that fold is the test set and also validates.
    Without a valid split, a seeded 10 % of the training items validate."""
    if fold is not None:
        train, test = manifest.for_fold(fold)
        return train, test, test
    train = manifest.require_split("train")
    valid, test = manifest.split("valid"), manifest.split("test")
    if not len(valid):
        train, valid = carve_validation(train, seed)
    return train, valid, test


def carve_validation(train: Manifest, seed: int = 0) -> tuple[Manifest, Manifest]:
    """(train, valid): a deterministic 10 % (at least one item) of ``train`` set aside."""
    if len(train) < 2:
        raise DataError(train.name, f"{len(train)} training item(s): too few to set some aside "
                        "for validation")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train), generator=g).tolist()
    val_ids = set(order[:max(1, len(train) // 10)])
    items = train.items
    return (replace(train, items=[it for i, it in enumerate(items) if i not in val_ids]),
            replace(train, items=[items[i] for i in sorted(val_ids)]))


def group_split(manifest: Manifest, groups: str | tuple[str, ...], seed: int = 0
                ) -> tuple[Manifest, Manifest, Manifest]:
    """(train, valid, test) with every item of ``groups`` as the test set, whatever its split,
    and all other items training, a seeded 10 % of them validating."""
    rest, test = manifest.for_group(groups)
    train, valid = carve_validation(rest, seed)
    return train, valid, test


def select_split(manifest: Manifest, split: str, fold: int | None = None,
                 group: str | None = None, seed: int = 0) -> Manifest:
    """The items ``earmark eval --split`` (and ``--fold``, ``--group``) name, as training
    divides them: with a fold, ``train`` is every other fold and ``valid`` and ``test`` the
    fold itself; without one, the validation items a run with ``seed`` set aside. ``all`` is
    every item.

    A manifest file without a split column has no test split: ``test`` is then every item.
    An empty split is a :class:`DataError` naming the sizes of the others.

        >>> from earmark.data.manifest import Item
        >>> m = Manifest([Item(f"{i}.wav", ("a",), split="train", group=f"g{i % 2}")
        ...               for i in range(20)], ["a"], name="toy")
        >>> len(select_split(m, "train")), len(select_split(m, "valid"))
        (18, 2)
        >>> len(select_split(m, "all", group="g1"))
        10
        >>> select_split(m, "test")
        Traceback (most recent call last):
        earmark.errors.DataError: toy: split 'test' is empty (train: 20, valid: 0)
    """
    if group is not None:
        manifest.require_groups([group])
    if split == "all":
        part = manifest
    elif fold is not None:
        part = manifest.for_fold(fold)[0 if split == "train" else 1]
    elif split == "test" and not manifest.has_splits:
        part = manifest
    else:
        if split == "test":
            manifest.require_split("test")
        part = dict(zip(("train", "valid", "test"), split_manifest(manifest, None, seed)))[split]
    if group is not None:
        part = part.subset(lambda it: it.group == group)
        if not len(part):
            raise DataError(manifest.name, f"group {group!r} has no items in split {split!r}")
    return part
