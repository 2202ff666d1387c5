import torch

from earmark.audio.augment import SpecAugment, WaveAugment, mixup


def test_spec_augment_masks_bounded_bands_in_training_only():
    torch.manual_seed(0)
    aug = SpecAugment(time_mask=5, freq_mask=3)
    spec = torch.randn(8, 16, 40)
    assert torch.equal(aug.eval()(spec), spec)
    out = aug.train()(spec)
    changed = out != spec
    for b in range(8):
        cols = changed[b].all(0).sum().item()  # fully masked frames
        rows = changed[b].all(1).sum().item()  # fully masked bins
        assert cols <= 5 and rows <= 3
    assert changed.any()


def test_mixup_is_a_convex_combination_of_pairs():
    wave = torch.randn(6, 100)
    target = torch.eye(6)
    gen = torch.Generator().manual_seed(0)
    w, t = mixup(wave, target, alpha=0.5, gen=gen)
    torch.testing.assert_close(t.sum(1), torch.ones(6))  # label mass preserved
    assert (t >= 0).all() and not torch.equal(w, wave)
    assert mixup(wave, target, alpha=0.0) == (wave, target)


def test_wave_augment_gain_shift_polarity():
    x = torch.randn(4, 1000)
    gen = torch.Generator().manual_seed(1)
    y = WaveAugment(gain_db=6.0, shift=0.0, polarity=0.0)(x, gen)
    ratio = (y.abs().sum(1) / x.abs().sum(1))
    assert ((ratio >= 10 ** (-6 / 20) - 1e-5) & (ratio <= 10 ** (6 / 20) + 1e-5)).all()
    y = WaveAugment(gain_db=0.0, shift=0.0, polarity=1.0)(x, gen)
    torch.testing.assert_close(y, -x)
    y = WaveAugment(gain_db=0.0, shift=0.2, polarity=0.0)(x, gen)
    torch.testing.assert_close(y.sort(1).values, x.sort(1).values)  # a permutation in time
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    aug = WaveAugment()
    torch.testing.assert_close(aug(x, g1), aug(x, g2))


# ---- acoustic augmentation ------------------------------------------------------------------

import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402

from earmark.audio.augment import (  # noqa: E402
    VTLP,
    AcousticAugment,
    NoiseBank,
    band_limit,
    bin_centres,
    change_speed,
    equalise,
    mix_at_snr,
    pitch_shift,
    reverberate,
    speed_perturb,
    synthetic_rir,
)
from earmark.audio.features import PRESETS  # noqa: E402

SR = 16000
EFFECTS = ("speed", "pitch", "reverb", "eq", "band_limit", "clipping", "noise")


def sine(freq, seconds=1.0, b=1):
    t = torch.arange(int(seconds * SR)) / SR
    return torch.sin(2 * math.pi * freq * t).repeat(b, 1)


def peak_hz(x):
    return torch.fft.rfft(x).abs().argmax(-1).float() * SR / x.shape[-1]


def test_speed_perturbation_changes_the_length_by_its_factor():
    x = torch.randn(2, 16000)
    for factor in (0.85, 0.9, 1.1, 1.15):
        assert speed_perturb(x, factor).shape == (2, round(16000 / factor))
    # and the pitch with it: 440 Hz played 1.1 times faster is 484 Hz
    assert abs(peak_hz(speed_perturb(sine(440.0), 1.1))[0] - 484.0) < 2.0
    # in a batch each item keeps its length; its own factor sets its pitch
    y = change_speed(sine(500.0, b=2), torch.tensor([0.9, 1.1]))
    assert y.shape == (2, 16000)
    torch.testing.assert_close(peak_hz(y), torch.tensor([450.0, 550.0]), atol=2.0, rtol=0)


def test_pitch_shift_keeps_tempo_and_length():
    x = sine(440.0, b=3)
    y = pitch_shift(x, torch.tensor([12.0, -12.0, 0.0]))
    assert y.shape == x.shape
    torch.testing.assert_close(peak_hz(y), torch.tensor([880.0, 220.0, 440.0]), atol=2.0, rtol=0)
    # same tempo: a tone burst in the first half stays in the first half
    burst = torch.cat([sine(440.0, 0.5), torch.zeros(1, 8000)], dim=1)
    shifted = pitch_shift(burst, torch.tensor([3.0]))
    first, second = shifted[0, :8000].pow(2).sum(), shifted[0, 8000:].pow(2).sum()
    assert second < 0.05 * first


def test_mixing_at_snr_hits_the_drawn_ratio():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16000, generator=gen) * torch.linspace(0.01, 1.0, 8).unsqueeze(1)
    noise = torch.randn(8, 16000, generator=gen) * 3.0
    snr = torch.linspace(-5.0, 30.0, 8)
    y = mix_at_snr(x, noise, snr)
    achieved = 10 * torch.log10(x.pow(2).mean(1) / (y - x).pow(2).mean(1))
    assert (achieved - snr).abs().max() < 0.5
    # through the augmentation, with earmark's own noises and with a noise folder
    aug = AcousticAugment(SR, noise=1.0, noise_snr=(7.0, 7.0))
    y = aug(x, torch.Generator().manual_seed(1))
    achieved = 10 * torch.log10(x.pow(2).mean(1) / (y - x).pow(2).mean(1))
    assert (achieved - 7.0).abs().max() < 0.5


def test_noise_folder_is_read_in_random_segments_and_bad_files_are_reported(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "long.wav", rng.standard_normal(8000 * 5).astype(np.float32) * 0.1, 8000)
    sf.write(tmp_path / "short.flac", rng.standard_normal(3000).astype(np.float32) * 0.1, 22050)
    (tmp_path / "broken.wav").write_bytes(b"not audio")
    bank = NoiseBank(tmp_path, SR)
    assert len(bank.files) == 2 and "broken.wav" in bank.skipped[0]
    segments = bank.sample(16, SR, torch.Generator().manual_seed(0))
    assert segments.shape == (16, SR) and (segments.pow(2).mean(1) > 0).all()
    assert not torch.equal(segments[0], segments[1])
    with pytest.raises(ValueError, match="no readable audio files"):
        NoiseBank(tmp_path / "broken.wav", SR)


def test_reverberation_keeps_the_direct_sound_first_and_adds_the_tail():
    x = torch.zeros(1, 16000)
    x[0, 4000] = 1.0  # a click
    rir = synthetic_rir(0.5, SR, torch.Generator().manual_seed(0)).unsqueeze(0)
    rir = torch.cat([torch.zeros(1, 300), rir], dim=1)  # a pre-delay the alignment removes
    y = reverberate(x, rir)
    assert y.shape == x.shape
    assert y[0].abs().argmax() == 4000  # the direct sound, where the dry click was
    assert y[0, :4000].abs().max() < 1e-4  # nothing before it
    tail = y[0, 4100:12000]
    assert tail.pow(2).sum() > 0.05 * y[0].pow(2).sum()  # a reverberant tail
    # the tail decays: the first 100 ms hold more energy than the next 100 ms
    assert tail[:1600].pow(2).sum() > tail[1600:3200].pow(2).sum()
    # simulated rooms go through the same path
    aug = AcousticAugment(SR, reverb=1.0)
    y = aug(x, torch.Generator().manual_seed(0))
    assert y[0].abs().argmax() == 4000 and y[0, 4100:].abs().sum() > 0


def test_colouration_equaliser_and_telephone_band():
    x = sine(100.0) + sine(1000.0) + sine(6000.0)
    torch.testing.assert_close(equalise(x, torch.zeros(1, 6), SR), x, atol=1e-4, rtol=0)
    boosted = equalise(x, torch.full((1, 6), 6.0), SR)
    torch.testing.assert_close(boosted, x * 10 ** (6 / 20), atol=1e-3, rtol=0)
    phone = band_limit(x, torch.tensor([300.0]), torch.tensor([3400.0]), SR)
    spec = torch.fft.rfft(phone[0]).abs()
    assert spec[1000] > 0.9 * torch.fft.rfft(x[0]).abs()[1000]  # 1 kHz passes
    assert spec[100] < 0.01 * spec[1000] and spec[6000] < 0.01 * spec[1000]


@pytest.mark.parametrize("effect", EFFECTS)
def test_every_augmentation_is_the_identity_at_probability_zero(effect):
    x = torch.randn(4, 8000)
    off = AcousticAugment(SR, **{effect: 0.0})
    assert torch.equal(off(x, torch.Generator().manual_seed(0)), x)
    on = AcousticAugment(SR, **{effect: 1.0})
    assert not torch.allclose(on(x, torch.Generator().manual_seed(0)), x)


def test_vtlp_warps_the_mel_axis_in_training_only():
    front = PRESETS["sat"]
    vtlp = VTLP(bin_centres(front), prob=1.0, alpha_range=(1.1, 1.1), f_hi=4800.0,
                nyquist=front.f_max)
    spec = torch.zeros(1, front.n_mels, 5)
    spec[:, 20] = 1.0  # energy in one band
    assert torch.equal(vtlp.eval()(spec), spec)
    out = vtlp.train()(spec)
    assert out.shape == spec.shape
    assert out[0, :, 0].argmax() > 20  # alpha > 1 moves the band up
    src = vtlp.source_frequencies(torch.tensor([0.9, 1.0, 1.1]))
    torch.testing.assert_close(src[1], vtlp.centres)  # alpha 1: no warp
    # below the boundary f -> alpha * f; the top of the band stays in place
    edge = VTLP(torch.tensor([100.0, 1000.0, 8000.0]), f_hi=4800.0, nyquist=8000.0)
    src = edge.source_frequencies(torch.tensor([0.9, 1.1]))
    torch.testing.assert_close(src[:, 0], torch.tensor([100 / 0.9, 100 / 1.1]))
    torch.testing.assert_close(src[:, -1], torch.tensor([8000.0, 8000.0]))
    assert torch.equal(VTLP(bin_centres(front), prob=0.0).train()(spec), spec)


def test_the_same_seed_gives_the_same_batch():
    x = torch.randn(6, 16000)
    aug = AcousticAugment(SR, **{e: 0.7 for e in EFFECTS})
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_probabilities_are_checked():
    with pytest.raises(ValueError, match="speed is a probability"):
        AcousticAugment(SR, speed=1.5)


def test_vtlp_trains_a_model_whose_front_end_resizes_its_rows():
    """TokenLearner's front end resizes 129 STFT rows to 64: the warp follows the rows the
    model sees (it failed with a shape mismatch)."""
    import earmark
    from earmark.train.config import TrainConfig
    from earmark.train.module import TaggingModule

    model = earmark.create_model("tesc-4l-8t-8h", 3, clip_seconds=1.0)
    module = TaggingModule(model, TrainConfig(data="x", vtlp=1.0), ["a", "b", "c"], 1)
    module.vtlp.alpha_range = (1.2, 1.2)
    spec = torch.rand(2, 64, 64)
    warped = module.vtlp.train()(spec)
    assert warped.shape == spec.shape and not torch.equal(warped, spec)
    model.train()
    assert model(torch.randn(2, 16000)).shape == (2, 3)
