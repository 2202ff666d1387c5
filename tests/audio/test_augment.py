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
