"""Training clips streamed from tar shards: sequential reads, split over nodes and workers.

:class:`ShardStream` reads the shards of a ``shards:`` manifest front to back (no random
access, so networked and object storage keep up) and yields ``(wave, target)`` like
:class:`earmark.data.dataset.ClipDataset`. Every epoch the shards are dealt to *slots*, one
per (rank, DataLoader worker): whole shards, largest first to the slot with the fewest clips,
when there are at least as many shards as slots; otherwise every slot reads all shards and
keeps every ``slots``-th clip. Each slot then yields the same number of clips, ``quota``, a
multiple of the batch size, so every rank runs the same number of full batches and DDP never
waits on a rank that ran out (a slot with fewer clips repeats some of its own, after all of
them).

- ``balanced=False`` (*exact*): each clip once per epoch, plus the repeats that even out the
  slots; ``quota`` is the largest slot's clip count.
- ``balanced=True``: each clip comes ``k`` times, ``k`` drawn from a Poisson law whose mean is
  the clip's :func:`~earmark.data.sampler.balanced_weights` over their mean (rare classes come
  back, frequent ones are thinned), ``quota`` = clips / slots.

With ``teacher_scores`` (the ``psl.json`` of :mod:`earmark.data.scores`) each clip yields a
crop of the stored grid, drawn at random, and the teacher's scores of that crop: pseudo-strong
labels without running the teacher.

A shuffle buffer of ``buffer`` clips mixes the order within a slot. All randomness is seeded
by ``(seed, epoch, slot)``, so a run repeats exactly; :meth:`ShardStream.set_epoch` picks the
epoch (held in shared memory, so persistent workers see it).

The rank and world size are torch.distributed's when it is initialised in the process that
iterates or that started the DataLoader worker, else the ``RANK`` and ``WORLD_SIZE``
environment variables (torchrun sets them), else a single process.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from earmark.data.shards import load, write_shards
    >>> from earmark.data.synth import load as load_synth, synthesize
    >>> root = synthesize(Path(tempfile.mkdtemp()), clips_per_class=2, clip_seconds=0.25,
    ...                   soundscapes=0)  # 8 training clips, one per class
    >>> _ = write_shards(load_synth(str(root)), root / "shards")
    >>> m = load(str(root / "shards"))
    >>> ds = ShardStream(m.split("train"), 16000, 0.25, batch_size=4, balanced=True)
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=4)  # num_workers=4 in training
    >>> len(ds), len(loader)
    (8, 2)
    >>> waves, targets = next(iter(loader))
    >>> waves.shape, targets.shape
    (torch.Size([4, 4000]), torch.Size([4, 8]))
"""

from __future__ import annotations

import math
import tarfile
from collections.abc import Iterator

import numpy as np
import soxr
import torch

from earmark.audio.clips import FIT_MODES, fit_length
from earmark.audio.io import RESAMPLE_QUALITY, check_samples
from earmark.audio.packed import (
    decode_bytes,
    is_audio_member,
    is_url,
    member_of,
    member_path,
    split_member_name,
)
from earmark.data.manifest import Manifest
from earmark.data.sampler import balanced_weights, world
from earmark.data.scores import grid, read_sidecar, sidecar
from earmark.errors import AudioError, DataError


def worker() -> tuple[int, int]:
    """(worker id, workers) of the DataLoader worker this runs in; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def open_tar_stream(path: str) -> tarfile.TarFile:
    """A shard opened for one pass front to back: a file, or an http(s) URL streamed."""
    try:
        if is_url(path):
            import urllib.request

            return tarfile.open(fileobj=urllib.request.urlopen(path, timeout=60), mode="r|")
        return tarfile.open(path)
    except (tarfile.TarError, OSError) as err:
        raise AudioError(path, f"not a readable tar shard ({err})") from None


def deal(counts: list[int], slots: int) -> list[list[int]]:
    """Shard indices per slot: largest first, each to the slot with the fewest clips so far
    (ties to the lower slot), in the given order among equal sizes.

    >>> deal([5, 3, 3, 2, 1], 2)
    [[0, 3], [1, 2, 4]]
    """
    dealt: list[list[int]] = [[] for _ in range(slots)]
    load = [0] * slots
    for shard in sorted(range(len(counts)), key=lambda i: -counts[i]):
        s = min(range(slots), key=lambda j: (load[j], j))
        dealt[s].append(shard)
        load[s] += counts[shard]
    return [sorted(d, key=lambda i: -counts[i]) for d in dealt]


class ShardStream(torch.utils.data.IterableDataset):
    """Streams the items of a ``shards:`` manifest (or of a subset of it, such as its
    training split) as ``(wave (clip_samples,), target (C,))`` (see the module docstring).
    ``len()`` is the clips one rank yields per epoch."""

    def __init__(self, manifest: Manifest, sample_rate: int, clip_seconds: float,
                 batch_size: int = 1, fit: str = "crop", seed: int = 0, buffer: int = 1000,
                 balanced: bool = False, train: bool = True, slots: tuple[int, int] | None = None,
                 teacher_scores: dict | None = None):
        if fit not in FIT_MODES:
            raise ValueError(f"fit mode {fit!r} is not one of {', '.join(FIT_MODES)}")
        shards = manifest.meta.get("shards")
        if not shards:
            raise DataError(manifest.name, "streaming reads a shards: data set")
        self.labels = list(manifest.labels)
        self.sample_rate = int(sample_rate)
        self.clip_samples = round(clip_seconds * self.sample_rate)
        self.batch_size = max(1, int(batch_size))
        self.fit, self.seed, self.buffer = fit, seed, max(1, int(buffer))
        self.balanced, self.train = balanced, train
        # stored teacher scores (earmark.data.scores): yield (crop, its scores) instead
        self.teacher_scores = teacher_scores
        self.workers = None  # DataLoader workers per rank, set by whoever builds the loader
        self._slots = slots  # (rank, world) for tests and tools; None: detect when iterating
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        items = manifest.items
        if not items:
            raise DataError(manifest.name, "no clips to stream")
        # compact per-clip tables (AudioSet has 2M clips): key, shard, labels as CSR
        order = {s["path"]: k for k, s in enumerate(shards)}
        self.shards = [s["path"] for s in shards]
        keys, shard_of = [], np.empty(len(items), dtype=np.int32)
        index = manifest.label_index()
        cols, offsets = [], np.zeros(len(items) + 1, dtype=np.int64)
        for i, it in enumerate(items):
            container, _, key = member_of(it.path) or (None, None, None)
            if container not in order:
                raise DataError(it.path, "is not a clip of the manifest's shards")
            keys.append(key)
            shard_of[i] = order[container]
            cols.extend(index[lab] for lab in it.labels)
            offsets[i + 1] = len(cols)
        self.keys = np.asarray(keys)
        self.label_cols, self.label_offsets = np.asarray(cols, dtype=np.int32), offsets
        self._shard_of = shard_of
        self.per_shard = [np.flatnonzero(shard_of == k) for k in range(len(self.shards))]
        self.total = len(items)
        self.weights = None  # each clip's mean number of draws per epoch, when balanced
        if balanced:
            w = balanced_weights(manifest).double().numpy()
            self.weights = w / w.mean()

    def target(self, i: int) -> torch.Tensor:
        """The (C,) target of clip ``i`` of the split."""
        t = torch.zeros(len(self.labels))
        t[torch.from_numpy(self.label_cols[self.label_offsets[i]:self.label_offsets[i + 1]]
                           ).long()] = 1.0
        return t

    # ---- epochs and slots ------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def _world(self) -> tuple[int, int]:
        return self._slots if self._slots is not None else world()

    def __getstate__(self) -> dict:
        # DataLoader workers of a spawned rank (Lightning's ddp_spawn, torch.multiprocessing)
        # start by unpickling the data set and do not inherit the process group: send them the
        # rank they work for
        state = dict(self.__dict__)
        if state["_slots"] is None and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            state["_slots"] = world()
        return state

    def quota(self, slots: int) -> int:
        """Clips each of ``slots`` slots yields per epoch (a multiple of the batch size): the
        largest slot's clips when exact (the same every epoch: the deal depends on the shard
        sizes only), a fair share when balanced."""
        counts = [len(c) for c in self.per_shard if len(c)]
        if self.balanced or len(counts) < slots:  # fewer shards: every slot keeps every n-th
            n = math.ceil(self.total / slots)
        else:
            n = max(sum(counts[k] for k in d) for d in deal(counts, slots))
        return max(1, math.ceil(n / self.batch_size)) * self.batch_size

    def __len__(self) -> int:
        workers = self.workers or 1
        return self.quota(self._world()[1] * workers) * workers

    def _plan(self, slots: int, epoch: int) -> list[np.ndarray]:
        """The clips (indices into the split) of each slot, in reading order: shard by shard,
        each shard's clips in their order in the shard."""
        rng = np.random.default_rng([self.seed, epoch, 7])
        order = rng.permutation(len(self.shards)) if self.train else np.arange(len(self.shards))
        used = [k for k in order if len(self.per_shard[k])]
        if len(used) >= slots:
            dealt = deal([len(self.per_shard[k]) for k in used], slots)
            return [np.concatenate([self.per_shard[used[j]] for j in d]) for d in dealt]
        every = np.concatenate([self.per_shard[k] for k in used])
        return [every[s::slots] for s in range(slots)]

    def _read(self, clips: np.ndarray) -> Iterator[tuple[int, np.ndarray, int, np.ndarray | None]]:
        """(clip, samples, rate, its stored teacher scores or None) of ``clips``, reading each
        of their shards once, front to back."""
        by_shard: dict[int, dict[str, int]] = {}
        for i in clips.tolist():
            by_shard.setdefault(int(self._shard_of[i]), {})[str(self.keys[i])] = i
        for k, wanted in by_shard.items():
            path = self.shards[k]
            rows = self._score_rows(path) if self.teacher_scores is not None else None
            with open_tar_stream(path) as tar:
                for member in tar:
                    key = split_member_name(member.name)[0]
                    if key not in wanted or not is_audio_member(member):
                        continue
                    name = member_path(path, key)
                    x, sr = decode_bytes(tar.extractfile(member).read(), name)
                    check_samples(name, x, 0, sr)
                    if rows is not None and key not in rows:
                        raise DataError(sidecar(path), f"no teacher scores for sample {key}")
                    yield wanted.pop(key), x, sr, None if rows is None else rows[key]
            if wanted:
                raise AudioError(path, f"{len(wanted)} clip(s) of its index are not in the "
                                 f"shard, e.g. {next(iter(wanted))}")

    def _score_rows(self, shard: str) -> dict[str, np.ndarray]:
        """key -> (crops, C) stored teacher scores of one shard."""
        keys, offsets, scores = read_sidecar(sidecar(shard))
        return {str(k): scores[offsets[j]:offsets[j + 1]] for j, k in enumerate(keys)}

    def _crop_item(self, x: np.ndarray, rows: np.ndarray, rng: np.random.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """A crop of the stored grid, drawn at random, and the teacher's scores of it."""
        crop, hop = grid(self.teacher_scores, self.sample_rate)
        k = int(rng.integers(len(rows))) if self.train else 0  # the grid the teacher scored
        wave = torch.from_numpy(np.ascontiguousarray(x[k * hop:k * hop + crop]))
        return fit_length(wave, crop, "repeat"), torch.from_numpy(rows[k].astype(np.float32))

    def _item(self, i: int, x: np.ndarray, sr: int, rows: np.ndarray | None,
              rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float32)  # mono
        if sr != self.sample_rate:
            x = soxr.resample(x, sr, self.sample_rate, quality=RESAMPLE_QUALITY)
        if rows is not None:
            return self._crop_item(x.astype(np.float32, copy=False), rows, rng)
        wave = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        wave = fit_length(wave, self.clip_samples, self.fit, rng if self.train else None)
        return wave, self.target(i)

    def _pass(self, clips: np.ndarray, rng: np.random.Generator) -> Iterator[tuple]:
        """One pass over a slot's clips: repeats drawn when balanced, then the shuffle buffer."""
        buffer: list[tuple] = []
        for i, x, sr, rows in self._read(clips):
            times = int(rng.poisson(self.weights[i])) if self.balanced else 1
            for _ in range(times):
                item = self._item(i, x, sr, rows, rng)
                if not self.train:
                    yield item
                    continue
                buffer.append(item)
                if len(buffer) >= self.buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def slot_items(self, rank: int, world_size: int, worker_id: int, workers: int,
                   epoch: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """What slot (rank, worker) yields in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        slots = world_size * workers
        slot = rank * workers + worker_id
        plan = self._plan(slots, epoch)
        quota = self.quota(slots)
        mine = plan[slot]
        if not len(mine):  # more slots than clips: repeat another slot's clips
            mine = plan[slot % self.total]
        rng = np.random.default_rng([self.seed, epoch, slot])
        sent = 0
        for _ in range(quota):  # passes; each yields a clip unless balanced draws give none
            for item in self._pass(mine, rng):
                yield item
                sent += 1
                if sent == quota:
                    return

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rank, world_size = self._world()
        worker_id, workers = worker()
        return self.slot_items(rank, world_size, worker_id, workers)
