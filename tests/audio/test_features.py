from __future__ import annotations

import dataclasses
import json

import librosa
import numpy as np
import pytest
import torch

from earmark.audio.features import (
    PRESETS,
    FrontEndConfig,
    LogMel,
    amplitude_to_db,
    front_end,
)


def _signal(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A tone over noise, float64: no bin anywhere near the log floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return 0.3 * np.sin(2 * np.pi * 1000.0 * t) + 0.05 * rng.standard_normal(t.size)


def _ours(name: str, y: np.ndarray, **changes) -> np.ndarray:
    cfg = dataclasses.replace(PRESETS[name], **changes)
    return front_end(cfg)(torch.from_numpy(y).float()).double().numpy()


def _librosa_mel(y: np.ndarray, cfg: FrontEndConfig, htk: bool, norm: str | None) -> np.ndarray:
    return librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
        win_length=cfg.win_length, window="hann", center=True, pad_mode="reflect", power=2.0,
        n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, htk=htk, norm=norm,
    )


def test_sat_matches_librosa_htk_unnormalised_with_top_db():
    cfg = PRESETS["sat"]
    y = _signal(0.5, 16000)
    ref = librosa.power_to_db(_librosa_mel(y, cfg, htk=True, norm=None), ref=1.0, amin=1e-10,
                              top_db=120.0)
    ours = _ours("sat", y)
    assert ours.shape == ref.shape == (64, 51)
    assert np.abs(ours - ref).max() < 1e-3


def test_htsat_matches_librosa_slaney():
    cfg = PRESETS["htsat"]
    y = _signal(0.5, 32000)
    ref = librosa.power_to_db(_librosa_mel(y, cfg, htk=False, norm="slaney"), ref=1.0,
                              amin=1e-10, top_db=None)
    ours = _ours("htsat", y)
    assert ours.shape == ref.shape == (64, 51)
    assert np.abs(ours - ref).max() < 1e-3


def test_codebook_matches_librosa_log_mel():
    cfg = PRESETS["codebook"]
    assert (cfg.sample_rate, cfg.win_length, cfg.hop_length, cfg.n_fft, cfg.n_mels) == (
        16000, 480, 160, 2048, 96)
    y = _signal(0.5, 16000)
    ref = np.log(np.maximum(_librosa_mel(y, cfg, htk=False, norm="slaney"), 1e-10))
    ours = _ours("codebook", y)
    assert ours.shape == ref.shape == (96, 51)
    assert np.abs(ours - ref).max() < 1e-4  # natural log: 1e-4 is about 4e-4 dB


def _tf_stft_magnitude(y: np.ndarray) -> np.ndarray:
    """|tf.signal.stft(y, 255, 128)|, (129, frames): periodic Hann frames, zero-padded to 256."""
    frames = np.lib.stride_tricks.sliding_window_view(y, 255)[::128]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(255) / 255)
    return np.abs(np.fft.rfft(frames * window, n=256, axis=-1)).T


def _tf_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """tf.image.resize(..., "bilinear") with half-pixel centres and no antialias."""

    def axis(n_in: int, n_out: int):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    r0, r1, wr = axis(x.shape[0], size[0])
    c0, c1, wc = axis(x.shape[1], size[1])
    rows = x[r0] * (1 - wr)[:, None] + x[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def test_tokenlearner_matches_tensorflow_tutorial_spectrogram():
    y = _signal(5.0, 16000)
    ref = _tf_stft_magnitude(y)
    assert ref.shape == (129, 624)  # the paper's "624 x 129" for 5 s ESC-50 clips
    unresized = _ours("tokenlearner", y, resize=None)
    assert unresized.shape == (129, 624)
    np.testing.assert_allclose(unresized, ref, rtol=1e-4, atol=1e-4 * ref.max())

    resized = _ours("tokenlearner", y)
    assert resized.shape == (64, 64)
    expected = _tf_bilinear(ref, (64, 64))
    np.testing.assert_allclose(resized, expected, rtol=1e-4, atol=1e-4 * ref.max())


@pytest.mark.parametrize("n", [16000, 255 + 128 * 7, 254 + 128 * 7, 300])
def test_uncentred_frames_count_like_tensorflow(n):
    fe = front_end(dataclasses.replace(PRESETS["tokenlearner"], resize=None))
    expected = 1 + (n - 255) // 128
    assert fe(torch.zeros(n)).shape == (129, expected) and fe.num_frames(n) == expected


@pytest.mark.parametrize("name, seconds, shape", [
    ("sat", 1.0, (64, 101)), ("htsat", 1.0, (64, 101)), ("codebook", 1.0, (96, 101)),
    ("tokenlearner", 5.0, (64, 64)),
])
def test_shapes_and_num_frames(name, seconds, shape):
    fe = front_end(name)
    n = int(seconds * fe.sample_rate)
    out = fe(torch.randn(n))
    assert out.shape == shape and out.dtype == torch.float32
    assert fe.num_frames(n) == shape[1] and fe.n_bins == shape[0]
    assert fe(torch.randn(2, 3, n)).shape == (2, 3, *shape)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_batch_equals_items_stacked(name):
    fe = front_end(name)
    n = fe.sample_rate // 2
    rng = np.random.default_rng(1)
    # Loud, quiet and silent-tail items: a batch-wide top_db floor would couple them.
    batch = torch.from_numpy(rng.standard_normal((3, n))).float()
    batch[1] *= 1e-4
    batch[2, n // 2:] = 0
    stacked = torch.stack([fe(item) for item in batch])
    torch.testing.assert_close(fe(batch), stacked, atol=1e-4, rtol=1e-5)


def test_top_db_floor_is_per_item():
    fe = front_end("sat")
    # Digital silence in the second half sits at the floor (the 1e-10 amin is lower).
    loud = torch.from_numpy(np.concatenate([10 * _signal(0.5, 16000), np.zeros(8000)])).float()
    quiet = 0.1 * loud
    out = fe(torch.stack([loud, quiet]))  # (2, 64, T)
    for item in out:
        assert item.min() == pytest.approx(item.max().item() - 120.0, abs=1e-3)
    # The quiet item's floor follows its own peak, 20 dB below the loud one's; a
    # batch-wide floor (torchaudio) would put both at the loud item's.
    assert out[1].min() == pytest.approx(out[0].min().item() - 20.0, abs=1e-2)
    assert out[1].min() > -100.0


def test_amplitude_to_db_floor_uses_last_two_dims():
    x = torch.tensor([[[1.0, 1e-20]], [[1e-6, 1e-20]]])  # (2, 1, 2)
    db = amplitude_to_db(x, 10.0, 1e-10, top_db=30.0)
    torch.testing.assert_close(db, torch.tensor([[[0.0, -30.0]], [[-60.0, -90.0]]]))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_dict_round_trip_through_json(name):
    cfg = PRESETS[name]
    back = FrontEndConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert front_end(cfg.to_dict()).config == cfg


def test_from_dict_rejects_unknown_and_missing_keys():
    d = PRESETS["sat"].to_dict()
    with pytest.raises(ValueError, match="unknown front end config keys.*'hop'"):
        FrontEndConfig.from_dict({**d, "hop": 1})
    del d["n_fft"]
    with pytest.raises(ValueError, match="n_fft"):
        FrontEndConfig.from_dict(d)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="'vggish'.*codebook, htsat, sat, tokenlearner"):
        front_end("vggish")


def test_invalid_config_is_refused():
    with pytest.raises(ValueError, match="mel_scale"):
        dataclasses.replace(PRESETS["sat"], mel_scale="bark")
    with pytest.raises(ValueError, match="win_length"):
        dataclasses.replace(PRESETS["sat"], win_length=1024)


def test_too_short_wave_has_a_clear_error():
    with pytest.raises(ValueError, match="100 samples is too short"):
        front_end("htsat")(torch.zeros(100))


def test_buffers_follow_the_module_but_stay_out_of_state_dict():
    fe = LogMel("htsat")
    assert fe.window.shape == (1024,) and fe.mel_fb.shape == (64, 513)
    assert fe.state_dict() == {}
    wave = torch.randn(16000)
    expected = fe(wave)
    fe.half()
    assert fe.window.dtype == torch.float16
    out = fe(wave.half())
    assert out.dtype == torch.float32 and out.shape == expected.shape


def _coloured(wave: torch.Tensor, gain: float) -> torch.Tensor:
    """``wave`` through a fixed two-tap filter (a microphone's colour) at another level."""
    return gain * (wave - 0.9 * torch.nn.functional.pad(wave, (1, 0))[..., :-1])


@pytest.mark.parametrize("how", ["mean", "meanvar"])
def test_per_clip_normalisation_cancels_level_and_a_fixed_channel(how):
    wave = torch.from_numpy(_signal(1.0, 16000) * np.hanning(16000)).float()
    plain = front_end("sat")
    normed = front_end(dataclasses.replace(PRESETS["sat"], f_max=4000.0, top_db=None,
                                           normalize=how))
    out = normed(wave)
    # every bin has zero mean over the clip's frames (and unit deviation with meanvar)
    torch.testing.assert_close(out.mean(-1), torch.zeros(64), atol=1e-4, rtol=0)
    if how == "meanvar":
        torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(64), atol=1e-3, rtol=0)
    # a louder recording through another microphone: the log-mel moves by many dB, the
    # normalised features barely (the filter is a fixed gain per bin, up to window effects)
    other = _coloured(wave, 8.0)
    moved = (plain(other) - plain(wave)).abs().mean()
    assert moved > 10.0
    assert (normed(other) - out).abs().mean() < 0.05 * moved
    # a batch equals its items stacked, and the setting round-trips through config.json
    torch.testing.assert_close(normed(torch.stack([wave, other])),
                               torch.stack([out, normed(other)]))
    assert FrontEndConfig.from_dict(normed.config.to_dict()).normalize == how


def test_unknown_normalisation_is_refused():
    with pytest.raises(ValueError, match="normalize must be one of"):
        dataclasses.replace(PRESETS["sat"], normalize="global")


def test_a_preset_with_changes_and_a_model_saves_it_in_full(tmp_path):
    import earmark
    from earmark.models.directory import save_model_dir

    cfg = front_end({"preset": "sat", "f_max": 4000.0, "normalize": "mean"}).config
    assert cfg == dataclasses.replace(PRESETS["sat"], name="sat*", f_max=4000.0,
                                      normalize="mean")
    with pytest.raises(ValueError, match="unknown front end config keys.*'hop'"):
        front_end({"preset": "sat", "hop": 80})
    with pytest.raises(ValueError, match="unknown front end preset 'vggish'"):
        front_end({"preset": "vggish"})
    model = earmark.create_model("vit-tiny", 2, depth=1, embed_dim=32, num_heads=2,
                                 frontend={"preset": "sat", "normalize": "mean"}).eval()
    loaded = earmark.load(save_model_dir(model, tmp_path / "m", ["a", "b"]))
    assert loaded.model.frontend.config.normalize == "mean"
    wave = torch.randn(1, 16000)
    torch.testing.assert_close(loaded.model(wave), model(wave))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_front_end_in_pieces_equals_the_whole(name):
    """What a server computes between other work: the STFT and mel bands a block of frames
    at a time, the log over the whole (its top_db floor is per clip)."""
    from earmark.steps import finish

    fe = front_end(name)
    wave = torch.from_numpy(_signal(6.3, fe.sample_rate).astype(np.float32)).repeat(2, 1)
    steps = fe.steps(wave, block_frames=97)
    pieces = 0
    while True:
        try:
            next(steps)
            pieces += 1
        except StopIteration as done:
            got = done.value
            break
    if PRESETS[name].resize is None:  # a resized spectrogram is one piece: resizing looks at all
        assert pieces == -(-fe.num_frames(wave.shape[-1]) // 97)
    torch.testing.assert_close(got, fe(wave), atol=0, rtol=0)
    whole = fe.steps(wave, block_frames=10**6)  # fewer frames than a block: one piece
    next(whole)
    with pytest.raises(StopIteration):
        next(whole)
    torch.testing.assert_close(finish(fe.steps(wave, block_frames=10**6)), fe(wave))
