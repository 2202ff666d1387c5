"""From an engine's samples to a clip like a recorded one: pitch, pseudo-speaker, sample rate,
silence trimmed, level set.

A pseudo-speaker is made by resampling: samples read at ``vocal_tract`` times their rate play
faster, which scales the formants (the vocal tract's resonances: VTLP done on the waveform)
and F0 by that factor; the engine speaks the take ``vocal_tract`` times slower beforehand, so
the tempo stays. F0 thus moves with the formants, as it tends to between a larger and a
smaller speaker.
"""

from __future__ import annotations

import numpy as np
import soxr
import torch

from earmark.audio.augment import pitch_shift


def shift_pitch(wave: np.ndarray, semitones: float) -> np.ndarray:
    """A phase-vocoder pitch shift at the same length (for engines without a pitch control)."""
    if abs(semitones) < 1e-6:
        return wave
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)).unsqueeze(0)
    return pitch_shift(x, torch.tensor([semitones]))[0].numpy()


def to_speaker(wave: np.ndarray, sample_rate: int, vocal_tract: float,
               out_rate: int) -> np.ndarray:
    """``wave`` played ``vocal_tract`` times faster (formants and F0 scaled), at ``out_rate``.

    >>> x = np.zeros(16000, dtype=np.float32)
    >>> to_speaker(x, 16000, 1.25, 8000).shape  # 1 s played 1.25 times faster, at 8 kHz
    (6400,)
    """
    return soxr.resample(wave.astype(np.float32), sample_rate * vocal_tract, out_rate,
                         quality="HQ").astype(np.float32)


def trim(wave: np.ndarray, sample_rate: int, below_peak_db: float = 35.0,
         margin: float = 0.02) -> np.ndarray:
    """``wave`` without its leading and trailing silence: 10 ms frames more than
    ``below_peak_db`` under the loudest one (or under -60 dBFS) go, less a ``margin`` in s.

    >>> x = np.zeros(8000, dtype=np.float32); x[3200:5200] = 0.5
    >>> len(trim(x, 8000))  # 0.25 s of sound and 20 ms either side
    2320
    """
    hop = max(1, sample_rate // 100)
    frames = len(wave) // hop
    if frames == 0:
        return wave[:0]
    energy = (wave[: frames * hop].reshape(frames, hop).astype(np.float64) ** 2).mean(axis=1)
    db = 10 * np.log10(energy + 1e-12)
    loud = np.flatnonzero(db > max(db.max() - below_peak_db, -60.0))
    if len(loud) == 0:
        return wave[:0]
    pad = int(margin * sample_rate)
    return wave[max(0, loud[0] * hop - pad): min(len(wave), (loud[-1] + 1) * hop + pad)]


def set_level(wave: np.ndarray, rms_db: float, peak: float = 0.97) -> np.ndarray:
    """``wave`` scaled to an RMS of ``rms_db`` dBFS, less where its peak would pass ``peak``.

    >>> x = set_level(np.sin(np.arange(8000) / 5).astype(np.float32), -20.0)
    >>> round(float(20 * np.log10(np.sqrt(np.mean(x ** 2)))), 1)
    -20.0
    """
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2)))
    if rms == 0.0:
        return wave
    gain = min(10 ** (rms_db / 20) / rms, peak / float(np.abs(wave).max()))
    return (wave * gain).astype(np.float32)
