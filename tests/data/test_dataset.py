"""ClipDataset, fit_length and load_segment."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from earmark.data import fsdd
from earmark.data.dataset import ClipDataset, fit_length, load_segment
from earmark.data.manifest import Item, Manifest
from earmark.errors import AudioError


def ramp(n: int) -> torch.Tensor:
    return torch.arange(1.0, n + 1.0)


# ---- fit_length ------------------------------------------------------------------------------

def test_fit_length_modes_on_short_and_long_clips():
    short, long = ramp(3), ramp(6)
    assert fit_length(short, 5, "pad").tolist() == [1, 2, 3, 0, 0]
    assert fit_length(long, 4, "pad").tolist() == [1, 2, 3, 4]
    assert fit_length(short, 7, "repeat").tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert fit_length(long, 4, "crop").tolist() == [2, 3, 4, 5]  # centred
    assert fit_length(short, 5, "crop").tolist() == [0, 1, 2, 3, 0]  # centred among zeros
    assert fit_length(long, 6, "crop") is long


def test_fit_length_random_crops_cover_every_offset_and_stay_contiguous():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        out = fit_length(ramp(10), 4, "crop", rng)
        assert torch.equal(torch.diff(out), torch.ones(3))
        starts.add(int(out[0]))
    assert starts == set(range(1, 8))
    placed = {tuple(fit_length(ramp(2), 4, "crop", rng).tolist()) for _ in range(100)}
    assert placed == {(1, 2, 0, 0), (0, 1, 2, 0), (0, 0, 1, 2)}
    tiles = {tuple(fit_length(ramp(3), 4, "repeat", rng).tolist()) for _ in range(100)}
    assert tiles == {(1, 2, 3, 1), (2, 3, 1, 2), (3, 1, 2, 3)}


def test_fit_length_keeps_leading_axes_and_rejects_unknown_modes():
    batch = torch.stack([ramp(3), -ramp(3)])  # (2, 3)
    assert fit_length(batch, 5, "repeat").tolist() == [[1, 2, 3, 1, 2], [-1, -2, -3, -1, -2]]
    assert fit_length(torch.zeros(0), 3, "repeat").tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="'loop'"):
        fit_length(ramp(3), 2, "loop")


# ---- load_segment ----------------------------------------------------------------------------

def half_silent(write_wav, name="seg.wav", sr=8000):
    """One second: 0.5 s of silence, then 0.5 s of a tone."""
    x = np.zeros(sr, dtype=np.float32)
    x[sr // 2:] = 0.5 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)
    return write_wav(name, sr=sr, data=x)


def test_load_segment_reads_only_the_segment_and_resamples(write_wav):
    path = half_silent(write_wav)
    seg = load_segment(str(path), 16000, onset=0.5, offset=1.0)
    assert seg.shape == (8000,) and seg.dtype == torch.float32
    assert seg[100:-100].abs().max() > 0.4  # the tone, not the silence
    head = load_segment(str(path), 8000, offset=0.25)
    assert head.shape == (2000,) and head.abs().max() == 0
    assert load_segment(str(path), 8000).shape == (8000,)


def test_load_segment_errors_name_the_file(tmp_path, write_wav):
    path = half_silent(write_wav)
    with pytest.raises(AudioError, match="seg.wav: segment 2.0-3.0 s is empty or beyond"):
        load_segment(str(path), 8000, onset=2.0, offset=3.0)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF not really a wave file")
    with pytest.raises(AudioError, match="broken.wav"):
        load_segment(str(bad), 8000, onset=0.0, offset=1.0)


# ---- ClipDataset -----------------------------------------------------------------------------

@pytest.fixture
def manifest(write_wav):
    a = write_wav("a.wav", seconds=1.0, sr=8000, freq=300)
    b = write_wav("b.wav", seconds=0.25, sr=8000, freq=600)
    c = half_silent(write_wav, "c.wav")
    items = [Item(str(a), ("dog",)), Item(str(b), ("cat", "dog")),
             Item(str(c), ("rain",), onset=0.5, offset=1.0)]
    return Manifest(items=items, labels=["cat", "dog", "rain"], multi_label=True)


def test_items_are_fixed_length_float32_with_multi_hot_targets(manifest):
    ds = ClipDataset(manifest, sample_rate=16000, clip_seconds=0.5)
    assert len(ds) == 3 and ds.labels == ["cat", "dog", "rain"]
    for i in range(3):
        wave, target = ds[i]
        assert wave.shape == (8000,) and wave.dtype == torch.float32
        assert target.dtype == torch.float32
    assert ds[1][1].tolist() == [1.0, 1.0, 0.0]
    assert ds.targets.tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 1]]
    # the onset..offset segment of c is the tone only, so no crop can reach the silence
    assert ds[2][0][100:-100].abs().min() < 0.05 and ds[2][0].abs().max() > 0.4


def test_evaluation_clips_do_not_change_and_training_crops_follow_seed_and_epoch(manifest):
    ev = ClipDataset(manifest, 8000, 0.3)
    first = ev[0][0]
    ev.set_epoch(5)
    assert torch.equal(ev[0][0], first)

    tr = ClipDataset(manifest, 8000, 0.3, train=True, seed=1)
    again = ClipDataset(manifest, 8000, 0.3, train=True, seed=1)
    assert torch.equal(tr[0][0], again[0][0])
    crops = set()
    for epoch in range(6):
        tr.set_epoch(epoch)
        crops.add(tuple(tr[0][0][:5].tolist()))
    assert len(crops) > 3
    other_seed = ClipDataset(manifest, 8000, 0.3, train=True, seed=2)
    assert not torch.equal(tr[0][0], other_seed[0][0])


def test_pad_and_repeat_fill_a_short_clip(manifest):
    pad = ClipDataset(manifest, 8000, 0.5, fit="pad")[1][0]  # b is 0.25 s = 2000 samples
    assert pad[:2000].abs().max() > 0.4 and pad[2000:].abs().max() == 0
    rep = ClipDataset(manifest, 8000, 0.5, fit="repeat")[1][0]
    assert torch.allclose(rep[2000:], rep[:2000])


def test_worker_count_does_not_change_the_batches(manifest):
    ds = ClipDataset(manifest, 8000, 0.3, train=True, seed=3)

    def collect(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=workers)
        return next(iter(loader))[0]

    assert torch.equal(collect(0), collect(2))


def test_set_epoch_reaches_persistent_workers(manifest):
    ds = ClipDataset(manifest, 8000, 0.3, train=True, seed=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1,
                                         persistent_workers=True)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        seen.append(next(iter(loader))[0])
    single = torch.utils.data.DataLoader(ds, batch_size=3)
    for epoch in range(3):
        ds.set_epoch(epoch)
        assert torch.equal(seen[epoch], next(iter(single))[0])
    assert not torch.equal(seen[0], seen[1])


def test_bad_arguments_and_bad_files_are_reported(manifest, tmp_path):
    with pytest.raises(ValueError, match="fit mode 'stretch'"):
        ClipDataset(manifest, 8000, 1.0, fit="stretch")
    gone = Manifest([Item(str(tmp_path / "gone.wav"), ("dog",))], labels=["dog"])
    with pytest.raises(AudioError, match="gone.wav"):
        ClipDataset(gone, 8000, 1.0)[0]


def test_real_fsdd_clips(fsdd_dir):
    m = fsdd.load(str(fsdd_dir)).split("test")
    ds = ClipDataset(m, sample_rate=16000, clip_seconds=1.0)
    wave, target = ds[0]
    assert wave.shape == (16000,) and wave.abs().max() > 0.01
    assert target.sum() == 1 and m.labels[int(target.argmax())] == m.items[0].labels[0]
