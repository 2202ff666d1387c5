from __future__ import annotations

import importlib
import json
import math
import random
import sys
import types

import numpy as np
import pytest

from earmark.errors import DataError
from earmark.evaluate import sed
from earmark.evaluate.sed import (
    PSDS_SCENARIOS,
    Event,
    event_based,
    format_sed_table,
    intersection_based,
    psds,
    read_durations,
    read_events,
    run_sed_eval,
    segment_based,
)

TRUTH = {
    "a.wav": [Event(1.0, 3.0, "Dog"), Event(4.0, 6.5, "Cat")],
    "b.wav": [Event(0.5, 2.0, "Cat"), Event(5.0, 9.0, "Speech")],
}
DURATIONS = {"a.wav": 10.0, "b.wav": 10.0}


def write_tsv(path, rows, header="filename\tonset\toffset\tevent_label"):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def test_perfect_predictions_score_one_everywhere():
    ev = event_based(TRUTH, TRUTH)
    seg = segment_based(TRUTH, TRUTH, DURATIONS)
    inter = intersection_based(TRUTH, TRUTH, DURATIONS)
    for result in (ev, seg):
        assert result["macro"]["f1"] == 1.0 and result["micro"]["f1"] == 1.0
        assert result["micro"]["error_rate"] == 0.0
        assert all(row["f1"] == 1.0 for row in result["class_wise"].values())
    assert ev["micro"]["n_tp"] == 4
    assert inter["macro"]["f1"] == 1.0
    assert set(inter["class_wise"]) == {"Cat", "Dog", "Speech"}


@pytest.mark.parametrize("shift, matches", [(0.15, True), (-0.15, True), (0.3, False),
                                            (-0.3, False)])
def test_onset_collar_is_200_ms(shift, matches):
    # A 1 s event: its offset collar is max(200 ms, 20 % of 1 s) = 200 ms as well.
    truth = {"a.wav": [Event(2.0, 3.0, "Dog")]}
    pred = {"a.wav": [Event(2.0 + shift, 3.0 + shift, "Dog")]}
    result = event_based(truth, pred)
    assert result["micro"]["f1"] == (1.0 if matches else 0.0)
    assert result["class_wise"]["Dog"]["n_tp"] == int(matches)


@pytest.mark.parametrize("offset_error, matches", [(0.5, True), (-0.5, True), (0.7, False),
                                                   (-0.7, False)])
def test_offset_collar_is_20_percent_of_a_long_event(offset_error, matches):
    # 20 % of a 3 s event is 600 ms, wider than the 200 ms collar.
    truth = {"a.wav": [Event(1.0, 4.0, "Dog")]}
    pred = {"a.wav": [Event(1.0, 4.0 + offset_error, "Dog")]}
    assert event_based(truth, pred)["micro"]["f1"] == (1.0 if matches else 0.0)


def test_offset_collar_is_200_ms_for_a_short_event():
    # 20 % of 0.5 s is 100 ms, so the 200 ms collar applies: 150 ms late matches, 250 ms not.
    truth = {"a.wav": [Event(1.0, 1.5, "Dog")]}
    assert event_based(truth, {"a.wav": [Event(1.0, 1.65, "Dog")]})["micro"]["n_tp"] == 1
    assert event_based(truth, {"a.wav": [Event(1.0, 1.75, "Dog")]})["micro"]["n_tp"] == 0


def test_each_reference_matches_one_detection_only():
    truth = {"a.wav": [Event(1.0, 2.0, "Dog")]}
    pred = {"a.wav": [Event(1.0, 2.0, "Dog"), Event(1.1, 2.1, "Dog")]}
    micro = event_based(truth, pred)["micro"]
    assert (micro["n_tp"], micro["precision"], micro["recall"]) == (1, 0.5, 1.0)
    assert micro["insertion_rate"] == 1.0


def test_maximum_matching_beats_a_greedy_first_fit():
    # Detection 0 fits both references, detection 1 only the first: a greedy pass that gives
    # detection 0 to the first reference leaves the second unmatched.
    truth = {"a.wav": [Event(1.0, 2.0, "Dog"), Event(1.25, 2.25, "Dog")]}
    pred = {"a.wav": [Event(1.1, 2.1, "Dog"), Event(0.85, 1.85, "Dog")]}
    assert event_based(truth, pred)["micro"]["n_tp"] == 2


def test_file_missing_from_predictions_counts_as_misses():
    pred = {"a.wav": TRUTH["a.wav"]}  # nothing for b.wav
    result = event_based(TRUTH, pred)
    micro = result["micro"]
    assert (micro["n_ref"], micro["n_sys"], micro["n_tp"]) == (4, 2, 2)
    assert micro["precision"] == 1.0 and micro["recall"] == 0.5
    assert micro["f1"] == pytest.approx(2 / 3)
    assert micro["deletion_rate"] == 0.5
    # Speech has references and no output: precision 0, F1 0, and it counts in the macro.
    speech = result["class_wise"]["Speech"]
    assert (speech["precision"], speech["recall"], speech["f1"]) == (0.0, 0.0, 0.0)
    assert result["macro"]["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)  # Dog, Cat, Speech
    assert segment_based(TRUTH, pred, DURATIONS)["class_wise"]["Speech"]["f1"] == 0.0


def test_macro_and_micro_on_two_classes_by_hand():
    # Dog: 2 references found, plus one "Dog" detection on the second Cat -> P 2/3, R 1, F 0.8.
    # Cat: 1 of 2 found -> P 1, R 1/2, F 2/3. Macro F = (0.8 + 2/3) / 2; micro: 3 hits out of
    # 4 references and 4 detections -> F 0.75. The mislabelled detection is a substitution.
    truth = {"a.wav": [Event(0.0, 1.0, "Dog"), Event(2.0, 3.0, "Dog"),
                       Event(4.0, 5.0, "Cat"), Event(6.0, 7.0, "Cat")]}
    pred = {"a.wav": [Event(0.0, 1.0, "Dog"), Event(2.0, 3.0, "Dog"),
                      Event(4.0, 5.0, "Cat"), Event(6.0, 7.0, "Dog")]}
    result = event_based(truth, pred)
    dog, cat = result["class_wise"]["Dog"], result["class_wise"]["Cat"]
    assert (dog["precision"], dog["recall"]) == (pytest.approx(2 / 3), 1.0)
    assert dog["f1"] == pytest.approx(0.8)
    assert cat["f1"] == pytest.approx(2 / 3)
    assert dog["error_rate"] == pytest.approx(0.5) and cat["error_rate"] == pytest.approx(0.5)
    assert result["macro"]["f1"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert result["macro"]["precision"] == pytest.approx((2 / 3 + 1) / 2)
    micro = result["micro"]
    assert micro["f1"] == pytest.approx(0.75)
    assert micro["substitution_rate"] == 0.25
    assert micro["deletion_rate"] == 0.0 and micro["insertion_rate"] == 0.0
    assert micro["error_rate"] == 0.25


def test_segment_based_by_hand():
    # Dog 0.5-2.5 s touches segments 0, 1, 2; the detection 1.2-2.2 s touches 1, 2.
    # Cat 6.0-7.0 s is segment 6; the Cat detection 8.1-8.9 s is segment 8.
    truth = {"a.wav": [Event(0.5, 2.5, "Dog"), Event(6.0, 7.0, "Cat")]}
    pred = {"a.wav": [Event(1.2, 2.2, "Dog"), Event(8.1, 8.9, "Cat")]}
    result = segment_based(truth, pred, {"a.wav": 10.0})
    dog, cat = result["class_wise"]["Dog"], result["class_wise"]["Cat"]
    assert (dog["n_ref"], dog["n_sys"], dog["n_tp"]) == (3, 2, 2)
    assert dog["f1"] == pytest.approx(0.8)
    assert cat["f1"] == 0.0 and cat["error_rate"] == 2.0
    micro = result["micro"]
    assert (micro["n_ref"], micro["n_sys"], micro["n_tp"]) == (4, 3, 2)
    assert micro["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    # Segment 0 and 6: a deletion each; segment 8: an insertion -> ER 3/4.
    assert micro["error_rate"] == pytest.approx(0.75)
    assert result["macro"]["f1"] == pytest.approx(0.4)


def test_segment_based_substitution_when_labels_swap_in_a_segment():
    truth = {"a.wav": [Event(0.0, 1.0, "Dog")]}
    pred = {"a.wav": [Event(0.0, 1.0, "Cat")]}
    micro = segment_based(truth, pred)["micro"]
    assert micro["substitution_rate"] == 1.0
    assert micro["deletion_rate"] == 0.0 and micro["insertion_rate"] == 0.0


def test_class_without_references_is_left_out_of_the_macro_average():
    truth = {"a.wav": [Event(1.0, 2.0, "Dog")]}
    pred = {"a.wav": [Event(1.0, 2.0, "Dog"), Event(5.0, 6.0, "Bird")]}
    result = event_based(truth, pred)
    assert result["class_wise"]["Bird"]["f1"] is None
    assert result["class_wise"]["Bird"]["error_rate"] is None
    assert result["macro"]["f1"] == 1.0
    assert result["micro"]["precision"] == 0.5


def test_intersection_f1_uses_detection_and_coverage_criteria():
    truth = {"a.wav": [Event(1.0, 3.0, "Dog")]}
    durations = {"a.wav": 10.0}
    # 1.5-3.5 s: 75 % of the detection lies on the event and it covers 75 % of it: a hit,
    # although the onset is 500 ms off (no hit for the collar-based F1).
    shifted = {"a.wav": [Event(1.5, 3.5, "Dog")]}
    assert intersection_based(truth, shifted, durations)["macro"]["f1"] == 1.0
    assert event_based(truth, shifted)["macro"]["f1"] == 0.0
    # 0-10 s covers the event but only 20 % of it lies on it (dtc 0.5): not a hit.
    wide = {"a.wav": [Event(0.0, 10.0, "Dog")]}
    assert intersection_based(truth, wide, durations)["class_wise"]["Dog"]["f1"] == 0.0
    assert intersection_based(truth, wide, durations, dtc=0.1)["macro"]["f1"] == 1.0


def test_intersection_class_without_hits_scores_zero_in_the_macro():
    # psds_eval itself returns NaN for Cat (0 / 0) and averages Dog alone.
    truth = {"a.wav": [Event(1.0, 3.0, "Dog"), Event(5.0, 7.0, "Cat")]}
    pred = {"a.wav": [Event(1.0, 3.0, "Dog")]}
    result = intersection_based(truth, pred, {"a.wav": 10.0})
    assert result["class_wise"] == {"Cat": {"f1": 0.0}, "Dog": {"f1": 1.0}}
    assert result["macro"]["f1"] == 0.5


def _degraded_tables():
    # PSDS takes each class's best operating point: every class must lose somewhere. At 0.3
    # every class is found but has one false alarm in 20 s (180 per hour, beyond max_efpr).
    alarms = [Event(7.0, 8.0, "Dog"), Event(8.2, 9.0, "Cat"), Event(9.1, 9.8, "Speech")]
    with_false_alarms = {"a.wav": [*TRUTH["a.wav"], *alarms], "b.wav": TRUTH["b.wav"]}
    miss_b = {"a.wav": TRUTH["a.wav"]}
    return {0.3: with_false_alarms, 0.5: miss_b, 0.7: {"a.wav": TRUTH["a.wav"][:1]}}


def test_psds_of_perfect_detections_is_one():
    tables = {0.3: _degraded_tables()[0.3], 0.5: TRUTH, 0.7: _degraded_tables()[0.7]}
    for name, params in PSDS_SCENARIOS.items():
        result = psds(TRUTH, tables, DURATIONS, **params)
        assert result["psds"] == pytest.approx(1.0), name
        assert result["operating_points"] == 3 and result["thresholds"] == [0.3, 0.5, 0.7]


def test_psds_of_imperfect_detections_is_between_zero_and_one():
    one = psds(TRUTH, _degraded_tables(), DURATIONS, **PSDS_SCENARIOS["dcase2021-1"])
    two = psds(TRUTH, _degraded_tables(), DURATIONS, **PSDS_SCENARIOS["dcase2021-2"])
    assert 0.0 < one["psds"] < 1.0 and 0.0 < two["psds"] < 1.0
    # Below 180 false alarms per hour the true positive rates are Dog 1, Cat 0.5, Speech 0:
    # eTPR = mean - std = 0.5 - sqrt(1/6); from 180 per hour on every class is at 1.
    low = 0.5 - math.sqrt(1 / 6)
    assert one["psds"] == pytest.approx(low)
    wider = psds(TRUTH, _degraded_tables(), DURATIONS, max_efpr=200.0)
    assert wider["psds"] == pytest.approx((180 * low + 20 * 1.0) / 200)
    assert (one["dtc"], one["gtc"], one["alpha_ct"]) == (0.7, 0.7, 0.0)
    assert (two["dtc"], two["gtc"], two["alpha_ct"]) == (0.1, 0.1, 0.5)
    assert psds(TRUTH, {0.5: {}}, DURATIONS)["psds"] == 0.0


def test_psds_with_a_single_class():
    # psds_eval alone scores any one-class evaluation 0 (its cross-trigger average is NaN).
    truth = {"a.wav": [Event(1.0, 3.0, "Dog")]}
    noisy = {"a.wav": [Event(1.0, 3.0, "Dog"), Event(5.0, 6.0, "Dog")]}  # 360 false alarms/h
    assert psds(truth, {0.3: noisy, 0.5: truth}, {"a.wav": 10.0})["psds"] == 1.0
    assert psds(truth, {0.3: noisy}, {"a.wav": 10.0})["psds"] == 0.0


def test_psds_staircase_helpers_match_psds_eval_definitions():
    # TPR per FPR: best value at each x, non-decreasing, 0 before the first point.
    xp = np.array([0.0, 2.0, 2.0, 5.0, 1.0])
    yp = np.array([0.0, 0.4, 0.6, 0.5, 0.3])
    x = np.array([0.0, 1.0, 1.5, 2.0, 5.0, 7.0])
    assert sed._step_curve(x, xp, yp).tolist() == [0.0, 0.3, 0.3, 0.6, 0.6, 0.6]
    # Area as rectangles up to max_x, the last step extended: 1*0 + 1*0.3 + 2*0.6 = 1.5.
    area = sed._staircase_area(np.array([0.0, 1.0, 2.0, 5.0]),
                               np.array([0.0, 0.3, 0.6, 0.6]), max_x=4.0)
    assert area == pytest.approx(1.5)


def test_overlapping_events_of_one_class_name_the_table_for_psds():
    pred = {"a.wav": [Event(1.0, 3.0, "Dog"), Event(2.0, 4.0, "Dog")]}
    with pytest.raises(DataError, match=r"pred\.tsv: a\.wav: two overlapping 'Dog' events"):
        intersection_based(TRUTH, pred, DURATIONS, pred_source="pred.tsv")


# ----------------------------------------------------------------------------- files


def test_read_events_and_durations(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", ["a.wav\t1.0\t3.0\tDog", "a.wav\t4\t6.5\tCat",
                                          "", "c.wav\t\t\t", "d.wav"])
    events = read_events(path)
    assert events == {"a.wav": [Event(1.0, 3.0, "Dog"), Event(4.0, 6.5, "Cat")],
                      "c.wav": [], "d.wav": []}
    scored = write_tsv(tmp_path / "s.tsv", ["a.wav\tDog\t1.0\t2.0\t0.75"],
                       header="filename\tevent_label\tonset\toffset\tscore")
    assert read_events(scored) == {"a.wav": [Event(1.0, 2.0, "Dog", 0.75)]}
    meta = write_tsv(tmp_path / "m.tsv", ["a.wav\t10.0", "c.wav\t9.5"],
                     header="filename\tduration")
    assert read_durations(meta) == {"a.wav": 10.0, "c.wav": 9.5}


def test_write_events_round_trips(tmp_path):
    events = {"a.wav": [Event(0.5, 2.0, "Dog", 0.8)], "b.wav": []}
    path = sed.write_events(tmp_path / "out.tsv", events, score=True)
    assert read_events(path) == events


@pytest.mark.parametrize("rows, header, message", [
    (["a.wav\t1.0\t3.0"], "filename\tonset\toffset",
     r"line 1: header lacks column\(s\) event_label"),
    (["a.wav,1.0,3.0,Dog"], "filename,onset,offset,event_label", r"comma-separated"),
    (["a.wav\t1.0\t3.0\tDog", "a.wav\tone\t3.0\tDog"], None, r"line 3: onset 'one' is not a"),
    (["a.wav\t3.0\t1.0\tDog"], None, r"line 2: offset 1.0 is before onset 3.0"),
    (["a.wav\t1.0\t3.0"], None, r"line 2: 3 fields, expected 4"),
    (["a.wav\t1.0\t3.0\tDog\textra"], None, r"line 2: 5 fields, the header has 4"),
    (["a.wav\t\t\tDog"], None, r"line 2: 'Dog' has no onset or offset"),
    (["a.wav\t-1\t3.0\tDog"], None, r"line 2: onset -1.0 is negative"),
    (["a.wav\tnan\t3.0\tDog"], None, r"line 2: onset 'nan' is not a finite number"),
])
def test_malformed_tsv_names_file_and_line(tmp_path, rows, header, message):
    path = tmp_path / "bad.tsv"
    write_tsv(path, rows, **({"header": header} if header else {}))
    with pytest.raises(DataError, match=message) as err:
        read_events(path)
    assert err.value.path == str(path) and str(err.value).startswith(str(path))


def test_empty_or_missing_tsv(tmp_path):
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DataError, match="empty.tsv: empty file"):
        read_events(tmp_path / "empty.tsv")
    with pytest.raises(DataError, match="nope.tsv: no such file"):
        read_events(tmp_path / "nope.tsv")
    bad_meta = write_tsv(tmp_path / "m.tsv", ["a.wav\tlong"], header="filename\tduration")
    with pytest.raises(DataError, match=r"m\.tsv: line 2: duration 'long'"):
        read_durations(bad_meta)


# ----------------------------------------------------------------------------- the command


def _truth_files(tmp_path):
    rows = [f"{f}\t{e.onset}\t{e.offset}\t{e.label}" for f, evs in TRUTH.items() for e in evs]
    truth = write_tsv(tmp_path / "truth.tsv", rows)
    meta = write_tsv(tmp_path / "meta.tsv", [f"{f}\t{d}" for f, d in DURATIONS.items()],
                     header="filename\tduration")
    return truth, meta


def test_run_sed_eval_with_a_folder_of_thresholds(tmp_path):
    truth, meta = _truth_files(tmp_path)
    folder = tmp_path / "predictions"
    folder.mkdir()
    tables = {0.3: _degraded_tables()[0.3], 0.5: TRUTH, 0.7: _degraded_tables()[0.7]}
    for th, table in tables.items():
        sed.write_events(folder / f"predictions_th_{th:.2f}.tsv", table)
    (folder / "notes.txt").write_text("not a table")
    result = run_sed_eval(truth, folder, meta)
    json.dumps(result, allow_nan=False)  # the CLI prints it as JSON
    assert result["threshold"] == 0.5 and result["files"] == 2
    assert result["classes"] == ["Cat", "Dog", "Speech"]
    assert result["event_based"]["macro"]["f1"] == 1.0  # the 0.50 table is perfect
    assert result["segment_based"]["micro"]["f1"] == 1.0
    assert set(result["psds"]) == set(PSDS_SCENARIOS)
    assert result["psds"]["dcase2021-1"]["psds"] == pytest.approx(1.0)
    assert result["psds"]["dcase2021-1"]["operating_points"] == 3
    table = format_sed_table(result)
    lines = table.splitlines()
    assert "detections at threshold 0.5" in lines[0]
    assert any(line.startswith("Speech") and "100.00" in line for line in lines)
    assert any(line.startswith("macro") for line in lines)
    assert any(line.startswith("PSDS dcase2021-1: 1.000") for line in lines)


def test_run_sed_eval_with_one_table_has_no_psds(tmp_path):
    truth, meta = _truth_files(tmp_path)
    pred = sed.write_events(tmp_path / "pred.tsv", {"somewhere/a.wav": TRUTH["a.wav"],
                                                    "other.wav": [Event(0, 1, "Dog")]})
    with pytest.warns(UserWarning, match="1 file"):
        result = run_sed_eval(truth, pred)
    assert result["psds"] is None and result["threshold"] is None
    assert result["durations_from"] == "latest offset"
    assert result["ignored_pred_files"] == ["other.wav"]
    # "somewhere/a.wav" is a.wav by its base name; b.wav has no detections.
    assert result["event_based"]["micro"]["recall"] == 0.5
    assert result["event_based"]["micro"]["precision"] == 1.0
    assert "PSDS" not in format_sed_table(result)


def test_run_sed_eval_picks_the_middle_threshold_without_0_5(tmp_path):
    truth, meta = _truth_files(tmp_path)
    folder = tmp_path / "p"
    folder.mkdir()
    for th in (0.2, 0.4, 0.6):
        sed.write_events(folder / f"predictions_th_{th:.2f}.tsv",
                         TRUTH if th == 0.4 else {"a.wav": TRUTH["a.wav"]})
    result = run_sed_eval(truth, folder, meta, psds_scenarios=())
    assert result["threshold"] == 0.4 and result["event_based"]["micro"]["f1"] == 1.0
    assert result["psds"] == {}


def test_run_sed_eval_needs_a_duration_for_every_file(tmp_path):
    truth, _ = _truth_files(tmp_path)
    meta = write_tsv(tmp_path / "short.tsv", ["a.wav\t10"], header="filename\tduration")
    with pytest.raises(DataError, match=r"short\.tsv: no duration for 1 file.*b\.wav"):
        run_sed_eval(truth, truth, meta)


# ----------------------------------------------------------------------------- sed_eval parity


def _import_sed_eval(monkeypatch):
    """sed_eval (installed by the ``test`` extra, so this test runs wherever the tests do); its
    dcase_util imports ``pkg_resources``, which setuptools >= 81 no longer has, and uses it
    only in functions these metrics never call."""
    try:
        importlib.import_module("pkg_resources")
    except ImportError:
        monkeypatch.setitem(sys.modules, "pkg_resources", types.ModuleType("pkg_resources"))
    return importlib.import_module("sed_eval")


def test_scores_equal_sed_eval_on_random_tables(monkeypatch):
    sed_eval = _import_sed_eval(monkeypatch)
    rng = random.Random(0)

    def rand_events(n, labels):
        out = []
        for _ in range(n):
            onset = round(rng.uniform(0, 8), rng.choice([1, 2]))
            out.append(Event(onset, round(onset + rng.uniform(0.1, 3), 2), rng.choice(labels)))
        return out

    for _ in range(20):
        labels = ["a", "b", "c"][: rng.randint(1, 3)]
        truth = {f"f{i}.wav": rand_events(rng.randint(1, 5), labels) for i in range(3)}
        pred = {}
        for name, evs in truth.items():
            jitter = [Event(max(0.0, e.onset + rng.choice([0, 0.1, -0.15, 0.25])),
                            e.offset + rng.choice([0, 0.2, 0.45, -0.05]),
                            rng.choice([e.label, e.label, *labels])) for e in evs]
            pred[name] = jitter + rand_events(rng.randint(0, 2), labels)
        classes = sorted({e.label for t in (truth, pred) for v in t.values() for e in v})
        ref_event = sed_eval.sound_event.EventBasedMetrics(
            event_label_list=classes, t_collar=0.2, percentage_of_length=0.2,
            empty_system_output_handling="zero_score")
        ref_segment = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=classes,
                                                               time_resolution=1.0)
        ref_segment.empty_system_output_handling = "zero_score"
        for name in truth:
            def rows(events, name=name):
                return [{"filename": name, "onset": e.onset, "offset": e.offset,
                         "event_label": e.label} for e in events]
            ref_event.evaluate(rows(truth[name]), rows(pred[name]))
            ref_segment.evaluate(rows(truth[name]), rows(pred[name]))
        for mine, ref in ((event_based(truth, pred), ref_event.results()),
                          (segment_based(truth, pred), ref_segment.results())):
            for key, ref_key in (("f1", "f_measure"), ("precision", "precision"),
                                 ("recall", "recall")):
                assert mine["micro"][key] == pytest.approx(ref["overall"]["f_measure"][ref_key])
                expected = ref["class_wise_average"]["f_measure"][ref_key]
                got = mine["macro"][key]
                assert (got is None and math.isnan(expected)) or got == pytest.approx(expected)
            assert mine["micro"]["error_rate"] == pytest.approx(
                ref["overall"]["error_rate"]["error_rate"])
