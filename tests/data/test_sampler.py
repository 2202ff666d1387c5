"""BalancedSampler: label-frequency importance sampling; GroupShareSampler: real and synthetic
items in a fixed share, every speaker and voice equally often."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from earmark.data.manifest import Item, Manifest
from earmark.data.sampler import (
    BalancedSampler,
    GroupShareSampler,
    balanced_weights,
    group_share_weights,
)


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


# ---- real and synthetic items ------------------------------------------------------------


def speakers_and_voices() -> tuple[Manifest, list[bool]]:
    """Three real speakers with 10, 20 and 70 clips; five synthetic voices with 100 to 500."""
    items, synthetic = [], []
    for speaker, n in (("ann", 10), ("bob", 20), ("cy", 70)):
        items += [Item(f"/{speaker}{i}", (str(i % 2),), group=speaker) for i in range(n)]
        synthetic += [False] * n
    for v in range(5):
        n = 100 * (v + 1)
        items += [Item(f"/voice{v}-{i}", (str(i % 2),), group=f"voice{v}") for i in range(n)]
        synthetic += [True] * n
    return Manifest(items, ["0", "1"]), synthetic


def shares(drawn: list[int], manifest: Manifest) -> Counter:
    return Counter(manifest.items[i].group for i in drawn)


def test_the_synthetic_share_holds_and_every_group_of_a_part_is_drawn_equally():
    m, synthetic = speakers_and_voices()
    sampler = GroupShareSampler(m, synthetic, share=0.3, seed=0)
    assert len(sampler) == 100  # an epoch: as many draws as real items, not 1,600
    drawn = [i for _ in range(300) for i in sampler]
    n = len(drawn)
    assert abs(sum(synthetic[i] for i in drawn) / n - 0.3) < 0.01
    per_group = shares(drawn, m)
    for speaker in ("ann", "bob", "cy"):  # 10, 20 and 70 clips, a third of 70 % each
        assert abs(per_group[speaker] / n - 0.7 / 3) < 0.01, per_group
    for v in range(5):  # 100 to 500 clips, a fifth of 30 % each
        assert abs(per_group[f"voice{v}"] / n - 0.3 / 5) < 0.01, per_group


def test_label_balancing_works_within_each_group_and_keeps_the_groups_equal():
    items = [Item(f"/a{i}", ("rare",) if i == 0 else ("common",), group="ann")
             for i in range(10)]
    items += [Item(f"/b{i}", ("common",), group="bob") for i in range(5)]
    m = Manifest(items, ["common", "rare"])
    w = group_share_weights(m, [False] * 15, share=0.0, balanced=True)
    assert w[:10].sum().item() == pytest.approx(0.5)  # each speaker half of the draws
    assert w[10:].sum().item() == pytest.approx(0.5)
    assert w[0].item() == pytest.approx(14 * w[1].item())  # 1/1 against 1/14 of the part
    plain = group_share_weights(m, [False] * 15, share=0.0)
    assert plain[0].item() == pytest.approx(plain[1].item())


def test_items_without_a_group_count_as_one_more_group():
    items = [Item("/a", ("x",), group="ann"), Item("/n1", ("x",)), Item("/n2", ("x",)),
             Item("/v", ("x",), group="voice")]
    w = group_share_weights(Manifest(items, ["x"]), [False, False, False, True], share=0.5)
    assert w.tolist() == pytest.approx([0.25, 0.125, 0.125, 0.5])


def test_group_share_draws_depend_only_on_seed_and_epoch():
    m, synthetic = speakers_and_voices()
    a, b = GroupShareSampler(m, synthetic, 0.3, seed=4), GroupShareSampler(m, synthetic, 0.3,
                                                                           seed=4)
    b.set_epoch(2)
    a.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) != list(GroupShareSampler(m, synthetic, 0.3, seed=5))
    assert len(GroupShareSampler(m, synthetic, 0.3, num_samples=40)) == 40


def test_several_processes_take_disjoint_shares_of_the_same_draw():
    """Lightning wraps the sampler for each process; every epoch each process draws the same
    sequence and takes its own part of it."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    m, synthetic = speakers_and_voices()
    parts = []
    for rank in (0, 1):
        wrapped = DistributedSamplerWrapper(GroupShareSampler(m, synthetic, 0.3, seed=0),
                                            num_replicas=2, rank=rank, shuffle=False)
        wrapped.set_epoch(0)
        parts.append(list(wrapped))
    assert len(parts[0]) == len(parts[1]) == 50
    epoch0 = list(GroupShareSampler(m, synthetic, 0.3, seed=0))
    assert sorted(parts[0] + parts[1]) == sorted(epoch0)


def test_a_share_needs_items_to_draw_it_from():
    m, synthetic = speakers_and_voices()
    with pytest.raises(ValueError, match="between 0 and 1"):
        GroupShareSampler(m, synthetic, share=1.5)
    real_only = [False] * len(synthetic)
    with pytest.raises(ValueError, match="no synthetic items"):
        GroupShareSampler(m, real_only, share=0.3)
    assert len(GroupShareSampler(m, real_only, share=0.0)) == len(synthetic)
