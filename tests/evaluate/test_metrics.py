from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from earmark.evaluate import metrics


def one_hot(indices, num_classes):
    out = np.zeros((len(indices), num_classes), dtype=np.int64)
    out[np.arange(len(indices)), indices] = 1
    return out


def test_perfect_scores_give_map_and_accuracy_one():
    targets = np.array([0, 1, 2, 1, 0, 2])
    scores = one_hot(targets, 3).astype(float) * 0.8 + 0.1
    assert metrics.top_k_accuracy(scores, targets, k=1) == 1.0
    assert metrics.mean_average_precision(scores, targets) == 1.0
    assert metrics.mean_auc(scores, targets) == 1.0
    m = metrics.evaluate(scores, targets, ["a", "b", "c"], multi_label=False)
    assert m["accuracy"] == 1.0 and m["mAP"] == 1.0
    assert m["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_average_precision_hand_computed():
    # Ranking by score: pos, neg, pos, neg -> precision at the hits is 1/1 and 2/3.
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    targets = np.array([[1], [0], [1], [0]])
    ap = metrics.per_class_average_precision(scores, targets)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)


def test_top_k_accuracy_hand_computed():
    scores = np.array([[0.5, 0.3, 0.2],   # true 1: 2nd
                       [0.1, 0.2, 0.7],   # true 0: 3rd
                       [0.6, 0.3, 0.1]])  # true 0: 1st
    targets = np.array([1, 0, 0])
    assert metrics.top_k_accuracy(scores, targets, k=1) == pytest.approx(1 / 3)
    assert metrics.top_k_accuracy(scores, targets, k=2) == pytest.approx(2 / 3)
    assert metrics.top_k_accuracy(scores, targets, k=3) == 1.0
    assert metrics.top_k_accuracy(scores, targets, k=10) == 1.0  # capped at C


def test_top_k_multi_label_counts_any_positive():
    scores = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    targets = np.array([[0, 1, 1], [0, 0, 1]])
    assert metrics.top_k_accuracy(scores, targets, k=2) == 0.5


def test_random_scores_give_auc_near_half():
    rng = np.random.default_rng(0)
    scores = rng.random((4000, 5))
    targets = (rng.random((4000, 5)) < 0.3).astype(int)
    auc = metrics.mean_auc(scores, targets)
    assert abs(auc - 0.5) < 0.03
    assert abs(metrics.d_prime(auc)) < 0.11


def test_d_prime_values():
    assert metrics.d_prime(0.5) == 0.0
    # sqrt(2) * Phi^-1(0.8413447) = sqrt(2) * 1
    assert metrics.d_prime(0.8413447460685429) == pytest.approx(math.sqrt(2))
    assert metrics.d_prime(0.2) == pytest.approx(-metrics.d_prime(0.8))
    assert np.allclose(metrics.d_prime(np.array([0.5, 0.5])), 0.0)


def test_classes_without_positives_are_skipped_in_the_mean():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.7, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    ap = metrics.per_class_average_precision(scores, targets)
    assert ap[:2].tolist() == [1.0, 1.0] and np.isnan(ap[2])
    assert metrics.mean_average_precision(scores, targets) == 1.0
    auc = metrics.per_class_auc(scores, targets)
    assert np.isnan(auc[2])
    assert metrics.mean_auc(scores, targets) == 1.0
    m = metrics.evaluate(scores, targets, ["a", "b", "c"], multi_label=True)
    assert m["mAP"] == 1.0
    assert m["per_class"][2] == {"label": "c", "support": 0, "AP": None, "AUC": None}


def test_int_targets_equal_one_hot_targets():
    rng = np.random.default_rng(1)
    scores = rng.random((30, 4))
    indices = rng.integers(0, 4, 30)
    labels = ["w", "x", "y", "z"]
    from_int = metrics.evaluate(scores, indices, labels, multi_label=False)
    from_onehot = metrics.evaluate(scores, one_hot(indices, 4), labels, multi_label=False)
    assert from_int == from_onehot
    assert np.array_equal(metrics.confusion_matrix(scores, indices, 4),
                          metrics.confusion_matrix(scores, one_hot(indices, 4), 4))


def test_torch_tensors_are_accepted():
    rng = np.random.default_rng(2)
    scores = rng.random((20, 3)).astype(np.float32)
    targets = rng.integers(0, 3, 20)
    expected = metrics.evaluate(scores, targets, ["a", "b", "c"], multi_label=False)
    got = metrics.evaluate(torch.from_numpy(scores), torch.from_numpy(targets),
                           ["a", "b", "c"], multi_label=False)
    assert got == expected


def test_confusion_matrix_rows_are_truth_columns_are_predictions():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    cm = metrics.confusion_matrix(scores, [1, 1, 1], num_classes=2)
    assert cm.tolist() == [[0, 0], [2, 1]]
    assert cm.dtype.kind == "i"


def test_confusion_matrix_refuses_multi_label_targets():
    with pytest.raises(ValueError, match="exactly one positive"):
        metrics.confusion_matrix([[0.9, 0.1]], [[1, 1]], 2)


def test_evaluate_single_label_contents_and_json():
    rng = np.random.default_rng(3)
    scores = rng.random((25, 3))
    targets = rng.integers(0, 3, 25)
    m = metrics.evaluate(scores, targets, ["dog", "cat", "owl"], multi_label=False)
    json.dumps(m, allow_nan=False)  # strict JSON: no NaN or inf
    assert m["num_clips"] == 25 and m["num_classes"] == 3
    assert set(m["top_k_accuracy"]) == {"1", "3"}  # k=5 capped at C=3
    assert m["top_k_accuracy"]["3"] == 1.0
    assert m["accuracy"] == pytest.approx(np.mean(scores.argmax(1) == targets))
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == 25
    for c, row in enumerate(m["per_class"]):
        assert row["support"] == int((targets == c).sum())
        assert row["recall"] == pytest.approx(cm[c, c] / cm[c].sum())
    assert m["mAP"] == pytest.approx(metrics.mean_average_precision(scores, targets))
    assert m["d_prime"] == pytest.approx(metrics.d_prime(m["mAUC"]))


def test_evaluate_multi_label_has_no_single_label_keys():
    rng = np.random.default_rng(4)
    scores = rng.random((40, 4))
    targets = (rng.random((40, 4)) < 0.4).astype(int)
    m = metrics.evaluate(scores, targets, list("abcd"), multi_label=True)
    json.dumps(m, allow_nan=False)
    assert m["task"] == "multi-label"
    assert "confusion_matrix" not in m and "accuracy" not in m
    assert [row["label"] for row in m["per_class"]] == list("abcd")


def test_perfect_auc_gives_null_d_prime_in_json():
    m = metrics.evaluate([[0.9, 0.1], [0.2, 0.8]], [0, 1], ["a", "b"], multi_label=False)
    assert m["mAUC"] == 1.0 and m["d_prime"] is None
    json.dumps(m, allow_nan=False)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="2 labels given for 3 classes"):
        metrics.evaluate(np.zeros((2, 3)), [0, 1], ["a", "b"], multi_label=False)
    with pytest.raises(ValueError, match="3 clips but targets have 2"):
        metrics.mean_average_precision(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="out of range"):
        metrics.top_k_accuracy(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        metrics.mean_auc(np.array([[np.nan, 0.0]]), [0])


def test_format_table_lists_headline_and_aligned_rows():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    m = metrics.evaluate(scores, [0, 1, 1], ["dog", "a long label"], multi_label=False)
    text = metrics.format_table(m)
    lines = text.splitlines()
    assert lines[0] == "single-label, 3 clips, 2 classes"
    assert any(line.split() == ["accuracy", "0.6667"] for line in lines)
    header = next(line for line in lines if line.startswith("label"))
    assert header.split() == ["label", "support", "AP", "AUC", "recall"]
    rows = lines[lines.index(header) + 2:]
    assert [r.split()[0] for r in rows] == ["dog", "a"]
    # Aligned: every row (and the header) ends its columns at the same offsets.
    assert len({len(r) for r in [header, *rows]}) == 1
    assert rows[1].split()[-1] == "0.5000"  # recall of "a long label": 1 of 2
