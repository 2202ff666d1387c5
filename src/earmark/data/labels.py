"""Label names to target vectors: one-hot for single-label sets, multi-hot for multi-label ones."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from earmark.data.manifest import Manifest


def _as_index(index: Mapping[str, int] | Sequence[str]) -> Mapping[str, int]:
    if isinstance(index, Mapping):
        return index
    return {name: i for i, name in enumerate(index)}


def encode(labels: Iterable[str], index: Mapping[str, int] | Sequence[str]) -> torch.Tensor:
    """A float vector (C,) with 1 at every label's position.

    ``index`` is ``Manifest.label_index()`` or the vocabulary list itself.

    >>> encode(["cat"], ["dog", "cat", "rain"])
    tensor([0., 1., 0.])
    """
    index = _as_index(index)
    target = torch.zeros(len(index))
    for name in labels:
        if name not in index:
            raise KeyError(f"label {name!r} is not in the vocabulary of {len(index)} labels")
        target[index[name]] = 1.0
    return target


def targets(manifest: Manifest) -> torch.Tensor:
    """The (N, C) float targets of every item, in item order.

    >>> from earmark.data.manifest import Item
    >>> m = Manifest([Item("a.wav", ("dog",)), Item("b.wav", ("dog", "rain"))],
    ...              ["dog", "cat", "rain"], multi_label=True)
    >>> targets(m)
    tensor([[1., 0., 0.],
            [1., 0., 1.]])
    >>> targets(m).sum(0)
    tensor([2., 0., 1.])
    """
    rows, cols = positions(manifest)
    out = torch.zeros(len(manifest.items), len(manifest.labels))  # (N, C)
    out[rows, cols] = 1.0
    return out


def positions(manifest: Manifest) -> tuple[torch.Tensor, torch.Tensor]:
    """(item, label) index pairs of every label of every item: the sparse form of :func:`targets`.

    Two long tensors of equal length; AudioSet-sized sets need this rather than (N, C).
    """
    index = manifest.label_index()
    rows, cols = [], []
    for row, item in enumerate(manifest.items):
        for name in item.labels:
            if name not in index:
                raise KeyError(f"{item.path}: label {name!r} is not in the vocabulary")
            rows.append(row)
            cols.append(index[name])
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def counts(manifest: Manifest) -> torch.Tensor:
    """How many items carry each label, (C,) float."""
    _, cols = positions(manifest)
    return torch.bincount(cols, minlength=len(manifest.labels)).float()
