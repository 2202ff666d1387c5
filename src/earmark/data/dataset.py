"""A map-style dataset of fixed-length clips and their targets, for training and evaluation.

    >>> from earmark.data.sources import from_spec
    >>> ds = ClipDataset(from_spec("fsdd:data/fsdd").split("train"), 16000, 1.0, train=True)
    ... # doctest: +SKIP
    >>> wave, target = ds[0]  # doctest: +SKIP
    >>> wave.shape, target.shape  # doctest: +SKIP
    (torch.Size([16000]), torch.Size([10]))

Randomness (the crop position when ``train``) comes from a generator seeded with
``(seed, epoch, index)``: an item's clip depends on nothing else, so it is the same whatever
the number of DataLoader workers or the order they run in. Call :meth:`ClipDataset.set_epoch`
before each epoch (before iterating the loader) for fresh crops. The epoch lives in shared
memory, so the call also reaches workers kept alive with ``persistent_workers=True``.
"""

from __future__ import annotations

import math

import numpy as np
import soundfile as sf
import soxr
import torch

from earmark.audio.io import RESAMPLE_QUALITY, audio_info, load_audio
from earmark.audio.packed import member_of
from earmark.data.labels import encode, targets
from earmark.data.manifest import Manifest
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

    >>> load_segment("street.flac", 16000, onset=61.5, offset=63.0).shape  # doctest: +SKIP
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


class ClipDataset(torch.utils.data.Dataset):
    """``ds[i] -> (wave (clip_samples,), target (C,))``, both float32.

    ``target`` is one-hot or multi-hot over ``manifest.labels``. Each item is read at
    ``sample_rate`` (mono), only between its onset and offset when it has them, then fitted
    to ``clip_seconds`` with :func:`fit_length` (``fit``): at random positions when
    ``train``, deterministically (centred) otherwise. Bad files raise
    :class:`earmark.errors.AudioError` naming the file.

    >>> ds = ClipDataset(manifest, 16000, clip_seconds=1.0, train=True, seed=0)  # doctest: +SKIP
    >>> ds.set_epoch(3)  # doctest: +SKIP
    """

    def __init__(self, manifest: Manifest, sample_rate: int, clip_seconds: float,
                 train: bool = False, fit: str = "crop", seed: int = 0, cache: bool = False):
        if fit not in FIT_MODES:
            raise ValueError(f"fit mode {fit!r} is not one of {', '.join(FIT_MODES)}")
        self.manifest = manifest
        self.sample_rate = int(sample_rate)
        self.clip_samples = round(clip_seconds * self.sample_rate)
        if self.clip_samples < 1:
            raise ValueError(f"clip_seconds={clip_seconds} is no samples at {sample_rate} Hz")
        self.train = train
        self.fit = fit
        self.seed = seed
        # shared with DataLoader workers, persistent ones included (see the module docstring)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._index = manifest.label_index()
        # decoded (and resampled) segments, kept when ``cache``: small sets are then read once
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.manifest.items)

    @property
    def labels(self) -> list[str]:
        return self.manifest.labels

    @property
    def targets(self) -> torch.Tensor:
        """(N, C) targets of all items, for samplers and metrics."""
        return targets(self.manifest)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random crops ``__getitem__`` returns."""
        self._epoch.fill_(int(epoch))

    def _rng(self, i: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, self.epoch, i]) if self.train else None

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.manifest.items[i]
        if self._cache is not None and i in self._cache:
            wave = self._cache[i]
        else:
            wave = load_segment(item.path, self.sample_rate, item.onset, item.offset)
            if self._cache is not None:
                self._cache[i] = wave
        wave = fit_length(wave, self.clip_samples, self.fit, self._rng(i))
        return wave.float(), encode(item.labels, self._index)
