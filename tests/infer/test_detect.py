from __future__ import annotations

import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from earmark.data.desed import LABELS as DESED_LABELS
from earmark.data.events import Event, write_events
from earmark.infer.events import (
    HTSAT_DESED_THRESHOLDS,
    DetectionConfig,
    Hysteresis,
    chunks_to_events,
    desed_label_map,
    frames_to_events,
    hysteresis_runs,
    kernel_frames,
    map_scores,
    median_filter,
)
from earmark.infer.thresholds import tune_thresholds

HOP = 0.1  # seconds per frame in these tests


def blocks(n_frames: int, n_classes: int, spans: list[tuple[int, int, int, float]],
           base: float = 0.0) -> np.ndarray:
    """``(T, C)`` scores at ``base`` with ``value`` on frames ``[start, end)`` of a class."""
    s = np.full((n_frames, n_classes), base)
    for c, start, end, value in spans:
        s[start:end, c] = value
    return s


def triples(events: list[Event]) -> list[tuple[float, float, str]]:
    return [(e.onset, e.offset, e.label) for e in events]


def test_known_blocks_give_exact_events_in_seconds():
    s = blocks(20, 2, [(0, 2, 5, 0.9), (0, 10, 13, 0.8), (1, 4, 9, 0.7), (1, 19, 20, 0.6)])
    events = frames_to_events(s, ["dog", "cat"], HOP, DetectionConfig(threshold=0.5))
    # frame i covers [i * hop, (i + 1) * hop): a run to the last frame ends at T * hop
    assert triples(events) == [(0.2, 0.5, "dog"), (0.4, 0.9, "cat"), (1.0, 1.3, "dog"),
                               (1.9, 2.0, "cat")]
    assert [e.score for e in events] == pytest.approx([0.9, 0.7, 0.8, 0.6])


def test_offset_seconds_shifts_events_and_torch_input_matches_numpy():
    s = blocks(10, 1, [(0, 3, 6, 0.9)])
    shifted = frames_to_events(torch.tensor(s, dtype=torch.float32), ["dog"], HOP,
                               offset_seconds=60.0)
    assert triples(shifted) == [(60.3, 60.6, "dog")]


def test_events_sorted_by_onset_then_label():
    s = blocks(10, 2, [(0, 3, 6, 0.9), (1, 3, 5, 0.9), (1, 0, 1, 0.9)])
    events = frames_to_events(s, ["zebra", "ant"], HOP)
    assert [(e.onset, e.label) for e in events] == [(0.0, "ant"), (0.3, "ant"), (0.3, "zebra")]


def test_threshold_per_class_with_default_for_unnamed_classes():
    s = blocks(10, 3, [(0, 2, 4, 0.6), (1, 2, 4, 0.6), (2, 5, 7, 0.55)])
    cfg = DetectionConfig(threshold={"a": 0.5, "b": 0.7})
    events = frames_to_events(s, ["a", "b", "c"], HOP, cfg)
    # b's 0.6 is under its own 0.7; c falls back to the default 0.5
    assert triples(events) == [(0.2, 0.4, "a"), (0.5, 0.7, "c")]


def test_threshold_naming_an_unknown_label_warns():
    with pytest.warns(UserWarning, match="'dgo'"):
        frames_to_events(blocks(5, 1, []), ["dog"], HOP, DetectionConfig(threshold={"dgo": 0.2}))


def test_median_filter_removes_a_spike_and_fills_a_hole():
    s = blocks(30, 1, [(0, 5, 6, 0.9), (0, 10, 20, 0.9), (0, 15, 16, 0.0)])
    raw = frames_to_events(s, ["dog"], HOP)
    assert triples(raw) == [(0.5, 0.6, "dog"), (1.0, 1.5, "dog"), (1.6, 2.0, "dog")]
    smooth = frames_to_events(s, ["dog"], HOP, DetectionConfig(median_filter=0.3))
    assert triples(smooth) == [(1.0, 2.0, "dog")]


def test_median_filter_kernel_per_class():
    s = blocks(9, 2, [(0, 4, 5, 1.0), (1, 4, 5, 1.0)])
    out = median_filter(s, [3, 1])
    assert out[:, 0].tolist() == [0.0] * 9
    assert out[:, 1].tolist() == s[:, 1].tolist()
    cfg = DetectionConfig(median_filter={"dog": 0.3})
    assert triples(frames_to_events(s, ["dog", "cat"], HOP, cfg)) == [(0.4, 0.5, "cat")]


def test_median_kernel_sizes_are_odd():
    assert kernel_frames(0.0, HOP) == 1
    assert kernel_frames(0.4, HOP) == 5
    assert kernel_frames(0.3, HOP) == 3
    with pytest.raises(ValueError, match="odd"):
        median_filter(np.zeros((5, 1)), 4)


def test_min_duration_drops_short_events():
    s = blocks(30, 1, [(0, 2, 4, 0.9), (0, 10, 13, 0.9), (0, 20, 25, 0.9)])
    events = frames_to_events(s, ["dog"], HOP, DetectionConfig(min_duration=0.3))
    # 3 frames of 0.1 s is 0.3 s, not shorter than 0.3 s
    assert triples(events) == [(1.0, 1.3, "dog"), (2.0, 2.5, "dog")]


def test_min_gap_merges_events_of_one_class_only():
    s = blocks(30, 2, [(0, 2, 5, 0.9), (0, 7, 10, 0.8), (1, 5, 7, 0.9), (1, 9, 12, 0.9)])
    merged = frames_to_events(s, ["dog", "cat"], HOP, DetectionConfig(min_gap=0.3))
    assert triples(merged) == [(0.2, 1.0, "dog"), (0.5, 1.2, "cat")]
    assert merged[0].score == pytest.approx(0.9)
    # a gap of exactly min_gap is not shorter than it, so it stays
    kept = frames_to_events(s, ["dog", "cat"], HOP, DetectionConfig(min_gap=0.2))
    assert len([e for e in kept if e.label == "dog"]) == 2


def test_label_map_combines_by_max_and_drops_unmapped():
    labels = ["bark", "growl", "meow", "car"]
    s = np.array([[0.2, 0.7, 0.1, 0.9],
                  [0.8, 0.1, 0.6, 0.9]])
    mapping = {"bark": "Dog", "growl": "Dog", "meow": "Cat"}
    mapped, new_labels = map_scores(s, labels, mapping)
    assert new_labels == ["Dog", "Cat"]
    np.testing.assert_allclose(mapped, [[0.7, 0.1], [0.8, 0.6]])
    events = frames_to_events(s, labels, HOP, DetectionConfig(threshold=0.5, label_map=mapping))
    assert triples(events) == [(0.0, 0.2, "Dog"), (0.1, 0.2, "Cat")]
    assert events[0].score == pytest.approx(0.8)


def test_label_map_matching_no_label_is_an_error():
    with pytest.raises(ValueError, match="none of the model's labels"):
        map_scores(np.zeros((3, 2)), ["a", "b"], {"x": "X"})


def test_hysteresis_extends_events_to_the_low_threshold():
    s = np.array([[0.1, 0.4, 0.4, 0.8, 0.4, 0.1, 0.4, 0.4, 0.1]]).T
    plain = frames_to_events(s, ["dog"], HOP, DetectionConfig(threshold=0.7))
    assert triples(plain) == [(0.3, 0.4, "dog")]
    hyst = frames_to_events(s, ["dog"], HOP, DetectionConfig(threshold=0.7, hysteresis=0.3))
    # the second run stays under 0.7 everywhere, so it is not an event
    assert triples(hyst) == [(0.1, 0.5, "dog")]


def test_hysteresis_fed_in_any_blocks_finds_the_runs_of_the_whole_array():
    rng = np.random.default_rng(0)
    s = np.round(rng.random((200, 4)), 1)  # (T, C)
    high, low = [0.7, 0.5, 0.9, 0.6], 0.4
    whole = hysteresis_runs(s, high, low)
    levels, done, onsets, i = Hysteresis(high, low), [], [], 0
    while i < len(s):  # blocks of 1 to 9 frames, as chunks of a stream arrive
        n = int(rng.integers(1, 10))
        changes = levels.step(s[i:i + n])
        done.append(changes.offsets)
        onsets.append(changes.onsets)
        i += n
    done = np.concatenate([*done, levels.close()])
    onsets = np.concatenate(onsets)
    for c in range(4):
        assert len(whole[c])  # every class has events to compare
        assert done[done[:, 0] == c, 1:].tolist() == whole[c].tolist()
        # an onset when the run reaches high; offline events begin where the run began
        ons = onsets[onsets[:, 0] == c]
        assert ons[:, 1].tolist() == whole[c][:, 0].tolist()
        assert all(s[t, c] >= high[c] > s[a:t, c].max(initial=0) for _, a, t in ons)


def test_chunks_to_events_clips_the_short_last_chunk():
    chunks = [SimpleNamespace(start=0.0, end=2.0, scores=torch.tensor([0.1, 0.9])),
              SimpleNamespace(start=2.0, end=4.0, scores=torch.tensor([0.8, 0.9])),
              SimpleNamespace(start=4.0, end=5.5, scores=torch.tensor([0.7, 0.2]))]
    events = chunks_to_events(chunks, ["dog", "cat"])
    assert triples(events) == [(0.0, 4.0, "cat"), (2.0, 5.5, "dog")]


def test_desed_label_map_follows_htsat_and_gives_ten_classes():
    audioset = [f"as{i}" for i in range(527)]
    mapping = desed_label_map(audioset)
    assert mapping["as0"] == "Speech" and mapping["as7"] == "Speech"
    assert mapping["as74"] == "Dog" and mapping["as402"] == "Alarm_bell_ringing"
    assert "as8" not in mapping
    scores = np.zeros((4, 527))
    scores[1, 3] = 0.9  # child speech
    mapped, labels = map_scores(scores, audioset, mapping)
    assert sorted(labels) == DESED_LABELS == sorted(HTSAT_DESED_THRESHOLDS)
    assert mapped[1, labels.index("Speech")] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="527"):
        desed_label_map(audioset[:10])


@pytest.mark.parametrize("metric", ["frame_f1", "event_f1"])
def test_tune_thresholds_separates_positive_from_negative_frames(metric):
    rng = np.random.default_rng(0)
    scores, truths = [], []
    for _ in range(4):
        s = np.full((40, 2), 0.3)
        s[:, 1] = 0.7
        start = int(rng.integers(0, 25))
        s[start:start + 10, 0] = 0.6
        s[start:start + 10, 1] = 0.9
        scores.append(s)
        on, off = round(start * HOP, 6), round((start + 10) * HOP, 6)
        truths.append([Event(on, off, "dog"), (on, off, "cat")])  # both forms are accepted
    chosen = tune_thresholds(scores, truths, ["dog", "cat"], HOP, metric=metric)
    assert 0.3 < chosen["dog"] <= 0.6
    assert 0.7 < chosen["cat"] <= 0.9
    events = frames_to_events(scores[0], ["dog", "cat"], HOP, DetectionConfig(threshold=chosen))
    on, off = truths[0][1][:2]
    assert triples(events) == [(on, off, "cat"), (on, off, "dog")]


def test_tune_thresholds_rejects_bad_metric_and_mismatched_lists():
    with pytest.raises(ValueError, match="metric"):
        tune_thresholds([np.zeros((3, 1))], [[]], ["dog"], HOP, metric="accuracy")
    with pytest.raises(ValueError, match="truth lists"):
        tune_thresholds([np.zeros((3, 1))], [], ["dog"], HOP)


def test_config_round_trips_through_a_dict():
    cfg = DetectionConfig(threshold={"Dog": 0.4, "Cat": 0.6}, median_filter={"Dog": 0.45},
                          min_duration=0.25, min_gap=0.1, label_map={"bark": "Dog"},
                          hysteresis=0.2)
    data = cfg.to_dict()
    data["threshold"]["Dog"] = 0.9  # a copy: the config is unchanged
    assert cfg.threshold["Dog"] == 0.4
    data["threshold"]["Dog"] = 0.4
    assert DetectionConfig.from_dict(data) == cfg
    assert DetectionConfig.from_dict({"thresholds": 0.3}).threshold == 0.3
    with pytest.raises(ValueError, match="min_durration"):
        DetectionConfig.from_dict({"min_durration": 0.1})
    with pytest.raises(ValueError, match="min_duration"):
        DetectionConfig(min_duration=-1)


def test_bad_scores_are_rejected():
    with pytest.raises(ValueError, match="2 labels for 3"):
        frames_to_events(np.zeros((5, 3)), ["a", "b"], HOP)
    with pytest.raises(ValueError, match="NaN"):
        frames_to_events(np.full((5, 1), np.nan), ["a"], HOP)
    with pytest.raises(ValueError, match=r"\(T, C\)"):
        frames_to_events(np.zeros(5), ["a"], HOP)


def test_events_tsv_round_trip(tmp_path):
    events = {"b.wav": [Event(1.23456, 2.5, "Dog", 0.9), Event(0.1, 0.2, "Cat")],
              "a.wav": [Event(0.0, 10.0, "Speech")],
              "silent.wav": []}
    path = tmp_path / "pred.tsv"
    path.write_text("old contents\n")
    assert write_events(path, events, keep_empty=False) == path
    lines = path.read_text().splitlines()
    assert lines[0] == "filename\tonset\toffset\tevent_label"
    assert lines[1:] == ["b.wav\t0.100\t0.200\tCat", "b.wav\t1.235\t2.500\tDog",
                         "a.wav\t0.000\t10.000\tSpeech"]
    with path.open(newline="") as f:
        rows = [(r["filename"], float(r["onset"]), float(r["offset"]), r["event_label"])
                for r in csv.DictReader(f, delimiter="\t")]
    assert rows == [("b.wav", 0.1, 0.2, "Cat"), ("b.wav", 1.235, 2.5, "Dog"),
                    ("a.wav", 0.0, 10.0, "Speech")]
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tsv"]  # no temp file left


def test_events_tsv_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "pred.tsv"
    path.write_text("old contents\n")
    with pytest.raises(ValueError, match="tab"):
        write_events(path, {"bad\tname.wav": [Event(0.0, 1.0, "Dog")]})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("earmark.files.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_events(path, {"a.wav": [Event(0.0, 1.0, "Dog")]})
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pred.tsv"]
