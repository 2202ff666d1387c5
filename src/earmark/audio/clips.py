"""Clips of a fixed length, and segments of a file: what a model is fed, whoever feeds it.

:func:`fit_length` makes a waveform exactly as long as a model's clip; :func:`load_segment`
decodes only the seconds of a file an event or a crop needs.
"""

from __future__ import annotations

import math

import numpy as np
import soundfile as sf
import soxr
import torch

from earmark.audio.io import RESAMPLE_QUALITY, audio_info, load_audio
from earmark.audio.packed import member_of
from earmark.errors import AudioError

FIT_MODES = ("crop", "pad", "repeat")


def fit_length(wave: torch.Tensor, n: int, mode: str = "crop",
               rng: np.random.Generator | None = None) -> torch.Tensor:
    """Make the last axis of ``wave`` exactly ``n`` samples long: (..., T) -> (..., n).

    - ``crop``: a window of ``n`` samples, at a random position when ``rng`` is given, else
      centred. A clip shorter than ``n`` is thus placed at a random (or central) position
      among zeros.
    - ``pad``: the first ``n`` samples; a shorter clip is followed by zeros.
    - ``repeat``: a shorter clip is tiled until it fills ``n`` samples, starting at a random
      point of the clip when ``rng`` is given, else at its start; a longer one as ``crop``.

    >>> fit_length(torch.arange(1.0, 4.0), 5, "pad")
    tensor([1., 2., 3., 0., 0.])
    >>> fit_length(torch.arange(1.0, 4.0), 5, "repeat")
    tensor([1., 2., 3., 1., 2.])
    >>> fit_length(torch.arange(1.0, 6.0), 3, "crop")
    tensor([2., 3., 4.])
    """
    if mode not in FIT_MODES:
        raise ValueError(f"fit mode {mode!r} is not one of {', '.join(FIT_MODES)}")
    length = wave.shape[-1]
    if length == n:
        return wave
    if length == 0:
        return wave.new_zeros(*wave.shape[:-1], n)
    if mode == "pad" or (mode == "repeat" and length < n):
        if mode == "pad":
            start, source = 0, wave
        else:
            start = 0 if rng is None else int(rng.integers(length))
            source = wave.repeat(*([1] * (wave.dim() - 1)), math.ceil((start + n) / length))
        out = source[..., start:start + n]
        return torch.nn.functional.pad(out, (0, n - out.shape[-1]))
    # crop: a long clip's window starts `shift` samples in; a short clip starts `shift` in
    span = abs(length - n)
    shift = span // 2 if rng is None else int(rng.integers(span + 1))
    if length > n:
        return wave[..., shift:shift + n]
    return torch.nn.functional.pad(wave, (shift, n - length - shift))


def load_segment(path: str, sample_rate: int, onset: float | None = None,
                 offset: float | None = None) -> torch.Tensor:
    """Mono float32 samples (N,) of ``path`` between ``onset`` and ``offset`` seconds, resampled.

    Without onset and offset this is :func:`earmark.audio.io.load_audio`; with them only the
    segment is decoded, so a short event in an hour-long file costs a short read.

    >>> load_segment("street.flac", 16000, onset=61.5, offset=63.0).shape
    torch.Size([24000])
    """
    if onset is None and offset is None:
        return load_audio(path, sample_rate=sample_rate)[0]
    if member_of(path) is not None:  # a clip in a shard or pack: read whole, then cut
        wave = load_audio(path, sample_rate=sample_rate)[0]
        start = max(0, round((onset or 0.0) * sample_rate))
        stop = wave.shape[-1] if offset is None else min(wave.shape[-1], round(offset * sample_rate))
        if start >= stop:
            raise AudioError(path, f"segment {onset}-{offset} s is empty or beyond the end of the "
                             f"clip ({wave.shape[-1] / sample_rate:.3f} s)")
        return wave[start:stop].clone()
    info = audio_info(path)  # raises AudioError for a missing or unreadable file
    start = max(0, round((onset or 0.0) * info.sample_rate))
    stop = info.frames if offset is None else min(info.frames, round(offset * info.sample_rate))
    if start >= stop:
        raise AudioError(path, f"segment {onset}-{offset} s is empty or beyond the end of the "
                         f"file ({info.duration:.3f} s)")
    try:
        x, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise AudioError(path, f"cannot decode audio: {err}") from err
    if not np.isfinite(x).all():
        raise AudioError(path, f"contains NaN or infinite samples between {onset} and {offset} s")
    x = x.mean(axis=1, dtype=np.float32)  # (frames,)
    if info.sample_rate != sample_rate:
        x = soxr.resample(x, info.sample_rate, sample_rate, quality=RESAMPLE_QUALITY)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
