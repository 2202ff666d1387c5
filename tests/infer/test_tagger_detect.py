import numpy as np
import pytest
import torch

import earmark
from earmark.audio import io as audio_io
from earmark.cli import main
from earmark.infer.events import DetectionConfig
from earmark.models.directory import save_model_dir

LABELS = ["dog", "siren", "rain"]


@pytest.fixture(scope="module")
def htsat_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = earmark.create_model("htsat-tiny", 3, embed_dim=16, num_heads=(1, 1, 2, 2)).eval()
    return save_model_dir(m, tmp_path_factory.mktemp("m") / "htsat", LABELS)


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    torch.manual_seed(0)
    m = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2,
                             clip_seconds=1.0).eval()
    return save_model_dir(m, tmp_path_factory.mktemp("m") / "vit", LABELS)


def wav(write_wav, name, seconds, sr):
    x = (np.random.default_rng(0).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)
    return write_wav(name, data=x, sr=sr)


def test_frame_model_detects_within_the_file(htsat_dir, write_wav):
    t = earmark.load(htsat_dir)
    path = wav(write_wav, "a.wav", 3.0, 32000)
    frames, hop = t.frame_scores(path)
    assert frames.shape == (301, 3) and hop == pytest.approx(0.01)
    # threshold 0: every class is active everywhere, one event per class over the whole file
    events = t.detect(path, threshold=0.0)
    assert sorted(e.label for e in events) == sorted(LABELS)
    assert all(e.onset == 0.0 and e.offset == pytest.approx(3.0) for e in events)
    assert t.detect(path, threshold=1.01) == []
    some = t.detect(path, threshold=float(frames.median()))
    assert all(0 <= e.onset < e.offset <= 3.0 for e in some)
    assert [e.onset for e in some] == sorted(e.onset for e in some)


def test_long_files_are_detected_block_by_block_and_joined(htsat_dir, write_wav, monkeypatch):
    t = earmark.load(htsat_dir)
    path = wav(write_wav, "long.wav", 5.0, 32000)
    monkeypatch.setattr(audio_io, "LONG_FILE_SECONDS", 2.0)
    monkeypatch.setattr(audio_io, "BLOCK_SECONDS", 2.0)
    events = t.detect(path, threshold=0.0)
    assert len(events) == 3  # joined across the block boundaries at 2 s and 4 s
    assert all(e.onset == 0.0 and e.offset == pytest.approx(5.0) for e in events)


def test_models_without_frames_detect_from_chunks(vit_dir, write_wav):
    t = earmark.load(vit_dir)
    path = wav(write_wav, "b.wav", 2.5, 16000)
    events = t.detect(path, config=DetectionConfig(threshold=0.0), chunk_seconds=0.5)
    assert {(e.onset, e.offset) for e in events} == {(0.0, 2.5)}
    chunks = t.chunk_scores(path, 1.0)
    best = int(chunks[0].scores.argmax())
    first = t.detect(path, threshold=float(chunks[0].scores[best]) - 1e-6)
    assert any(e.label == LABELS[best] and e.onset == 0.0 for e in first)


def test_detect_command_writes_tsv_and_timeline(htsat_dir, write_wav, tmp_path, capsys):
    good = wav(write_wav, "good.wav", 2.0, 32000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"")
    code = main(["detect", str(htsat_dir), str(good), str(bad), "--threshold", "0",
                 "--out", str(tmp_path / "ev.tsv"), "--plot", str(tmp_path / "tl.png"),
                 "--median", "0.1", "--min-duration", "0.05"])
    err = capsys.readouterr().err
    assert code == 1 and "bad.wav" in err
    lines = (tmp_path / "ev.tsv").read_text().splitlines()
    assert lines[0] == "filename\tonset\toffset\tevent_label"
    assert len(lines) == 4 and all(ln.startswith("good.wav\t0.000\t2.000\t") for ln in lines[1:])
    assert (tmp_path / "tl.png").read_bytes()[:4] == b"\x89PNG"


def test_thresholds_tuned_on_strong_labels_are_saved_with_the_model(tmp_path):
    from earmark.data.synth import CLASSES, load_soundscapes, synthesize

    root = synthesize(tmp_path / "s", clips_per_class=1, soundscapes=3, soundscape_seconds=3.0)
    torch.manual_seed(0)
    m = earmark.create_model("htsat-tiny", len(CLASSES), embed_dim=16,
                             num_heads=(1, 1, 2, 2)).eval()
    model_dir = save_model_dir(m, tmp_path / "model", list(CLASSES))
    t = earmark.load(model_dir)
    config = t.tune_detection(load_soundscapes(root))
    assert set(config.threshold) == set(CLASSES)
    assert all(0.0 < v < 1.0 for v in config.threshold.values())
    t.save_detection(model_dir, config)
    again = earmark.load(model_dir)
    assert again.config["detection"]["threshold"] == config.threshold
    code = main(["detect", str(model_dir), str(root / "soundscapes" / "scape_0000.wav"),
                 "--tune", f"synth:{root}/soundscapes.csv", "--out", str(tmp_path / "e.tsv")])
    assert code == 0 and (tmp_path / "e.tsv").is_file()
