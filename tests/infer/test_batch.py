"""Batched folder tagging gives the labels of one file at a time, in the order given."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

import earmark
from earmark.errors import AudioError
from earmark.infer.batch import tag_files
from earmark.infer.tagger import Tagger

LABELS = ["a", "b", "c", "d", "e"]


@pytest.mark.parametrize("fit", ["repeat", None])
def test_batched_tagging_equals_one_file_at_a_time(tmp_path, fit):
    torch.manual_seed(0)
    model = earmark.create_model("vit-tiny", len(LABELS), depth=1, embed_dim=32, num_heads=2,
                                 clip_seconds=1.0, **({"fit": fit} if fit else {}))
    tagger = Tagger(model.eval(), {"labels": LABELS})
    rng = np.random.default_rng(0)
    files = []
    for i, seconds in enumerate([0.4, 0.7, 1.0, 1.0, 0.3, 2.5, 0.7, 0.05, 1.3, 0.9] * 2):
        path = tmp_path / f"c{i:02d}.wav"
        rate = 8000 if i % 3 == 0 else 16000  # resampled on the way in
        sf.write(path, (rng.standard_normal(int(seconds * rate)) * 0.1).astype("float32"),
                 rate)
        files.append(path)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    files.insert(5, bad)
    got = list(tag_files(tagger, files, top_k=3, batch_size=4, workers=2))
    assert [f for f, _ in got] == files  # in the order given
    assert isinstance(got[5][1], AudioError) and "bad.wav" in str(got[5][1])
    for f, labels in got:
        if f == bad:
            continue
        want = tagger.tag(f, top_k=3)
        assert [lab for lab, _ in labels] == [lab for lab, _ in want], f
        np.testing.assert_allclose([s for _, s in labels], [s for _, s in want], atol=1e-5)


def test_scoring_starts_after_one_batch_then_takes_windows_of_batches():
    from earmark.infer.batch import WINDOW_BATCHES, _windows

    w = 32 * WINDOW_BATCHES
    assert list(_windows(300, 32)) == [(0, 32), (32, 32 + w), (32 + w, min(300, 32 + 2 * w))] + \
        ([(32 + 2 * w, 300)] if 32 + 2 * w < 300 else [])
    assert list(_windows(0, 32)) == [] and list(_windows(5, 32)) == [(0, 5)]
