"""A map-style dataset of fixed-length clips and their targets, for training and evaluation.

    >>> import tempfile, numpy as np, soundfile as sf
    >>> from pathlib import Path
    >>> from earmark.data.sources import from_spec
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["3_theo_10", "5_theo_11", "5_theo_0"]:  # FSDD names: digit_speaker_take
    ...     sf.write(root / f"{name}.wav", np.zeros(4000), 8000)  # half a second at 8 kHz
    >>> ds = ClipDataset(from_spec(f"fsdd:{root}").split("train"), 16000, 1.0, train=True)
    >>> len(ds)
    2
    >>> wave, target = ds[0]  # resampled to 16 kHz and padded to one second
    >>> wave.shape, target
    (torch.Size([16000]), tensor([0., 0., 0., 1., 0., 0., 0., 0., 0., 0.]))

Randomness (the crop position when ``train``) comes from a generator seeded with
``(seed, epoch, index)``: an item's clip depends on nothing else, so it is the same whatever
the number of DataLoader workers or the order they run in. Call :meth:`ClipDataset.set_epoch`
before each epoch (before iterating the loader) for fresh crops. The epoch lives in shared
memory, so the call also reaches workers kept alive with ``persistent_workers=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from earmark.audio.clips import FIT_MODES, fit_length, load_segment
from earmark.data.labels import encode, targets
from earmark.data.manifest import Manifest


class ClipDataset(torch.utils.data.Dataset):
    """``ds[i] -> (wave (clip_samples,), target (C,))``, both float32.

    ``target`` is one-hot or multi-hot over ``manifest.labels``. Each item is read at
    ``sample_rate`` (mono), only between its onset and offset when it has them, then fitted
    to ``clip_seconds`` with :func:`fit_length` (``fit``): at random positions when
    ``train``, deterministically (centred) otherwise. Bad files raise
    :class:`earmark.errors.AudioError` naming the file.

    >>> import tempfile, soundfile as sf
    >>> from earmark.data.manifest import Item
    >>> path = f"{tempfile.mkdtemp()}/beep.wav"
    >>> sf.write(path, np.sin(np.arange(24000) / 5), 16000)  # 1.5 s
    >>> manifest = Manifest([Item(path, ("beep",))], ["beep"])
    >>> ds = ClipDataset(manifest, 16000, clip_seconds=1.0, train=True, seed=0)
    >>> ds.set_epoch(3)
    >>> wave, target = ds[0]  # a random second of the file
    >>> wave.shape, target
    (torch.Size([16000]), tensor([1.]))
    >>> torch.equal(ds[0][0], wave)  # the same crop for the same seed, epoch and index
    True
    >>> ds.set_epoch(4)
    >>> torch.equal(ds[0][0], wave)
    False

    ``groups``: a number per item (its speaker's or voice's, -1 for none), returned as a
    third element, ``ds[i] -> (wave, target, group)``, for training that needs to know it.

    >>> ClipDataset(manifest, 16000, clip_seconds=1.0, groups=[4])[0][2]
    4
    """

    def __init__(self, manifest: Manifest, sample_rate: int, clip_seconds: float,
                 train: bool = False, fit: str = "crop", seed: int = 0, cache: bool = False,
                 groups: Sequence[int] | None = None):
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
        if groups is not None and len(groups) != len(manifest.items):
            raise ValueError(f"{len(groups)} group numbers for {len(manifest.items)} items")
        self.groups = None if groups is None else [int(g) for g in groups]

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

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        item = self.manifest.items[i]
        if self._cache is not None and i in self._cache:
            wave = self._cache[i]
        else:
            wave = load_segment(item.path, self.sample_rate, item.onset, item.offset)
            if self._cache is not None:
                self._cache[i] = wave
        wave = fit_length(wave, self.clip_samples, self.fit, self._rng(i))
        if self.groups is not None:
            return wave.float(), encode(item.labels, self._index), self.groups[i]
        return wave.float(), encode(item.labels, self._index)
