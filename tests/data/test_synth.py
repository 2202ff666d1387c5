from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression

from earmark.data import sources
from earmark.data.synth import (
    CLASSES,
    load,
    load_soundscapes,
    render_event,
    render_soundscape,
    synthesize,
)
from earmark.errors import DataError

SR = 16000


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@functools.cache
def mel_bank(sr: int) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=512, n_mels=40).T  # (257, 40)


def log_mel_stats(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """Mean and spread over time of a 40-band log-mel spectrogram: a tiny clip embedding."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, 257)
    mel = np.log(power @ mel_bank(sr) + 1e-8)  # (T, 40)
    mel -= mel.mean()
    return np.concatenate([mel.mean(0), mel.std(0)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))


# ---- events ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [16000, 32000])
def test_every_class_renders_a_clean_event_of_the_asked_length(sr):
    assert len(CLASSES) >= 8
    for name in CLASSES:
        for seconds in (0.002, 0.5):
            x = render_event(name, rng(0), sr, duration=seconds)
            assert x.dtype == np.float32 and x.shape == (round(seconds * sr),), name
            assert np.isfinite(x).all(), name
            peak_db = 20 * np.log10(np.abs(x).max())
            assert -14.01 <= peak_db <= -0.99, (name, peak_db)


def test_unknown_class_and_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="unknown sound class 'dog'.*siren.*babble"):
        render_event("dog", rng(0))
    with pytest.raises(ValueError, match="sample_rate"):
        render_event("siren", rng(0), sample_rate=8000)
    with pytest.raises(ValueError, match="duration"):
        render_event("siren", rng(0), duration=0.0)


def test_renders_are_deterministic_per_seed():
    for name in CLASSES:
        a, b = render_event(name, rng(7)), render_event(name, rng(7))
        np.testing.assert_array_equal(a, b)
        c = render_event(name, rng(8))
        assert len(a) != len(c) or not np.array_equal(a, c), name


def test_two_renders_of_a_class_differ_in_duration_loudness_and_pitch():
    for name in CLASSES:
        a, b = render_event(name, rng(1)), render_event(name, rng(2))
        assert len(a) != len(b), name  # natural duration is drawn
        assert abs(np.abs(a).max() - np.abs(b).max()) > 1e-3, name  # loudness is drawn
        # with the same length, the spectrum (pitch, band, formants) still moves
        fa, fb = (log_mel_stats(render_event(name, rng(s), duration=1.0)) for s in (1, 2))
        assert np.abs(fa[:40] - fb[:40]).max() > 0.5, name


def test_classes_are_told_apart_from_their_log_mel_statistics():
    # a linear model on 80 numbers per clip, trained on 6 renders per class, must name
    # fresh renders: the classes differ on a log-mel spectrogram, not just in one example
    def data(seeds):
        xs, ys = [], []
        for k, name in enumerate(CLASSES):
            for s in seeds:
                xs.append(log_mel_stats(render_event(name, rng(s), duration=1.0)))
                ys.append(k)
        return np.stack(xs), np.array(ys)

    x_train, y_train = data(range(6))
    x_test, y_test = data(range(100, 104))
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    assert np.mean(model.predict(x_test) == y_test) >= 0.9


# ---- soundscapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("sr", [16000, 32000])
def test_soundscape_strong_labels_mark_exactly_where_the_energy_is(sr):
    for seed in range(6):
        audio, events = render_soundscape(rng(seed), sr, seconds=4.0, n_events=(1, 4),
                                          background="none")
        assert audio.shape == (4 * sr,) and audio.dtype == np.float32
        assert 1 <= len(events) <= 4 and events == sorted(events)
        inside = np.zeros(len(audio), bool)
        edge = int(0.005 * sr)
        for onset, offset, label in events:
            assert label in CLASSES and 0 <= onset < offset <= 4.0
            start, stop = round(onset * sr), round(offset * sr)
            assert start == onset * sr and stop == offset * sr  # whole samples
            assert onset == round(onset, 3) and offset == round(offset, 3)  # exact in the TSV
            inside[start:stop] = True
            # energy right after the onset and right before the offset
            assert rms(audio[start:start + edge]) > 1e-4, (seed, label, "onset")
            assert rms(audio[stop - edge:stop]) > 1e-4, (seed, label, "offset")
        assert not np.any(audio[~inside]), seed


def test_soundscape_background_sits_at_the_asked_snr():
    clean, events = render_soundscape(rng(3), SR, seconds=4.0, n_events=1, background="none")
    noisy, same = render_soundscape(rng(3), SR, seconds=4.0, n_events=1, snr_db=10.0,
                                    background="noise")
    assert same == events
    (onset, offset, _), = events
    s = slice(round(onset * SR), round(offset * SR))
    noise = noisy.astype(np.float64) - clean
    assert np.abs(noisy).max() < 0.98  # not rescaled to avoid clipping, so noise is noisy - clean
    assert 20 * np.log10(rms(clean[s]) / rms(noise)) == pytest.approx(10.0, abs=0.1)
    with pytest.raises(ValueError, match="background"):
        render_soundscape(rng(0), SR, seconds=1.0, background="traffic")


# ---- the written data set -------------------------------------------------------------------


def small_synth(out: Path, seed: int = 0, **kw) -> Path:
    args = {"clips_per_class": 3, "clip_seconds": 0.5, "soundscapes": 2,
            "soundscape_seconds": 4.0, "seed": seed}
    return synthesize(out, **(args | kw))


def read_tsv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter="\t"))


def test_synthesize_writes_the_layout(tmp_path):
    calls = []
    root = small_synth(tmp_path / "synth", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(CLASSES) * 3 + 2, len(CLASSES) * 3 + 2)
    for name in CLASSES:
        for i in range(3):
            audio, sr = sf.read(root / "clips" / name / f"{name}_{i:04d}.wav")
            assert sr == SR and audio.shape == (SR // 2,)
            assert 0 < np.abs(audio).max() < 1
    for i in range(2):
        assert sf.info(root / "soundscapes" / f"scape_{i:04d}.wav").frames == 4 * SR
    assert not list(root.rglob(".*.tmp*"))  # no temporary file left behind
    params = json.loads((root / "synth.json").read_text())
    assert params["classes"] == list(CLASSES)
    assert params["sample_rate"] == SR and params["seed"] == 0


def test_synth_spec_loads_the_clips_with_labels_and_splits(tmp_path):
    root = small_synth(tmp_path / "synth")
    assert sources.SOURCES["synth"] is load
    m = load(str(root))
    assert m.labels == list(CLASSES) and not m.multi_label and len(m) == 3 * len(CLASSES)
    for it in m:
        assert Path(it.path).is_absolute() and Path(it.path).is_file()
        assert it.labels == (Path(it.path).parent.name,)
    for name in CLASSES:
        splits = sorted(it.split for it in m if it.labels == (name,))
        assert splits == ["test", "train", "valid"]
    assert m.folds == [1, 2, 3]
    # the CSV itself holds paths relative to the folder, so the folder can move
    with open(root / "clips.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["path"] == "clips/siren/siren_0000.wav"


def test_soundscape_tsv_and_manifest_agree_with_the_audio(tmp_path):
    root = small_synth(tmp_path / "synth", snr_db=60.0)  # background 60 dB down
    rows = read_tsv(root / "soundscapes.tsv")
    assert rows[0] == ["filename", "onset", "offset", "event_label"]
    by_file: dict[str, list[tuple[float, float, str]]] = {}
    for fname, onset, offset, label in rows[1:]:
        assert label in CLASSES and len(onset.split(".")[1]) == 3
        by_file.setdefault(fname, []).append((float(onset), float(offset), label))
    assert sorted(by_file) == ["scape_0000.wav", "scape_0001.wav"]

    m = load_soundscapes(root)
    assert m.multi_label and m.labels == list(CLASSES) and len(m) == 2
    for it in m:
        fname = Path(it.path).name
        assert it.labels == tuple(sorted({lab for _, _, lab in by_file[fname]}))
        assert m.meta["events"][it.path] == by_file[fname]

        audio, sr = sf.read(it.path)
        inside = np.zeros(len(audio), bool)
        near = np.zeros(len(audio), bool)
        for onset, offset, _ in by_file[fname]:
            start, stop = round(onset * sr), round(offset * sr)
            assert rms(audio[start:stop]) > 1e-3
            inside[start:stop] = True
            near[max(0, start - sr // 20):stop + sr // 20] = True
        if (~near).any():
            assert rms(audio[~near]) < 0.01 * rms(audio[inside])
    assert load(str(root / "soundscapes.csv")).multi_label


def test_same_seed_gives_byte_identical_files(tmp_path):
    a, b = small_synth(tmp_path / "a"), small_synth(tmp_path / "b")
    c = small_synth(tmp_path / "c", seed=1)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 3 * len(CLASSES) + 2 + 4
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    wavs = [rel for rel in files if rel.suffix == ".wav"]
    assert all((a / rel).read_bytes() != (c / rel).read_bytes() for rel in wavs)


def test_missing_files_give_errors_that_name_them(tmp_path):
    with pytest.raises(DataError, match=r"clips\.csv.*earmark synth"):
        load(str(tmp_path))
    with pytest.raises(DataError, match=r"soundscapes\.csv"):
        load_soundscapes(tmp_path)
    root = small_synth(tmp_path / "synth", clips_per_class=1, soundscapes=1)
    (root / "clips" / "bark" / "bark_0000.wav").unlink()
    with pytest.raises(DataError, match=r"bark_0000\.wav.*missing"):
        load(str(root))
    (root / "synth.json").unlink()
    with pytest.raises(DataError, match=r"synth\.json"):
        load_soundscapes(root)


def test_synthesize_at_32k_for_htsat(tmp_path):
    root = small_synth(tmp_path / "s32", sample_rate=32000, clips_per_class=1, soundscapes=1)
    assert sf.info(root / "clips" / "siren" / "siren_0000.wav").samplerate == 32000
    assert json.loads((root / "synth.json").read_text())["sample_rate"] == 32000
