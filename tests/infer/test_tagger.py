import numpy as np
import pytest
import soundfile as sf
import torch

import earmark
from earmark.audio import io as audio_io
from earmark.errors import AudioError, ModelError
from earmark.models.directory import save_model_dir

LABELS = ["a", "b", "c", "d"]


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    m = earmark.create_model("vit-tiny", 4, depth=1, embed_dim=32, num_heads=2,
                             clip_seconds=1.0, multi_label=False, fit="repeat").eval()
    return save_model_dir(m, tmp_path / "model", LABELS)


def noise(seconds, sr=16000, seed=0):
    return (np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1).astype(np.float32)


def test_tag_returns_sorted_top_k_and_scores_are_probabilities(model_dir, write_wav):
    t = earmark.load(model_dir)
    assert t.labels == LABELS and t.sample_rate == 16000
    path = write_wav("x.wav", data=noise(1.5))
    tags = t.tag(path, top_k=3)
    assert [lab for lab, _ in tags] == [LABELS[i] for i in t.scores(path).topk(3).indices]
    assert tags[0][1] >= tags[1][1] >= tags[2][1]
    assert t.scores(path).sum().item() == pytest.approx(1.0, abs=1e-5)  # single-label: softmax
    assert len(t.tag(path, top_k=10)) == 4


def test_arrays_are_resampled_and_mixed_down(model_dir, tmp_path):
    t = earmark.load(model_dir)
    x8 = noise(1.0, sr=8000)
    path = tmp_path / "x8.wav"
    sf.write(path, x8, 8000)
    from_file = t.scores(path)
    from_array = t.scores(np.stack([x8, x8]), sample_rate=8000)  # (C, N) at 8 kHz
    torch.testing.assert_close(from_file, from_array, atol=2e-3, rtol=0)


def test_short_inputs_are_fitted_as_in_training(model_dir):
    t = earmark.load(model_dir)
    x = torch.from_numpy(noise(0.3))
    tiled = x.repeat(4)[:16000]
    torch.testing.assert_close(t.scores(x), t.scores(tiled))


def test_chunk_scores_cover_the_file(model_dir, write_wav):
    t = earmark.load(model_dir)
    path = write_wav("long.wav", data=noise(3.5))
    chunks = t.chunk_scores(path, 1.0)
    assert [(c.start, c.end) for c in chunks] == [(0, 1), (1, 2), (2, 3), (3, 3.5)]
    wave = torch.from_numpy(noise(3.5))
    torch.testing.assert_close(chunks[1].scores, t.scores(wave[16000:32000]), atol=1e-4,
                               rtol=0)


def test_long_files_are_scored_block_by_block(model_dir, write_wav, monkeypatch):
    t = earmark.load(model_dir)
    path = write_wav("long.wav", data=noise(5.0))
    monkeypatch.setattr(audio_io, "LONG_FILE_SECONDS", 2.0)
    monkeypatch.setattr(audio_io, "BLOCK_SECONDS", 2.0)
    wave = torch.from_numpy(noise(5.0))
    blocks = [wave[:32000], wave[32000:64000], wave[64000:]]
    expect = sum(t.scores(b) * b.numel() for b in blocks) / wave.numel()
    torch.testing.assert_close(t.scores(path), expect, atol=1e-4, rtol=0)
    # an array as long is scored the same way (a served upload equals the file)
    torch.testing.assert_close(t.scores(wave), expect, atol=1e-4, rtol=0)


def test_clips_shorter_than_one_patch_are_padded_not_refused():
    torch.manual_seed(0)
    model = earmark.create_model("vit-tiny", 4, depth=1, embed_dim=32, num_heads=2)
    assert not getattr(model, "fit", None)  # nothing else lengthens a short clip
    t = earmark.infer.tagger.Tagger(model.eval(), {"labels": LABELS})
    short = torch.from_numpy(noise(0.05))  # 5 frames, fewer than one 16-frame patch
    assert t.model.min_samples > short.numel()
    padded = torch.nn.functional.pad(short, (0, t.model.min_samples - short.numel()))
    torch.testing.assert_close(t.score_wave(short), t.score_wave(padded))
    chunks = t.chunk_scores(torch.from_numpy(noise(1.05)), 0.5)  # a 0.05 s last chunk
    assert [round(c.end - c.start, 3) for c in chunks] == [0.5, 0.5, 0.05]


def test_bad_input_names_the_file(model_dir, tmp_path):
    t = earmark.load(model_dir)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF0000WAVEnot really")
    with pytest.raises(AudioError, match="broken.wav"):
        t.tag(bad)
    with pytest.raises(AudioError, match="NaN"):
        t.scores(np.array([0.0, np.nan] * 8000, dtype=np.float32))
    with pytest.raises(ModelError, match="no such model"):
        earmark.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="neither a model directory"):
        earmark.load(tmp_path / "empty")


@pytest.mark.parametrize("name, kw", [("sat-tiny", {"chunk_seconds": 2.0, "depth": 1}),
                                      ("vit-tiny", {"clip_seconds": 2.0, "depth": 1}),
                                      ("htsat-tiny", {})])
def test_score_steps_give_the_scores_in_bounded_pieces(name, kw):
    """A server scores other work between these pieces: a long wave must come in many, and
    give the scores Tagger.scores gives."""
    from earmark.infer.tagger import Tagger

    torch.manual_seed(0)
    model = earmark.create_model(name, 3, **kw).eval()
    tagger = Tagger(model, {"labels": ["a", "b", "c"]})
    wave = torch.from_numpy(noise(33.3, sr=model.sample_rate)).float()
    steps, pieces = tagger.score_steps(wave), 0
    while True:
        try:
            next(steps)
            pieces += 1
        except StopIteration as done:
            got = done.value
            break
    assert pieces >= 4
    torch.testing.assert_close(got, tagger.scores(wave), atol=1e-6, rtol=0)
