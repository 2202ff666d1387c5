"""Procedural sound events and soundscapes: earmark's embedded data set.

Eight sound classes are rendered from a few random parameters each (pitch, duration,
envelope, loudness), so a small tagger learns them in minutes on a CPU and every test
can make labelled audio without a download. :func:`synthesize` writes the data set
that ``earmark synth DIR`` produces and ``earmark demo`` trains on; :func:`load`
(the ``synth:DIR`` data SPEC) and :func:`load_soundscapes` read it back.

    >>> import numpy as np
    >>> from earmark.data.synth import render_event, render_soundscape
    >>> x = render_event("siren", np.random.default_rng(0), duration=0.5)
    >>> x.shape, x.dtype
    ((8000,), dtype('float32'))
    >>> audio, events = render_soundscape(np.random.default_rng(0), seconds=4.0)
    >>> audio.shape
    (64000,)

Layout written by :func:`synthesize` (paths in the CSVs are relative to the folder)::

    DIR/clips/{class}/{class}_{i:04d}.wav   one event per clip, light background noise
    DIR/soundscapes/scape_{i:04d}.wav       1-4 events over background noise
    DIR/clips.csv                           single-label manifest with split and fold
    DIR/soundscapes.csv                     multi-label manifest (the set of event labels)
    DIR/soundscapes.tsv                     DESED strong labels: filename onset offset event_label
    DIR/synth.json                          generator parameters and the class list
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from earmark.data.manifest import SPLITS, Item, Manifest
from earmark.errors import DataError
from earmark.files import atomic_path, write_text

CLASSES: tuple[str, ...] = (
    "siren", "alarm", "engine", "rain", "clicks", "bark", "whistle", "babble",
)

# Natural event lengths in seconds, drawn uniformly when render_event gets no duration.
_DURATION = {
    "siren": (1.0, 4.0),
    "alarm": (0.6, 3.0),
    "engine": (1.5, 5.0),
    "rain": (1.5, 5.0),
    "clicks": (0.5, 2.5),
    "bark": (0.2, 1.2),
    "whistle": (0.3, 1.5),
    "babble": (0.8, 4.0),
}

_MIN_RATE = 16000  # the classes put content up to about 7 kHz
_RAMP_S = 0.005  # fade at both ends of an event, so no event starts or stops with a click
_LOUDNESS_DB = (-14.0, -1.0)  # peak level of an event, dBFS
_CLIP_BACKGROUND_DB = (5.0, 15.0)  # clips get snr_db plus this much: light background
_N_EVENTS = (1, 4)
_SPLIT_SHARE = {"valid": 0.15, "test": 0.15}  # the rest is train
_N_FOLDS = 5
_TSV_HEADER = ("filename", "onset", "offset", "event_label")

Event = tuple[float, float, str]  # (onset s, offset s, label)


# ---- signal helpers (float64, one event = one 1-D array of n samples) ----------------------


def _phase(freq: np.ndarray | float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Running phase of an oscillator whose frequency (Hz, scalar or per sample) may move."""
    freq = np.broadcast_to(np.asarray(freq, dtype=np.float64), (n,))
    return 2 * np.pi * np.cumsum(freq) / sr + rng.uniform(0, 2 * np.pi)


def _harmonic_tone(phase: np.ndarray, freq: np.ndarray | float, weights: Sequence[float],
                   sr: int) -> np.ndarray:
    """Sum of harmonics ``k`` of ``phase``; a harmonic is muted wherever it would alias."""
    out = np.zeros_like(phase)
    limit = 0.45 * sr
    for k, w in enumerate(weights, start=1):
        if w:
            out += w * np.sin(k * phase) * (k * np.asarray(freq) < limit)
    return out


def _shaped_noise(rng: np.random.Generator, n: int, sr: int,
                  gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise filtered in the frequency domain by ``gain(f)``, scaled to unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    x = np.fft.irfft(spec * gain(np.fft.rfftfreq(n, 1.0 / sr)), n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    hi = min(hi, 0.45 * sr)
    return _shaped_noise(
        rng, n, sr, lambda f: 1 / (1 + (lo / np.maximum(f, 1.0)) ** 4) / (1 + (f / hi) ** 4))


def _colored_noise(rng: np.random.Generator, n: int, sr: int, exponent: float) -> np.ndarray:
    """Noise with power falling as ``1/f**exponent`` (1 = pink, 2 = brown), no rumble < 20 Hz."""
    def gain(f: np.ndarray) -> np.ndarray:
        g = np.maximum(f, 20.0) ** (-exponent / 2)
        return g * (f >= 20.0)

    return _shaped_noise(rng, n, sr, gain)


def _gate(n: int, sr: int, starts: np.ndarray, lengths: np.ndarray,
          ramp_s: float = 0.003) -> np.ndarray:
    """0/1 envelope that is on for ``lengths[i]`` samples from ``starts[i]``, with short ramps."""
    env = np.zeros(n)
    for s, m in zip(starts.astype(int), lengths.astype(int)):
        m = max(1, min(m, n - s))
        r = max(1, min(int(ramp_s * sr), m // 2))
        seg = np.ones(m)
        ramp = np.sin(0.5 * np.pi * (np.arange(r) + 0.5) / r) ** 2
        seg[:r] *= ramp
        seg[m - r:] *= ramp[::-1]
        env[s:s + m] = np.maximum(env[s:s + m], seg)
    return env


def _fade(x: np.ndarray, sr: int) -> np.ndarray:
    r = max(1, min(int(_RAMP_S * sr), len(x) // 4))
    ramp = np.sin(0.5 * np.pi * (np.arange(r) + 0.5) / r) ** 2
    x[:r] *= ramp
    x[len(x) - r:] *= ramp[::-1]
    return x


def _fit_bursts(n: int, burst: int, period: int) -> tuple[np.ndarray, int]:
    """Starts of bursts of ``burst`` samples, the first at 0 and the last ending at ``n``.

    The spacing is stretched (never shrunk below ``period``) so the event fills its span
    exactly and its strong label is tight at both ends. A span too short for two bursts
    holds one, stretched by at most 1.5; a little longer, two shortened ones at the ends,
    so a gated sound stays gated. Returns the starts and the (possibly new) burst length.
    """
    count = (n - burst) // max(period, 1) + 1
    if n <= 1.5 * burst:
        return np.zeros(1, dtype=int), n
    if count == 1:
        burst, count = min(burst, int(0.4 * n)), 2
    return np.round(np.linspace(0, n - burst, count)).astype(int), burst


# ---- the sound classes: each takes (rng, n samples, sample rate) -> float64 (n,) -----------


def _siren(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # a slow "wail" or a fast "yelp": the pitch swings on a sine LFO
    f0 = rng.uniform(600, 1100)
    depth = rng.uniform(0.2, 0.45) * f0
    rate = rng.uniform(0.3, 1.5) if rng.random() < 0.5 else rng.uniform(3.0, 7.0)
    t = np.arange(n) / sr
    freq = f0 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    return _harmonic_tone(_phase(freq, n, sr, rng), freq, (1.0, 0.35, 0.15), sr)


def _alarm(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # square-ish beeps (odd harmonics) gated on and off
    f0 = rng.uniform(700, 1400)
    period = int(rng.uniform(0.12, 0.4) * sr)
    on = int(rng.uniform(0.35, 0.65) * period)
    starts, on = _fit_bursts(n, on, period)
    tone = _harmonic_tone(_phase(f0, n, sr, rng), f0, (1.0, 0, 0.33, 0, 0.2), sr)
    return tone * _gate(n, sr, starts, np.full(len(starts), on))


def _engine(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # low harmonic hum, slowly drifting pitch, amplitude wobble, and a little rumble
    f0 = rng.uniform(35, 90)
    t = np.arange(n) / sr
    freq = f0 * (1 + 0.03 * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t))
    k = np.arange(1, 31)
    weights = k ** -rng.uniform(0.7, 1.2) * rng.uniform(0.5, 1.0, len(k))
    hum = _harmonic_tone(_phase(freq, n, sr, rng), freq, weights, sr)
    wobble = 1 + rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * rng.uniform(2, 8) * t)
    hum = hum / (np.sqrt(np.mean(hum**2)) + 1e-12)
    return hum * wobble + 0.15 * _band_noise(rng, n, sr, 30, 400)


def _rain(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # a band of hiss plus droplets: random impulses ringing at a few kHz
    lo, hi = rng.uniform(800, 2000), rng.uniform(4000, 7000)
    drop_hz, decay = rng.uniform(2000, 5000), rng.uniform(0.0008, 0.002)
    count = rng.poisson(rng.uniform(15, 60) * n / sr)
    where = rng.integers(0, n, count)
    amps = rng.uniform(0.5, 2.0, count) * rng.choice([-1.0, 1.0], count)
    bed = _band_noise(rng, n, sr, lo, hi)
    impulses = np.zeros(n)
    np.add.at(impulses, where, amps)
    tk = np.arange(int(0.008 * sr)) / sr
    ring = np.exp(-tk / decay) * np.sin(2 * np.pi * drop_hz * tk)
    return 0.5 * bed + 4.0 * np.convolve(impulses, ring)[:n]


def _clicks(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # a regular train of very short broadband ticks
    period = int(sr / rng.uniform(4, 15))
    tick = max(1, min(int(rng.uniform(0.002, 0.004) * sr), n))
    decay = rng.uniform(0.0003, 0.001)
    starts, tick = _fit_bursts(n, tick, period)
    kernel = rng.standard_normal(tick) * np.exp(-np.arange(tick) / (decay * sr))
    x = np.zeros(n)
    for s in starts:
        x[s:s + tick] += kernel * rng.uniform(0.6, 1.0)
    return x


def _bark(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # harmonic bursts whose pitch drops fast, with a little breath noise
    burst = int(rng.uniform(0.08, 0.18) * sr)
    period = burst + int(rng.uniform(0.08, 0.25) * sr)
    starts, burst = _fit_bursts(n, burst, period)
    f_start = rng.uniform(450, 900)
    drop = rng.uniform(0.5, 0.7)
    x = np.zeros(n)
    t = np.arange(burst) / sr
    span = burst / sr
    weights = [1.0, 0.8, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1, 0.06, 0.04]
    for s in starts:
        freq = f_start * rng.uniform(0.9, 1.1) * drop ** (t / span)
        voiced = _harmonic_tone(_phase(freq, burst, sr, rng), freq, weights, sr)
        breath = 0.3 * _band_noise(rng, burst, sr, 500, 3000)
        env = (1 - np.exp(-t / 0.004)) * np.exp(-1.5 * t / span)
        x[s:s + burst] += (voiced + breath) * env
    return x


def _whistle(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # a pure high tone gliding between two pitches, with slight vibrato
    f1 = rng.uniform(2500, 5000)
    f2 = float(np.clip(f1 * 2 ** rng.uniform(-0.7, 0.7), 2000, 6500))
    t = np.arange(n) / sr
    glide = f1 + (f2 - f1) * (0.5 - 0.5 * np.cos(np.pi * t / max(t[-1], 1e-9)))
    freq = glide * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(5, 7) * t))
    return np.sin(_phase(freq, n, sr, rng))


def _babble(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    # speech-like: a pulse train (harmonics of a moving f0) shaped by formants that change
    # every syllable, amplitude-modulated at the syllable rate
    f0_base = rng.uniform(100, 230)
    syl_rate = rng.uniform(3, 6)
    t = np.arange(n) / sr
    f0 = f0_base * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t
                                     + rng.uniform(0, 2 * np.pi)))
    n_syl = math.ceil(t[-1] * syl_rate) + 2
    centres = (np.arange(n_syl) - 0.5) / syl_rate
    formants = [  # (targets per syllable, bandwidth Hz, gain)
        (rng.uniform(300, 850, n_syl), 80.0, 1.0),
        (rng.uniform(900, 2300, n_syl), 100.0, 0.6),
        (rng.uniform(2400, 3000, n_syl), 150.0, 0.3),
    ]
    tracks = [(np.interp(t, centres, targets), bw, g) for targets, bw, g in formants]
    phase = _phase(f0, n, sr, rng)
    x = np.zeros(n)
    for k in range(1, int(4000 / f0_base) + 1):
        fk = k * f0
        amp = sum(g / (1 + ((fk - track) / bw) ** 2) for track, bw, g in tracks)
        x += amp * np.sin(k * phase) * (fk < 0.45 * sr) / k**0.3
    am = 0.5 - 0.5 * np.cos(2 * np.pi * syl_rate * t + rng.uniform(0, 2 * np.pi))
    return x * (0.1 + 0.9 * am**1.5)


_GENERATORS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "siren": _siren, "alarm": _alarm, "engine": _engine, "rain": _rain,
    "clicks": _clicks, "bark": _bark, "whistle": _whistle, "babble": _babble,
}
assert tuple(_GENERATORS) == CLASSES


# ---- public rendering ------------------------------------------------------------------------


def _check_rate(sample_rate: int) -> None:
    if int(sample_rate) != sample_rate or sample_rate < _MIN_RATE:
        raise ValueError(f"sample_rate must be an integer >= {_MIN_RATE} Hz, got {sample_rate}")


def _render(name: str, rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    x = _fade(_GENERATORS[name](rng, n, sr), sr)
    peak = np.max(np.abs(x))
    gain = 10 ** (rng.uniform(*_LOUDNESS_DB) / 20)
    return (x * (gain / peak if peak > 0 else 0.0)).astype(np.float32)


def render_event(name: str, rng: np.random.Generator, sample_rate: int = 16000,
                 duration: float | None = None) -> np.ndarray:
    """One sound event of class ``name``: float32 mono, peak between -14 and -1 dBFS.

    Pitch, envelope and loudness are drawn from ``rng``; so is the duration unless given
    (each class has its own natural range, e.g. 0.2-1.2 s for ``bark``). The event's energy
    spans the whole array, so placing it at sample ``s`` makes a strong label that starts at
    ``s`` and ends at ``s + len``.

        >>> x = render_event("whistle", np.random.default_rng(1), 16000, duration=0.25)
        >>> len(x), bool(np.abs(x).max() < 1)
        (4000, True)
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown sound class {name!r}; classes: {', '.join(CLASSES)}")
    _check_rate(sample_rate)
    if duration is None:
        duration = rng.uniform(*_DURATION[name])
    n = round(duration * sample_rate)
    if n < 1:
        raise ValueError(f"duration must be at least one sample, got {duration} s")
    return _render(name, rng, int(sample_rate), n)


def _background(rng: np.random.Generator, n: int, sr: int, kind: str | None) -> np.ndarray | None:
    kinds = {"noise": 1.0, "pink": 1.0, "brown": 2.0, "white": 0.0}
    if kind is None or kind == "none":
        return None
    if kind not in kinds:
        raise ValueError(f"unknown background {kind!r}; choose one of {sorted(kinds)} or 'none'")
    return _colored_noise(rng, n, sr, kinds[kind])


def _place(mix: np.ndarray, name: str, rng: np.random.Generator, sr: int,
           seconds: float) -> tuple[int, int, float]:
    """Render ``name`` for about ``seconds`` at a random onset inside ``mix`` and add it.

    Onset and length are whole milliseconds (exactly whole samples at 16 or 32 kHz), so the
    3-decimal strong labels are exact. Returns (start, stop) in samples and the event power.
    """
    total_ms = int(len(mix) * 1000 // sr)
    dur_ms = min(max(1, round(seconds * 1000)), total_ms)
    onset_ms = int(rng.integers(0, total_ms - dur_ms + 1))
    start = round(onset_ms * sr / 1000)
    stop = min(len(mix), round((onset_ms + dur_ms) * sr / 1000))
    event = _render(name, rng, sr, stop - start)
    mix[start:stop] += event
    return start, stop, float(np.mean(event.astype(np.float64) ** 2))


def _finish(mix: np.ndarray, noise: np.ndarray | None, power: float, snr_db: float) -> np.ndarray:
    if noise is not None:
        mix += noise * math.sqrt(power / 10 ** (snr_db / 10))
    peak = np.max(np.abs(mix))
    if peak > 0.99:  # overlapping events plus noise: scale the whole mix, labels stay valid
        mix *= 0.99 / peak
    return mix.astype(np.float32)


def render_soundscape(rng: np.random.Generator, sample_rate: int = 16000, seconds: float = 10.0,
                      n_events: int | tuple[int, int] = _N_EVENTS,
                      snr_db: float | tuple[float, float] = 10.0,
                      background: str | None = "noise") -> tuple[np.ndarray, list[Event]]:
    """A mixture of random events over background noise, with its exact strong labels.

    ``n_events`` is a count or an inclusive (low, high) range; events may overlap. The
    background (``"noise"``/``"pink"``, ``"brown"``, ``"white"`` or ``"none"``) sits
    ``snr_db`` (a value or a (low, high) range) below the mean power of the events.
    Returns float32 audio of ``round(seconds * sample_rate)`` samples and the events as
    ``(onset, offset, label)`` in seconds, sorted by onset; each onset/offset is the exact
    sample where the event's audio starts/stops, divided by the sample rate.

        >>> audio, events = render_soundscape(np.random.default_rng(3), 16000, 4.0,
        ...                                   n_events=2, background="none")
        >>> len(events), audio.dtype
        (2, dtype('float32'))
    """
    _check_rate(sample_rate)
    sr = int(sample_rate)
    n = round(seconds * sr)
    if n < sr // 1000:
        raise ValueError(f"a soundscape needs at least 1 ms, got {seconds} s")
    lo, hi = (n_events, n_events) if isinstance(n_events, int) else n_events
    if not 0 <= lo <= hi:
        raise ValueError(f"n_events must be a count or a (low, high) range, got {n_events}")
    mix = np.zeros(n)
    events: list[Event] = []
    powers = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        name = CLASSES[int(rng.integers(len(CLASSES)))]
        start, stop, power = _place(mix, name, rng, sr, rng.uniform(*_DURATION[name]))
        events.append((start / sr, stop / sr, name))
        powers.append(power)
    snr = rng.uniform(*snr_db) if isinstance(snr_db, (tuple, list)) else float(snr_db)
    noise = _background(rng, n, sr, background)
    power = float(np.mean(powers)) if powers else 10 ** (-30 / 10)  # empty scape: -30 dB noise
    return _finish(mix, noise, power, snr), sorted(events)


def _render_clip(name: str, rng: np.random.Generator, sr: int, seconds: float,
                 snr_db: float) -> tuple[np.ndarray, Event]:
    """A clip of ``seconds`` holding one event of ``name`` over light pink noise."""
    mix = np.zeros(round(seconds * sr))
    length = min(rng.uniform(*_DURATION[name]), rng.uniform(0.4, 0.95) * seconds)
    start, stop, power = _place(mix, name, rng, sr, length)
    snr = snr_db + rng.uniform(*_CLIP_BACKGROUND_DB)
    return _finish(mix, _colored_noise(rng, len(mix), sr, 1.0), power, snr), (
        start / sr, stop / sr, name)


# ---- writing the data set --------------------------------------------------------------------


def _write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    # to a hidden temporary beside the target, then an atomic rename: never a half-written wav
    with atomic_path(path, sync=False) as tmp:  # thousands of clips: no fsync each
        sf.write(tmp, audio, sr, subtype="PCM_16", format="WAV")


def _splits(n: int) -> list[str]:
    """About 70/15/15 train/valid/test over ``n`` items in order; valid and test get at least
    one item each as soon as there are enough items for that."""
    n_test = 0 if n < 2 else max(1, int(_SPLIT_SHARE["test"] * n + 0.5))
    n_valid = 0 if n < 3 else max(1, int(_SPLIT_SHARE["valid"] * n + 0.5))
    return ["train"] * (n - n_valid - n_test) + ["valid"] * n_valid + ["test"] * n_test


def _item_rng(seed: int, *key: int) -> np.random.Generator:
    # one independent stream per file: adding clips or soundscapes leaves the others unchanged
    return np.random.default_rng([seed, *key])


def synthesize(out_dir: str | Path, clips_per_class: int = 30, clip_seconds: float = 1.0,
               soundscapes: int = 20, soundscape_seconds: float = 10.0,
               sample_rate: int = 16000, snr_db: float = 10.0, seed: int = 0,
               progress: Callable[[int, int], None] | None = None) -> Path:
    """Write the procedural data set to ``out_dir`` (layout in the module docstring).

    Every file is written to a temporary and renamed, and ``synth.json`` comes last, so an
    interrupted run never leaves a half-written wav or a folder that :func:`load` accepts.
    The same arguments give byte-identical files. ``progress(done, total)`` is called after
    each audio file. Returns ``out_dir``.

        >>> import tempfile
        >>> root = synthesize(Path(tempfile.mkdtemp()) / "synth", clips_per_class=3,
        ...                   clip_seconds=0.25, soundscapes=2, soundscape_seconds=2)
        >>> sorted(p.name for p in root.iterdir())
        ['clips', 'clips.csv', 'soundscapes', 'soundscapes.csv', 'soundscapes.tsv', 'synth.json']
        >>> m = load(str(root))
        >>> m.labels[:3], len(m), m.split_sizes()
        (['siren', 'alarm', 'engine'], 24, {'train': 8, 'valid': 8, 'test': 8})
    """
    _check_rate(sample_rate)
    if clips_per_class < 0 or soundscapes < 0:
        raise ValueError("clips_per_class and soundscapes must be >= 0")
    if clip_seconds < 0.05 or soundscape_seconds < 0.05:
        raise ValueError("clip_seconds and soundscape_seconds must be at least 0.05 s")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    sr, seed = int(sample_rate), int(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total, done = len(CLASSES) * clips_per_class + soundscapes, 0

    clip_items = []
    for c, name in enumerate(CLASSES):
        for i, split in enumerate(_splits(clips_per_class)):
            audio, _ = _render_clip(name, _item_rng(seed, 1, c, i), sr, clip_seconds, snr_db)
            rel = f"clips/{name}/{name}_{i:04d}.wav"
            _write_wav(out / rel, audio, sr)
            clip_items.append(Item(rel, (name,), split=split, fold=i % _N_FOLDS + 1))
            done += 1
            if progress:
                progress(done, total)

    scape_items, tsv = [], io.StringIO()
    tsv.write("\t".join(_TSV_HEADER) + "\n")
    for i, split in enumerate(_splits(soundscapes)):
        audio, events = render_soundscape(_item_rng(seed, 2, i), sr, soundscape_seconds,
                                          _N_EVENTS, snr_db, "noise")
        fname = f"scape_{i:04d}.wav"
        _write_wav(out / "soundscapes" / fname, audio, sr)
        for onset, offset, label in events:
            tsv.write(f"{fname}\t{onset:.3f}\t{offset:.3f}\t{label}\n")
        labels = tuple(sorted({label for _, _, label in events}))
        scape_items.append(Item(f"soundscapes/{fname}", labels, split=split))
        done += 1
        if progress:
            progress(done, total)

    Manifest(clip_items, list(CLASSES), name="synth").write(out / "clips.csv")
    Manifest(scape_items, list(CLASSES), multi_label=True,
             name="synth-soundscapes").write(out / "soundscapes.csv")
    write_text(out / "soundscapes.tsv", tsv.getvalue())
    params = {
        "format": "earmark-synth", "version": 1, "classes": list(CLASSES),
        "sample_rate": sr, "seed": seed, "clips_per_class": clips_per_class,
        "clip_seconds": clip_seconds, "clip_snr_db": [snr_db + d for d in _CLIP_BACKGROUND_DB],
        "soundscapes": soundscapes, "soundscape_seconds": soundscape_seconds,
        "snr_db": snr_db, "n_events": list(_N_EVENTS), "background": "pink",
        "split": {"train": 1 - sum(_SPLIT_SHARE.values()), **_SPLIT_SHARE},
        "folds": _N_FOLDS,
    }
    write_text(out / "synth.json", json.dumps(params, indent=2) + "\n")
    return out


# ---- reading it back: the synth:DIR data SPEC ------------------------------------------------


def _root_of(root: str | Path) -> Path:
    path = Path(os.path.abspath(root))
    return path.parent if path.suffix.lower() in (".csv", ".json", ".tsv") else path


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(path, f"not an earmark synth folder (no {path.name}); "
                              f"create one with `earmark synth {path.parent}`")
    return path


def _classes(root: Path) -> list[str]:
    path = _require(root / "synth.json")
    try:
        classes = json.loads(path.read_text())["classes"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(path, f"unreadable synth.json ({err!r})") from err
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise DataError(path, "'classes' must be a list of class names")
    return classes


def _read_items(path: Path, root: Path, vocabulary: list[str]) -> list[Item]:
    known = set(vocabulary)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "labels", "split"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(path, f"missing column(s) {sorted(missing)}")
        items = []
        for line, row in enumerate(reader, start=2):
            labels = tuple(lab for lab in (row["labels"] or "").split(";") if lab)
            unknown = [lab for lab in labels if lab not in known]
            if not labels or unknown or row["split"] not in SPLITS:
                why = (f"unknown label(s) {unknown}" if unknown else
                       "no labels" if not labels else f"split {row['split']!r} not in {SPLITS}")
                raise DataError(path, f"line {line}: {why}")
            audio = root / row["path"]
            if not audio.is_file():
                raise DataError(audio, f"listed in {path.name} line {line} but missing")
            onset, offset, fold = row.get("onset"), row.get("offset"), row.get("fold")
            items.append(Item(str(audio), labels, float(onset) if onset else None,
                              float(offset) if offset else None, row["split"],
                              int(fold) if fold else None))
    return items


def load(root: str) -> Manifest:
    """The ``synth:DIR`` SPEC: the event clips of an ``earmark synth`` folder, single-label.

    The vocabulary is the class list of ``synth.json`` in its order; paths come back
    absolute; splits and folds as written. ``root`` may also name ``DIR/soundscapes.csv``,
    which gives :func:`load_soundscapes` instead.

        >>> import tempfile
        >>> root = synthesize(Path(tempfile.mkdtemp()), clips_per_class=1, clip_seconds=0.25,
        ...                   soundscapes=0)
        >>> m = load(str(root))
        >>> m.labels[0], m.items[0].labels, m.multi_label
        ('siren', ('siren',), False)
        >>> Path(m.items[0].path).relative_to(root).as_posix()
        'clips/siren/siren_0000.wav'
    """
    if Path(root).name == "soundscapes.csv":
        return load_soundscapes(root)
    base = _root_of(root)
    clips = _require(base / "clips.csv")
    labels = _classes(base)
    items = _read_items(clips, base, labels)
    return Manifest(items, labels, multi_label=False, name="synth",
                    meta={"root": str(base), "source": str(clips)})


def load_soundscapes(root: str | Path) -> Manifest:
    """The soundscapes of an ``earmark synth`` folder: multi-label, with strong labels.

    ``meta["events"]`` maps each absolute soundscape path to its ``(onset, offset, label)``
    events from ``soundscapes.tsv``.

        >>> import tempfile
        >>> root = synthesize(Path(tempfile.mkdtemp()), clips_per_class=0, soundscapes=1,
        ...                   soundscape_seconds=2)
        >>> m = load_soundscapes(root)
        >>> m.items[0].labels, m.multi_label
        (('alarm', 'bark', 'rain', 'siren'), True)
        >>> m.meta["events"][m.items[0].path]
        [(0.0, 2.0, 'alarm'), (0.0, 2.0, 'rain'), (0.0, 2.0, 'siren'), (0.513, 1.392, 'bark')]
    """
    base = _root_of(root)
    manifest_path = _require(base / "soundscapes.csv")
    tsv = _require(base / "soundscapes.tsv")
    labels = _classes(base)
    items = _read_items(manifest_path, base, labels)
    events: dict[str, list[Event]] = {it.path: [] for it in items}
    with open(tsv, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or tuple(rows[0]) != _TSV_HEADER:
        raise DataError(tsv, f"expected the header {chr(9).join(_TSV_HEADER)!r}")
    for line, row in enumerate(rows[1:], start=2):
        try:
            fname, onset, offset, label = row
            event = (float(onset), float(offset), label)
        except ValueError as err:
            raise DataError(tsv, f"line {line}: expected 4 fields filename, onset, offset, "
                                 f"event_label ({err})") from err
        path = str(base / "soundscapes" / fname)
        if path not in events or label not in labels:
            raise DataError(tsv, f"line {line}: {fname!r} or {label!r} is not in "
                                 f"{manifest_path.name} / synth.json")
        events[path].append(event)
    return Manifest(items, labels, multi_label=True, name="synth-soundscapes",
                    meta={"root": str(base), "source": str(manifest_path), "events": events})
