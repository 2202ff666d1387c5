"""A data set as WebDataset tar shards: ``earmark shard SPEC OUT``.

Each shard ``OUT/shard-NNNNNN.tar`` is a plain POSIX tar in which a sample is two members with
one key: ``KEY.flac`` (the clip, or its segment for items with an onset and offset, mono, 16-bit
FLAC at the shard set's sample rate; ``KEY.wav``, 16-bit PCM, with ``audio_format="wav"``) and
``KEY.json``::

    {"key": "000000042", "labels": ["dog"], "duration": 5.0, "split": "train", "fold": 3,
     "group": "src-1", "source": "/data/esc50/audio/1-100032-A-0.wav",
     "events": [[0.5, 1.2, "dog"]]}        # strong labels, where the data set has them

``OUT/index.json`` describes the set: the shards (name, clips, bytes, first and last key),
clips per class, hours, sample rate, labels, whether multi-label, and the files that could not
be read (skipped, named with the reason).

Writing is restartable: a shard is written under a temporary name and renamed when complete,
then its record ``shard-NNNNNN.json`` is written; a killed run leaves only complete shards,
and running the same command again continues after the last recorded one (it refuses when
the data set's items changed in between).

    >>> import tempfile
    >>> from earmark.data.sources import from_spec
    >>> from earmark.data.synth import synthesize
    >>> root = synthesize(Path(tempfile.mkdtemp()), clips_per_class=2, clip_seconds=0.25,
    ...                   soundscapes=0)  # 16 clips of 8 classes
    >>> index = write_shards(from_spec(f"synth:{root}"), root / "shards")
    >>> index["clips"], index["hours"], index["sample_rate"], index["clips_per_class"]["bark"]
    (16, 0.001111, 16000, 2)
    >>> sorted(p.name for p in (root / "shards").iterdir())
    ['index.json', 'shard-000000.json', 'shard-000000.tar']
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from earmark.audio.clips import load_segment
from earmark.audio.packed import (
    decode_bytes,
    fetch,
    is_audio_member,
    is_url,
    member_path,
    record_samples,
    shard_record,
    split_member_name,
)
from earmark.data.events import Event
from earmark.data.manifest import Item, Manifest
from earmark.errors import AudioError, DataError
from earmark.files import atomic_path, write_json

SHARD_SIZE = 512 * 1024 * 1024  # bytes of audio and metadata per shard, about
AUDIO_FORMATS = ("flac", "wav")
INDEX = "index.json"


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def record_name(k: int) -> str:
    """The record written once shard ``k`` is whole."""
    return f"shard-{k:06d}.json"


def _fingerprint(manifest: Manifest, sample_rate: int, audio_format: str = "flac") -> str:
    """What a restart must find unchanged: the items, in order, the sample rate and format."""
    # FLAC shards keep the fingerprint they had before WAV shards existed, so that an
    # interrupted run of an earlier earmark still continues
    h = hashlib.sha1((f"{sample_rate}" if audio_format == "flac"
                      else f"{sample_rate}|{audio_format}").encode())
    for it in manifest.items:
        h.update(f"\n{it.path}|{it.onset}|{it.offset}|{';'.join(it.labels)}".encode())
    return h.hexdigest()


def _sample(job: tuple[int, Item, int, list | None, str]
            ) -> tuple[int, bytes | None, dict | str]:
    """(index, encoded audio, metadata) of one item, or (index, None, error message)."""
    i, item, sample_rate, events, audio_format = job
    try:
        wave = load_segment(item.path, sample_rate, item.onset, item.offset).numpy()
    except AudioError as err:
        return i, None, str(err)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, format=audio_format.upper(),
             subtype="PCM_16")
    meta = {"key": f"{i:09d}", "audio": audio_format, "labels": list(item.labels),
            "duration": round(len(wave) / sample_rate, 6), "split": item.split,
            "fold": item.fold, "group": item.group, "source": item.path}
    if item.onset is not None or item.offset is not None:
        meta["onset"], meta["offset"] = item.onset, item.offset
    if events is not None:
        # Event objects (a manifest read from shards) or (onset, offset, label) tuples (desed,
        # synth soundscapes)
        meta["events"] = [[e.onset, e.offset, e.label] if isinstance(e, Event) else list(e[:3])
                          for e in events]
    return i, buf.getvalue(), meta


def _jobs(manifest: Manifest, start: int, sample_rate: int, audio_format: str
          ) -> Iterator[tuple]:
    strong = manifest.meta.get("events") or {}
    for i in range(start, len(manifest)):
        item = manifest.items[i]
        yield i, item, sample_rate, strong.get(item.path), audio_format


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # the same data gives the same bytes
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _records(out: Path, fingerprint: str) -> list[dict]:
    """The complete shards of an earlier run of the same job, in order."""
    records = []
    for k in range(10 ** 6):
        record = out / record_name(k)
        if not record.is_file() or not (out / shard_name(k)).is_file():
            break
        r = json.loads(record.read_text())
        if r.get("fingerprint") != fingerprint:
            raise DataError(out, "holds shards of other items or another sample rate; write to "
                            "an empty folder (or delete it) to start over")
        records.append(r)
    return records


def write_shards(manifest: Manifest, out: str | Path, shard_size: int = SHARD_SIZE,
                 sample_rate: int | None = None, workers: int = 1,
                 progress: bool = False, audio_format: str = "flac") -> dict:
    """Write ``manifest`` as tar shards under ``out`` and return (and write) the index.

    ``sample_rate`` defaults to the first readable file's rate. ``workers`` processes decode
    and encode the clips; one writes the shards in the manifest's order. Unreadable files are
    skipped and listed in the index (``failed``). ``audio_format``: ``flac`` (the default,
    about half the bytes of PCM on real recordings) or ``wav`` (16-bit PCM: larger, and about
    three times cheaper to decode, for loaders short of CPU)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {', '.join(AUDIO_FORMATS)}, "
                         f"got {audio_format!r}")
    if sample_rate is None:
        sample_rate = _first_rate(manifest)
    fingerprint = _fingerprint(manifest, sample_rate, audio_format)
    records = _records(out, fingerprint)
    start = records[-1]["next_item"] if records else 0
    failed = [f for r in records for f in r["failed"]]
    k = len(records)
    pending: list[tuple[bytes, dict]] = []
    pending_failed: list[str] = []
    size = 0
    t0 = time.time()

    def flush(next_item: int) -> None:
        nonlocal k, pending, pending_failed, size
        if not pending:  # failures after the last shard: listed, and retried by a restart
            failed.extend(pending_failed)
            pending_failed = []
            return
        name = shard_name(k)
        with atomic_path(out / name) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) \
                as tar:
            where = []  # (offset, size) of each audio member's data, for reads by range
            for audio, meta in pending:
                where.append((tar.offset + tarfile.BLOCKSIZE, len(audio)))  # after its header
                _add(tar, f"{meta['key']}.{audio_format}", audio)
                _add(tar, f"{meta['key']}.json", json.dumps(meta).encode())
        metas = [{**m, "offset": off, "size": n} for (_, m), (off, n) in zip(pending, where)]
        record = {"name": name, "clips": len(metas), "bytes": (out / name).stat().st_size,
                  "first": metas[0]["key"], "last": metas[-1]["key"], "next_item": next_item,
                  "fingerprint": fingerprint, "failed": pending_failed,
                  "labels": Counter(lab for m in metas for lab in m["labels"]),
                  "splits": Counter(m["split"] for m in metas), "samples": metas,
                  "seconds": round(sum(m["duration"] for m in metas), 3)}
        write_json(out / record_name(k), record)
        records.append(record)
        failed.extend(pending_failed)
        k += 1
        pending, pending_failed, size = [], [], 0

    bar = tqdm(total=len(manifest), initial=start, disable=not progress, unit="clip",
               desc="shards")
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        jobs = _jobs(manifest, start, sample_rate, audio_format)
        results = pool.map(_sample, jobs, chunksize=16) if pool else map(_sample, jobs)
        for i, flac, meta in results:
            if flac is None:
                pending_failed.append(meta)
            else:
                pending.append((flac, meta))
                size += len(flac) + 1024  # and the JSON member with its tar headers
            bar.update(1)
            if size >= shard_size:
                flush(i + 1)
        flush(len(manifest))
    finally:
        bar.close()
        if pool:
            pool.shutdown(cancel_futures=True)
    index = {"format": "earmark-shards", "version": 1, "sample_rate": sample_rate,
             "audio": audio_format,
             "labels": manifest.labels, "multi_label": manifest.multi_label,
             "source": manifest.name,
             "shards": [{key: r[key] for key in ("name", "clips", "bytes", "first", "last")}
                        for r in records],
             "clips": sum(r["clips"] for r in records),
             "hours": round(sum(r["seconds"] for r in records) / 3600, 6),
             "clips_per_class": _merge([r["labels"] for r in records], manifest.labels),
             "failed": failed, "write_seconds": round(time.time() - t0, 1)}
    write_json(out / INDEX, index)
    return index


def _first_rate(manifest: Manifest) -> int:
    from earmark.audio.io import audio_info

    for it in manifest.items:
        try:
            return audio_info(it.path).sample_rate
        except AudioError:
            continue
    raise DataError(manifest.name, "no readable file to take the sample rate from")


def _merge(counts: list[dict[str, int]], labels: list[str]) -> dict[str, int]:
    return {lab: sum(c.get(lab, 0) for c in counts) for lab in labels}


# ---- reading: shards:DIR -------------------------------------------------------------------


def shard_paths(location: str) -> list[str]:
    """The tar shards a ``shards:`` SPEC names: a folder written by :func:`write_shards` (its
    index's order), one ``.tar`` file, or a brace pattern (``dir/shard-{000000..000031}.tar``,
    webdataset's notation); files or http(s) URLs (``https://host/as/shard-{0..9}.tar``,
    or a URL ending in ``/`` for the folder of an index)."""
    if is_url(location):
        if location.endswith("/"):
            names = [s["name"] for s in _index(location)["shards"]]
            return [location + n for n in names]
        from braceexpand import braceexpand

        return list(braceexpand(location))
    if "{" in location:
        from braceexpand import braceexpand

        paths = [Path(p) for p in braceexpand(location)]
    else:
        root = Path(location)
        if root.is_dir():
            index = root / INDEX
            if index.is_file():
                paths = [root / s["name"] for s in json.loads(index.read_text())["shards"]]
            else:
                paths = sorted(root.glob("*.tar"))
            if not paths:
                raise DataError(root, f"holds no tar shards (and no {INDEX})")
        else:
            paths = [root]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(location, f"{len(missing)} of {len(paths)} shard(s) missing, e.g. "
                        f"{missing[0]}")
    return [str(p.resolve()) for p in paths]


def _index(base: str) -> dict:
    """``index.json`` of the folder (or URL folder) ``base``; {} when there is none."""
    if is_url(base):
        try:
            return json.loads(fetch(base.rstrip("/") + "/" + INDEX))
        except (AudioError, ValueError):
            return {}
    path = Path(base) / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def _scan(path: str) -> list[dict]:
    """The metadata of every sample of a shard written without records (any WebDataset tar
    whose samples have ``KEY.json`` with at least ``labels``)."""
    metas = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, ext = split_member_name(member.name)
                if ext == "json":
                    meta = json.loads(tar.extractfile(member).read())
                    meta.setdefault("key", key)
                    metas.append(meta)
    except (tarfile.TarError, OSError, json.JSONDecodeError) as err:
        raise DataError(path, f"not a readable tar shard ({err})") from None
    return metas


def _samples(path: str) -> list[dict]:
    """The samples' metadata of one shard: from its record, else from the shard itself."""
    if is_url(path):
        try:
            return list(record_samples(path))
        except AudioError as err:
            raise DataError(err.path, err.reason) from None
    record = Path(shard_record(path))
    if record.is_file():
        samples = json.loads(record.read_text()).get("samples")
        if samples is not None:
            return samples
    return _scan(path)


def load(location: str) -> Manifest:
    """A manifest of the clips of a shard set: items ``SHARD#KEY`` with the labels, split,
    fold and group their metadata holds; strong events in ``meta["events"]``;
    ``meta["shards"]`` lists each shard's path and clips per split (what streaming splits by).

    >>> import tempfile
    >>> from earmark.data.manifest import Item, Manifest
    >>> root = Path(tempfile.mkdtemp())
    >>> sf.write(root / "a.wav", np.zeros(8000), 16000)
    >>> sf.write(root / "b.wav", np.zeros(4000), 16000)
    >>> clips = Manifest([Item(str(root / "a.wav"), ("dog",), group="park"),
    ...                   Item(str(root / "b.wav"), ("owl",), split="test")], ["dog", "owl"])
    >>> _ = write_shards(clips, root / "shards")
    >>> m = load(str(root / "shards"))
    >>> m.items[1].path  # doctest: +ELLIPSIS
    '/.../shards/shard-000000.tar#000000001'
    >>> m.items[0].group, m.items[1].labels, m.items[1].split
    ('park', ('owl',), 'test')
    >>> m.meta["shards"][0]["clips"], m.meta["shards"][0]["splits"]
    (2, {'train': 1, 'test': 1})
    """
    paths = shard_paths(location)
    root = paths[0].rsplit("/", 1)[0]  # the folder (or URL folder) of the first shard
    index = _index(root)
    items, events, shards = [], {}, []
    for path in paths:
        samples = _samples(path)
        for meta in samples:
            if "labels" not in meta:
                raise DataError(path, f"sample {meta.get('key')}: metadata without labels")
            item_path = member_path(path, meta["key"])
            items.append(Item(path=item_path, labels=tuple(meta["labels"]),
                              split=meta.get("split") or "train", fold=meta.get("fold"),
                              group=meta.get("group")))
            if meta.get("events") is not None:
                events[item_path] = [Event(on, off, lab) for on, off, lab in meta["events"]]
        shards.append({"path": path, "clips": len(samples),
                       "splits": dict(Counter(m.get("split") or "train" for m in samples))})
    if not items:
        raise DataError(location, "the shards hold no samples")
    labels = index.get("labels") or sorted({lab for it in items for lab in it.labels})
    multi = index.get("multi_label", any(len(it.labels) != 1 for it in items))
    meta = {"shards": shards, "sample_rate": index.get("sample_rate")}
    if events:
        meta["events"] = events
    return Manifest(items=items, labels=labels, multi_label=multi,
                    name=f"shards:{root.rsplit('/', 1)[-1]}", meta=meta)


def read_shard(path: str | Path) -> Iterator[tuple[np.ndarray, int, dict]]:
    """(samples float32: (frames,) mono or (frames, channels), sample rate, metadata) of each
    sample of one shard, in order."""
    path = Path(path)
    try:
        tar = tarfile.open(path)
    except (tarfile.TarError, OSError) as err:
        raise DataError(path, f"not a readable tar shard ({err})") from None
    with tar:
        audio: dict[str, bytes] = {}
        for member in tar:
            key, ext = split_member_name(member.name)
            if is_audio_member(member):
                audio[key] = tar.extractfile(member).read()
            elif ext == "json":
                if key not in audio:
                    raise DataError(path, f"sample {key}: metadata before its audio")
                x, sr = decode_bytes(audio.pop(key), member_path(path, key))
                yield (x[:, 0] if x.shape[1] == 1 else x), sr, json.loads(
                    tar.extractfile(member).read())

