"""BalancedSampler: label-frequency importance sampling."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from earmark.data.manifest import Item, Manifest
from earmark.data.sampler import BalancedSampler, balanced_weights


def long_tail() -> Manifest:
    """95 items of a common label, 5 of a rare one (two of them also common)."""
    items = [Item(f"/c{i}", ("common",)) for i in range(95)]
    items += [Item(f"/r{i}", ("rare",) if i < 3 else ("rare", "common")) for i in range(5)]
    return Manifest(items=items, labels=["common", "rare"], multi_label=True)


def test_weights_sum_inverse_label_counts():
    m = long_tail()
    w = balanced_weights(m)
    assert w[0].item() == pytest.approx(1 / 97)
    assert w[95].item() == pytest.approx(1 / 5)
    assert w[99].item() == pytest.approx(1 / 5 + 1 / 97)
    from_targets = balanced_weights(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    assert from_targets.tolist() == [0.5, 0.5, 1.0]  # the unlabelled item is a class of its own


def test_rare_labels_are_drawn_far_more_often_than_uniformly():
    m = long_tail()
    drawn = list(BalancedSampler(m, num_samples=20_000, seed=0))
    assert len(drawn) == 20_000
    rare = sum(1 for i in drawn if i >= 95) / len(drawn)
    assert rare > 0.45  # uniform sampling would give 0.05
    per_item = Counter(drawn)
    assert per_item[96] > 10 * per_item[0]


def test_draws_depend_only_on_seed_and_epoch():
    m = long_tail()
    a, b = BalancedSampler(m, 50, seed=7), BalancedSampler(m, 50, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) == list(b)  # `a` moved on to epoch 4 by itself
    assert list(BalancedSampler(m, 50, seed=8)) != list(BalancedSampler(m, 50, seed=7))
    fresh = BalancedSampler(m, 50, seed=7)
    assert list(fresh) != list(fresh)  # epochs 0 and 1 differ


def test_without_replacement_draws_distinct_items():
    m = long_tail()
    drawn = list(BalancedSampler(m, num_samples=30, replacement=False, seed=1))
    assert len(set(drawn)) == 30
    assert sum(1 for i in drawn if i >= 95) >= 4  # the 5 rare items are almost sure to come
    with pytest.raises(ValueError, match="cannot draw 101 distinct items from 100"):
        BalancedSampler(m, num_samples=101, replacement=False)


def test_default_epoch_length_and_dataloader_use():
    m = long_tail()
    sampler = BalancedSampler(m)
    assert len(sampler) == 100
    loader = torch.utils.data.DataLoader(list(range(100)), batch_size=10, sampler=sampler)
    assert sum(len(batch) for batch in loader) == 100
