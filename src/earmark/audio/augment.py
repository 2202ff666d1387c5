"""Training augmentations: waveform gain, shift and polarity; SpecAugment; mixup; and the
acoustic ones that make a tagger hold up on new speakers, rooms and microphones: speed and
pitch perturbation, vocal-tract-length perturbation, background noise at a random SNR,
reverberation and microphone colouration (:class:`AcousticAugment`, :class:`VTLP`).

All take a batch and a ``torch.Generator`` (or use the global one) so runs are repeatable.
None of them is ever applied outside training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len
from torch import nn


@dataclass
class WaveAugment:
    """Random gain (dB), circular time shift (fraction of the clip) and polarity inversion."""

    gain_db: float = 6.0
    shift: float = 0.1
    polarity: float = 0.5  # probability of flipping the sign

    def __call__(self, wave: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        b, n = wave.shape
        dev = wave.device
        out = wave
        if self.gain_db:
            db = (torch.rand(b, 1, generator=gen) * 2 - 1) * self.gain_db
            out = out * (10 ** (db / 20)).to(dev)
        if self.polarity:
            sign = torch.where(torch.rand(b, 1, generator=gen) < self.polarity, -1.0, 1.0)
            out = out * sign.to(dev)
        if self.shift:
            max_shift = int(n * self.shift)
            if max_shift > 0:
                shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen)
                idx = (torch.arange(n).unsqueeze(0) - shifts.unsqueeze(1)) % n  # (B, N)
                out = out.gather(1, idx.to(dev))
        return out


class SpecAugment(nn.Module):
    """Masks up to ``time_mask`` consecutive frames and ``freq_mask`` consecutive mel bins.

    ``(B, F, T) -> (B, F, T)``; masked values are set to each item's mean, so the
    per-bin BatchNorm of the models sees no out-of-range values. Only active in training.
    """

    def __init__(self, time_mask: int = 192, freq_mask: int = 24, time_masks: int = 1,
                 freq_masks: int = 1):
        super().__init__()
        self.time_mask, self.freq_mask = time_mask, freq_mask
        self.time_masks, self.freq_masks = time_masks, freq_masks

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return spec
        b, f, t = spec.shape
        fill = spec.mean(dim=(1, 2), keepdim=True)
        keep = torch.ones_like(spec, dtype=torch.bool)
        for _ in range(self.time_masks):
            keep &= ~_band_mask(b, t, min(self.time_mask, t), spec.device).unsqueeze(1)
        for _ in range(self.freq_masks):
            keep &= ~_band_mask(b, f, min(self.freq_mask, f), spec.device).unsqueeze(2)
        return torch.where(keep, spec, fill)


def _band_mask(b: int, size: int, width: int, device) -> torch.Tensor:
    """(B, size) boolean: one random band of 0..width-1 consecutive positions per item."""
    w = torch.randint(0, width + 1, (b, 1), device=device)
    start = (torch.rand(b, 1, device=device) * (size - w + 1)).long()
    pos = torch.arange(size, device=device).unsqueeze(0)
    return (pos >= start) & (pos < start + w)


def mixup(wave: torch.Tensor, target: torch.Tensor, alpha: float,
          gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each item with a random partner: ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta.

    Works for single-label data too: the one-hot targets become the same mixture of two
    classes, which cross-entropy with probability targets takes as they are."""
    if alpha <= 0:
        return wave, target
    b = wave.shape[0]
    # Beta draws from a numpy generator seeded by ``gen``: torch's Beta takes no generator
    seed = int(torch.randint(2 ** 62, (1,), generator=gen))
    lam = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, b)).to(wave)
    perm = torch.randperm(b, generator=gen).to(wave.device)
    lw = lam.view(b, *([1] * (wave.dim() - 1)))
    lt = lam.view(b, *([1] * (target.dim() - 1)))
    return lw * wave + (1 - lw) * wave[perm], lt * target + (1 - lt) * target[perm]


# ---- acoustic augmentation: speakers, rooms, microphones ------------------------------------
#
# Everything below works on a batch (B, N) on the training device. Random values are drawn
# from a CPU torch.Generator that the trainer seeds from (run seed, step), so a run repeats
# exactly; the signal processing itself is deterministic.


# the effects of AcousticAugment, by the name of their probability
EFFECTS = ("speed", "pitch", "noise", "reverb", "eq", "band_limit", "clipping")


def _uniform(gen: torch.Generator | None, b: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(b, generator=gen)


def _chosen(gen: torch.Generator | None, b: int, prob: float) -> torch.Tensor:
    """Indices of the items that get an augmentation applied with probability ``prob``."""
    return torch.nonzero(torch.rand(b, generator=gen) < prob).flatten()


def _interp(wave: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Linear interpolation of ``wave`` (B, N) at fractional positions ``pos`` (B, M) that
    lie in [0, N - 1]."""
    n = wave.shape[-1]
    i0 = pos.floor().long().clamp(0, n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    frac = (pos - i0).to(wave.dtype)
    return torch.lerp(wave.gather(1, i0), wave.gather(1, i1), frac)


def _play_faster(wave: torch.Tensor, factors: torch.Tensor, length: int,
                 wrap: bool = False) -> torch.Tensor:
    """``length`` samples of each item of ``wave`` (B, N) read ``factors[i]`` times faster
    (linear interpolation); past the end an item repeats from its start (``wrap``) or holds
    its last sample."""
    n = wave.shape[-1]
    t = torch.arange(length, device=wave.device, dtype=torch.float32)
    # float32 positions: within 1/50 of a sample for clips up to 10 s at 16 kHz
    pos = t.unsqueeze(0) * factors.to(wave.device, torch.float32).unsqueeze(1)
    pos = torch.remainder(pos, n) if wrap else pos
    return _interp(wave, pos.clamp(max=n - 1))


def speed_perturb(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """Play ``wave`` (..., N) ``factor`` times faster: tempo and pitch change together and the
    length becomes ``round(N / factor)`` (Ko et al. 2015, Kaldi's speed perturbation).

    >>> speed_perturb(torch.randn(16000), 1.1).shape
    torch.Size([14545])
    """
    n = wave.shape[-1]
    m = max(1, round(n / factor))
    flat = wave.reshape(-1, n)
    out = _play_faster(flat, torch.full((flat.shape[0],), float(factor)), m)
    return out.reshape(*wave.shape[:-1], m)


def change_speed(wave: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Speed perturbation of a batch at its own length: item ``i`` played ``factors[i]`` times
    faster, a slower item cut at N samples, a faster one continued from its start (as clips
    fitted by repetition are). ``(B, N) -> (B, N)``."""
    return _play_faster(wave, factors, wave.shape[-1], wrap=True)


def time_stretch(wave: torch.Tensor, rates: torch.Tensor, n_fft: int = 512,
                 hop: int = 128) -> torch.Tensor:
    """Phase-vocoder time stretch: item ``i`` played ``rates[i]`` times faster at the same
    pitch. ``(B, N) -> (B, M)`` with ``M`` the longest result; shorter ones end in silence."""
    b, n = wave.shape
    window = torch.hann_window(n_fft, device=wave.device)
    spec = torch.stft(wave, n_fft, hop, window=window, return_complex=True)  # (B, F, T)
    f, t = spec.shape[1:]
    rates = rates.to(wave.device, torch.float32)
    t_out = int(math.ceil(t / float(rates.min())))
    pos = torch.arange(t_out, device=wave.device).unsqueeze(0) * rates.unsqueeze(1)  # (B, To)
    inside = pos <= t - 1
    pos = pos.clamp(max=t - 1.001)
    i0 = pos.floor().long()
    frac = (pos - i0).unsqueeze(1)  # (B, 1, To)
    idx0 = i0.unsqueeze(1).expand(b, f, t_out)
    idx1 = (idx0 + 1).clamp(max=t - 1)
    mag, ang = spec.abs(), spec.angle()  # once, then real gathers
    mag = torch.lerp(mag.gather(2, idx0), mag.gather(2, idx1), frac) * inside.unsqueeze(1)
    # phase advance per output frame: the expected bin advance plus the measured deviation
    omega = torch.linspace(0, math.pi * hop, f, device=wave.device).unsqueeze(-1)  # (F, 1)
    step = ang.gather(2, idx1) - ang.gather(2, idx0) - omega
    step = omega + step - 2 * math.pi * torch.round(step / (2 * math.pi))
    phase = ang[:, :, :1] + torch.cumsum(step, dim=2) - step
    out = torch.complex(mag * torch.cos(phase), mag * torch.sin(phase))  # faster than polar
    return torch.istft(out, n_fft, hop, window=window, length=(t_out - 1) * hop)


def pitch_shift(wave: torch.Tensor, semitones: torch.Tensor) -> torch.Tensor:
    """Shift item ``i`` by ``semitones[i]`` at the same tempo and length: a phase-vocoder
    stretch by the pitch ratio, then a speed change by it. ``(B, N) -> (B, N)``."""
    ratio = 2.0 ** (semitones.to(torch.float32) / 12)  # > 1: higher
    stretched = time_stretch(wave, 1 / ratio)  # item i: about N * ratio[i] samples
    return _play_faster(stretched, ratio, wave.shape[-1])


def mix_at_snr(wave: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor) -> torch.Tensor:
    """``wave + g * noise`` with ``g`` per item such that the power ratio of the two (over the
    whole item) is ``snr_db``; a silent item or silent noise is left as it is."""
    ps = wave.pow(2).mean(dim=1)
    pn = noise.pow(2).mean(dim=1)
    snr = snr_db.to(wave.device, wave.dtype)
    ok = (ps > 0) & (pn > 0)
    gain = torch.where(ok, torch.sqrt(ps / (pn * 10 ** (snr / 10)).clamp_min(1e-20)),
                       torch.zeros_like(ps))
    return wave + gain.unsqueeze(1) * noise


def coloured_noise(b: int, n: int, gen: torch.Generator | None = None,
                   sample_rate: int = 16000) -> torch.Tensor:
    """earmark's own background noises, (B, N) on the CPU: Gaussian noise with a power
    spectrum of 1/f^beta (beta uniform in 0-2: white to brown), half of them amplitude
    modulated at 0.5-8 Hz like a murmur or passing traffic."""
    white = torch.randn(b, n, generator=gen)
    spec = torch.fft.rfft(white)
    f = torch.arange(spec.shape[-1], dtype=torch.float32).clamp(min=1) / spec.shape[-1]
    beta = _uniform(gen, b, 0.0, 2.0).unsqueeze(1)
    noise = torch.fft.irfft(spec * f.unsqueeze(0).pow(-beta / 2), n)
    rate = _uniform(gen, b, 0.5, 8.0).unsqueeze(1) / sample_rate
    depth = torch.where(torch.rand(b, 1, generator=gen) < 0.5, 0.8, 0.0)
    phase = 2 * math.pi * torch.rand(b, 1, generator=gen)
    envelope = 1 - depth * 0.5 * (1 + torch.sin(2 * math.pi * rate * torch.arange(n) + phase))
    return noise * envelope


def reverberate(wave: torch.Tensor, rirs: torch.Tensor) -> torch.Tensor:
    """Convolve item ``i`` with room impulse response ``rirs[i]`` (B, L), aligned so that its
    strongest tap (the direct sound) stays where the dry sound was, cut to N samples and
    scaled back to the dry item's RMS. ``(B, N) -> (B, N)``."""
    b, n = wave.shape
    peak = rirs.abs().argmax(dim=1)
    taps = rirs.shape[1]
    idx = torch.arange(taps, device=rirs.device).unsqueeze(0) + peak.unsqueeze(1)
    rirs = torch.where(idx < taps, rirs.gather(1, idx.clamp(max=taps - 1)),
                       torch.zeros_like(rirs))
    size = next_fast_len(n + taps - 1, real=True)  # a length with small prime factors
    wet = torch.fft.irfft(torch.fft.rfft(wave, size) * torch.fft.rfft(rirs.to(wave), size),
                          size)[:, :n]
    dry_rms = wave.pow(2).mean(dim=1, keepdim=True).sqrt()
    wet_rms = wet.pow(2).mean(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
    return wet * (dry_rms / wet_rms)


def synthetic_rir(rt60: float, sample_rate: int, gen: torch.Generator | None = None,
                  seconds: float | None = None) -> torch.Tensor:
    """A room impulse response without a room model: the direct sound, a few early
    reflections within 20 ms, and a tail of Gaussian noise decaying by 60 dB in ``rt60``
    seconds (the statistical model of late reverberation)."""
    n = int(sample_rate * (seconds or min(1.0, rt60)))
    t = torch.arange(n, dtype=torch.float32) / sample_rate
    tail = torch.randn(n, generator=gen) * torch.exp(-6.9078 * t / rt60)
    onset = int(0.005 * sample_rate)
    tail[:onset] = 0
    rir = 0.3 * tail
    for _ in range(4):
        k = int(torch.randint(onset // 2 + 1, max(onset + 2, int(0.02 * sample_rate)), (1,),
                              generator=gen))
        rir[k] += float(_uniform(gen, 1, -0.6, 0.6))
    rir[0] = 1.0
    return rir


def room_rirs(count: int, sample_rate: int, rt60: tuple[float, float], seed: int = 0
              ) -> list[torch.Tensor]:
    """``count`` simulated shoebox rooms (pyroomacoustics' image source model with a random
    size, RT60 in ``rt60``, source and microphone positions); without pyroomacoustics, the
    statistical model of :func:`synthetic_rir`."""
    gen = torch.Generator().manual_seed(seed)
    try:
        import pyroomacoustics as pra
    except ImportError:
        return [synthetic_rir(float(_uniform(gen, 1, *rt60)), sample_rate, gen)
                for _ in range(count)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        size = rng.uniform([3.0, 3.0, 2.4], [10.0, 8.0, 4.0])
        target = rng.uniform(*rt60)
        try:
            absorption, order = pra.inverse_sabine(target, size)
        except ValueError:  # the room is too small or large for that RT60: use a plain tail
            out.append(synthetic_rir(target, sample_rate, gen))
            continue
        room = pra.ShoeBox(size, fs=sample_rate, materials=pra.Material(absorption),
                           max_order=min(order, 12))
        src, mic = (rng.uniform(0.5, size - 0.5) for _ in range(2))
        room.add_source(src)
        room.add_microphone(mic)
        room.compute_rir()
        rir = torch.from_numpy(np.asarray(room.rir[0][0], dtype=np.float32))
        out.append(rir[: sample_rate])
    return out


def _freqs(n: int, sample_rate: int, device) -> torch.Tensor:
    return torch.linspace(0, sample_rate / 2, n // 2 + 1, device=device)


def eq_response(gains_db: torch.Tensor, freqs: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """(B, K) gains in dB at K log-spaced frequencies from 60 Hz to Nyquist -> (B, F) linear
    gains at ``freqs``, interpolated on a log-frequency axis."""
    b, k = gains_db.shape
    pos = torch.log(freqs.clamp(min=60.0) / 60.0) / math.log(sample_rate / 2 / 60.0) * (k - 1)
    pos = pos.clamp(0, k - 1).unsqueeze(0).expand(b, -1)
    return 10 ** (_interp(gains_db.to(freqs.device, torch.float32), pos) / 20)


def band_response(low: torch.Tensor, high: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """(B,) band edges in Hz -> (B, F) gains: 1 inside, 0 outside, raised-cosine edges an
    octave/4 wide."""
    octaves = torch.log2(freqs.clamp(min=1.0)).unsqueeze(0)
    lo = torch.log2(low.to(freqs.device)).unsqueeze(1)
    hi = torch.log2(high.to(freqs.device)).unsqueeze(1)
    width = 0.25

    def ramp(x):  # 0 below -width/2, 1 above +width/2, raised cosine between
        return 0.5 - 0.5 * torch.cos(math.pi * ((x / width) + 0.5).clamp(0, 1))

    return ramp(octaves - lo) * ramp(hi - octaves)


def _filter(wave: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Zero-phase filtering by a (B, F) magnitude response."""
    return torch.fft.irfft(torch.fft.rfft(wave) * response, wave.shape[-1])


def equalise(wave: torch.Tensor, gains_db: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """A smooth random equaliser (:func:`eq_response`), applied with zero phase."""
    freqs = _freqs(wave.shape[-1], sample_rate, wave.device)
    return _filter(wave, eq_response(gains_db, freqs, sample_rate))


def band_limit(wave: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
               sample_rate: int) -> torch.Tensor:
    """Keep ``low[i]``-``high[i]`` Hz of item ``i`` (a telephone channel: about 300-3400 Hz)."""
    return _filter(wave, band_response(low, high, _freqs(wave.shape[-1], sample_rate,
                                                          wave.device)))


def clip_peaks(wave: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Hard clipping at ``keep[i]`` times item ``i``'s peak, as an overdriven input would."""
    level = wave.abs().amax(dim=1, keepdim=True) * keep.to(wave.device).unsqueeze(1)
    return torch.maximum(torch.minimum(wave, level), -level)


class NoiseBank:
    """Background noise for :class:`AcousticAugment`: random segments of the audio files under
    a folder (any length and rate, read a segment at a time), or earmark's coloured noises
    when no folder is given."""

    def __init__(self, folder: str | Path | None, sample_rate: int, seed: int = 0):
        from earmark.audio.io import audio_info, find_audio_files

        self.sample_rate = sample_rate
        self.files: list[tuple[Path, int, int]] = []  # (path, frames, rate)
        self.skipped: list[str] = []
        if folder is None:
            # 32 coloured noises of 4 s made once, then read at random offsets: far cheaper
            # per step than shaping new noise
            self.synthetic = coloured_noise(32, 4 * sample_rate,
                                            torch.Generator().manual_seed(seed), sample_rate)
            return
        for path in find_audio_files([folder]):
            try:
                info = audio_info(path)
            except Exception as err:  # a bad file is reported and left out, the rest used
                self.skipped.append(f"{path}: {err}")
                continue
            if info.frames > 0:
                self.files.append((path, info.frames, info.sample_rate))
        if not self.files:
            raise ValueError(f"{folder}: no readable audio files for background noise"
                             + (f" ({'; '.join(self.skipped[:3])})" if self.skipped else ""))

    def sample(self, b: int, n: int, gen: torch.Generator | None = None) -> torch.Tensor:
        """(B, N) noise on the CPU."""
        if not self.files:
            rows, length = self.synthetic.shape
            pick = torch.randint(rows, (b, 1), generator=gen)
            start = torch.randint(length, (b, 1), generator=gen)
            return self.synthetic[pick, (start + torch.arange(n)) % length]  # looped
        out = torch.empty(b, n)
        for i in range(b):
            pick = int(torch.randint(len(self.files), (1,), generator=gen))
            path, frames, rate = self.files[pick]
            need = int(math.ceil(n * rate / self.sample_rate)) + 1
            start = int(torch.randint(max(1, frames - need + 1), (1,), generator=gen))
            x, _ = sf.read(str(path), start=start, frames=need, dtype="float32", always_2d=True)
            x = x.mean(axis=1)
            if rate != self.sample_rate:
                x = soxr.resample(x, rate, self.sample_rate)
            seg = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            reps = int(math.ceil(n / max(1, seg.numel())))
            out[i] = seg.repeat(reps)[:n]  # a short file is looped
        return out


class RirBank:
    """Room impulse responses for :class:`AcousticAugment`: the audio files under a folder, or
    ``count`` simulated rooms (:func:`room_rirs`)."""

    def __init__(self, folder: str | Path | None, sample_rate: int,
                 rt60: tuple[float, float] = (0.2, 0.8), count: int = 48, seed: int = 0):
        from earmark.audio.io import find_audio_files, load_audio

        self.skipped: list[str] = []
        if folder is None:
            rirs = room_rirs(count, sample_rate, rt60, seed)
        else:
            rirs = []
            for path in find_audio_files([folder]):
                try:
                    rirs.append(load_audio(path, sample_rate)[0][: 2 * sample_rate])
                except Exception as err:  # a bad file is reported and left out, as for noise
                    self.skipped.append(f"{path}: {err}")
            if not rirs:
                raise ValueError(f"{folder}: no readable audio files to use as room impulse "
                                 "responses" + (f" ({'; '.join(self.skipped[:3])})"
                                                if self.skipped else ""))
        length = max(r.numel() for r in rirs)
        self.rirs = torch.stack([F.pad(r, (0, length - r.numel())) for r in rirs])  # (R, L)

    def sample(self, b: int, gen: torch.Generator | None = None) -> torch.Tensor:
        return self.rirs[torch.randint(len(self.rirs), (b,), generator=gen)]


@dataclass
class AcousticAugment:
    """Speed, pitch, room, microphone and background-noise augmentation of a training batch.

    Each effect has a probability per item (0 turns it off) and a range it draws from; the
    order is speed, pitch, reverberation, equalisation, band limiting, clipping, noise (the
    room and the channel colour the voice, and the noise is heard through neither).

    >>> aug = AcousticAugment(16000, speed=0.5, noise=0.5)
    >>> gen = torch.Generator().manual_seed(0)
    >>> aug(torch.randn(4, 16000), gen).shape
    torch.Size([4, 16000])
    """

    sample_rate: int
    speed: float = 0.0
    speed_range: tuple[float, float] = (0.85, 1.15)
    pitch: float = 0.0
    pitch_semitones: float = 2.0
    reverb: float = 0.0
    reverb_rt60: tuple[float, float] = (0.2, 0.8)
    rir_dir: str | None = None
    eq: float = 0.0
    eq_db: float = 6.0
    band_limit: float = 0.0
    clipping: float = 0.0
    clip_range: tuple[float, float] = (0.3, 0.8)
    noise: float = 0.0
    noise_snr: tuple[float, float] = (5.0, 30.0)
    noise_dir: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in EFFECTS:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability, got {p}")
        self._noise = (NoiseBank(self.noise_dir, self.sample_rate, self.seed) if self.noise
                       else None)
        self._rirs = (RirBank(self.rir_dir, self.sample_rate, tuple(self.reverb_rt60),
                              seed=self.seed) if self.reverb else None)

    @property
    def active(self) -> bool:
        return any(getattr(self, n) for n in EFFECTS)

    def __call__(self, wave: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not self.active:
            return wave
        b, n = wave.shape
        out = wave.clone()
        sr = self.sample_rate

        def apply(prob, fn):
            idx = _chosen(gen, b, prob)
            if len(idx):
                out[idx.to(out.device)] = fn(out[idx.to(out.device)], len(idx))

        apply(self.speed, lambda x, k: change_speed(x, _uniform(gen, k, *self.speed_range)))
        apply(self.pitch, lambda x, k: pitch_shift(
            x, _uniform(gen, k, -self.pitch_semitones, self.pitch_semitones)))
        if self._rirs is not None:
            apply(self.reverb, lambda x, k: reverberate(x, self._rirs.sample(k, gen).to(x)))
        # the microphone's response and the telephone band in one filtering pass
        eq, band = (torch.rand(b, generator=gen) < p for p in (self.eq, self.band_limit))
        picked = torch.nonzero(eq | band).flatten()
        if len(picked):
            freqs = _freqs(n, sr, out.device)
            response = torch.ones(len(picked), len(freqs), device=out.device)
            sel = eq[picked]
            if sel.any():
                k = int(sel.sum())
                gains = _uniform(gen, k * 6, -self.eq_db, self.eq_db).view(k, 6)
                response[sel.to(out.device)] *= eq_response(gains, freqs, sr)
            sel = band[picked]
            if sel.any():
                k = int(sel.sum())
                response[sel.to(out.device)] *= band_response(
                    _uniform(gen, k, 200.0, 400.0), _uniform(gen, k, 3000.0, 3800.0), freqs)
            rows = picked.to(out.device)
            out[rows] = _filter(out[rows], response)
        apply(self.clipping, lambda x, k: clip_peaks(x, _uniform(gen, k, *self.clip_range)))
        if self._noise is not None:
            apply(self.noise, lambda x, k: mix_at_snr(
                x, self._noise.sample(k, n, gen).to(x), _uniform(gen, k, *self.noise_snr)))
        return out


class VTLP(nn.Module):
    """Vocal-tract-length perturbation (Jaitly & Hinton 2013) of a mel spectrogram: the
    frequency axis warped by ``alpha`` per item, ``f -> alpha * f`` up to a boundary frequency,
    then linearly to Nyquist, so the edges of the band stay in place.

    ``centres``: the mel bins' centre frequencies in Hz. ``(B, F, T) -> (B, F, T)``; only in
    training, with probability ``prob`` per item.
    """

    def __init__(self, centres: torch.Tensor, prob: float = 0.5,
                 alpha_range: tuple[float, float] = (0.9, 1.1), f_hi: float = 4800.0,
                 nyquist: float = 8000.0):
        super().__init__()
        self.register_buffer("centres", torch.as_tensor(centres, dtype=torch.float32),
                             persistent=False)
        self.prob, self.alpha_range = prob, tuple(alpha_range)
        self.f_hi, self.nyquist = min(f_hi, 0.6 * nyquist), nyquist
        self.generator: torch.Generator | None = None  # set by the trainer for each step

    def source_frequencies(self, alpha: torch.Tensor) -> torch.Tensor:
        """(B,) warp factors -> (B, F): the input frequency each output bin reads from
        (the inverse of the piecewise-linear warp)."""
        f = self.centres.unsqueeze(0)
        a = alpha.to(f).unsqueeze(1)
        boundary = self.f_hi * torch.minimum(a, torch.ones_like(a)) / a  # input Hz
        knee = a * boundary  # its output Hz
        upper = boundary + (f - knee) * (self.nyquist - boundary) / (self.nyquist - knee)
        return torch.where(f <= knee, f / a, upper)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training or self.prob <= 0:
            return spec
        b, nf, _ = spec.shape
        idx = _chosen(self.generator, b, self.prob)
        if not len(idx):
            return spec
        alpha = _uniform(self.generator, len(idx), *self.alpha_range)
        src = self.source_frequencies(alpha)  # (k, F) Hz
        # fractional bin positions of the source frequencies on the centre-frequency axis
        c = self.centres
        j = torch.searchsorted(c, src.contiguous()).clamp(1, nf - 1)
        lo, hi = c[j - 1], c[j]
        pos = (j - 1 + ((src - lo) / (hi - lo)).clamp(0, 1)).clamp(0, nf - 1)  # (k, F)
        sub = spec[idx.to(spec.device)]  # (k, F, T)
        i0 = pos.floor().long()
        i1 = (i0 + 1).clamp(max=nf - 1)
        w = (pos - i0).unsqueeze(-1)
        t = sub.shape[-1]
        g0 = sub.gather(1, i0.unsqueeze(-1).expand(-1, -1, t))
        g1 = sub.gather(1, i1.unsqueeze(-1).expand(-1, -1, t))
        out = spec.clone()
        out[idx.to(spec.device)] = torch.lerp(g0, g1, w.to(sub))
        return out


def bin_centres(frontend) -> torch.Tensor:
    """Centre frequencies (Hz) of a front end's bins: its mel filters, or its STFT bins when
    it has no mel filter bank (``n_mels=0``); where the front end resizes its output
    (TokenLearner's 64 rows), the frequencies the resized rows sample. ``frontend``: a
    ``FrontEndConfig``.

        >>> import dataclasses
        >>> import earmark
        >>> tesc = earmark.create_model("tesc-4l-8t-8h", 10).frontend.config  # 129 rows -> 64
        >>> bin_centres(dataclasses.replace(tesc, resize=None)).shape
        torch.Size([129])
        >>> centres = bin_centres(tesc)
        >>> centres.shape, bool((centres.diff() > 0).all()), float(centres[-1]) <= 8000
        (torch.Size([64]), True, True)
    """
    if not frontend.n_mels:
        centres = torch.linspace(0, frontend.sample_rate / 2, frontend.n_fft // 2 + 1)
    else:
        import librosa

        edges = librosa.mel_frequencies(frontend.n_mels + 2, fmin=frontend.f_min,
                                        fmax=frontend.f_max, htk=frontend.mel_scale == "htk")
        centres = torch.from_numpy(edges[1:-1].astype(np.float32))
    if frontend.resize is None or frontend.resize[0] == len(centres):
        return centres
    # a bilinear resize with half-pixel centres: output row i reads input position p
    n_in, n_out = len(centres), frontend.resize[0]
    pos = ((torch.arange(n_out) + 0.5) * n_in / n_out - 0.5).clamp(0, n_in - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return torch.lerp(centres[lo], centres[hi], (pos - lo).to(centres))
