"""Manifest groups, group folds and split checks: what cross validation by group relies on."""

from __future__ import annotations

import pytest

from earmark.data.manifest import Item, Manifest, group_folds
from earmark.errors import DataError

SIZES = {"ann": 6, "bob": 5, "cy": 4, "dee": 3, "eve": 2, "fay": 1}


def grouped(sizes=SIZES, ungrouped: int = 0) -> Manifest:
    items = [Item(f"/d/{g}-{i}.wav", ("dog" if i % 2 else "cat",), group=g)
             for g, n in sizes.items() for i in range(n)]
    items += [Item(f"/d/none-{i}.wav", ("dog",)) for i in range(ungrouped)]
    return Manifest(items=items, labels=["cat", "dog"], name="speakers")


def test_groups_are_sorted_distinct_and_skip_items_without_one():
    m = grouped({"bob": 2, "ann": 1}, ungrouped=2)
    assert m.groups() == ["ann", "bob"] and m.group_sizes() == {"ann": 1, "bob": 2}


def test_for_group_holds_out_all_of_a_group_and_trains_on_everything_else():
    m = grouped(ungrouped=2)
    train, test = m.for_group("cy")
    assert {it.group for it in test} == {"cy"} and len(test) == SIZES["cy"]
    assert "cy" not in {it.group for it in train} and len(train) + len(test) == len(m)
    _, several = m.for_group(["ann", "fay"])
    assert len(several) == SIZES["ann"] + SIZES["fay"]
    with pytest.raises(DataError, match="speakers: no item has group 'zed'; groups: ann, bob"):
        m.for_group("zed")


def test_leave_one_group_out_is_one_run_per_group():
    assert group_folds(grouped()) == {g: (g,) for g in sorted(SIZES)}


@pytest.mark.parametrize("k", [2, 3, 6])
def test_group_folds_are_disjoint_cover_all_groups_and_balance_items(k):
    folds = group_folds(grouped(), k, seed=0)
    assert list(folds) == [f"fold-{j}" for j in range(1, k + 1)]
    held = [g for groups in folds.values() for g in groups]
    assert sorted(held) == sorted(SIZES) and len(held) == len(set(held))
    assert all(folds.values())  # no fold without a group
    totals = [sum(SIZES[g] for g in groups) for groups in folds.values()]
    if k == 3:  # 21 items in three folds of 7
        assert totals == [7, 7, 7]


def test_group_folds_follow_the_seed_and_repeat_with_it():
    equal = grouped({f"s{i}": 2 for i in range(8)})
    assert group_folds(equal, 2, seed=1) == group_folds(equal, 2, seed=1)
    assert len({tuple(group_folds(equal, 2, seed=s)["fold-1"]) for s in range(5)}) > 1


def test_group_folds_errors_name_the_set_and_the_reason():
    with pytest.raises(DataError, match="cannot make 7 folds of 6 groups: .* 2 to 6"):
        group_folds(grouped(), 7)
    with pytest.raises(DataError, match="cannot make 1 folds"):
        group_folds(grouped(), 1)
    no_groups = Manifest(items=[Item("/d/a.wav", ("dog",))], labels=["dog"], name="plain")
    with pytest.raises(DataError, match="plain: no item has a group"):
        group_folds(no_groups)
    with pytest.raises(DataError, match="at least 2 groups, found 1 \\('ann'\\)"):
        group_folds(grouped({"ann": 3}))


def test_an_empty_split_is_named_with_the_sizes_of_the_others():
    m = grouped()
    assert m.split_sizes() == {"train": 21, "valid": 0, "test": 0}
    assert len(m.require_split("train")) == 21
    with pytest.raises(DataError, match=r"speakers: split 'test' is empty \(train: 21, valid: 0\)"):
        m.require_split("test")
