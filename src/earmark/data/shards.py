"""A data set as WebDataset tar shards: ``earmark shard SPEC OUT``.

Each shard ``OUT/shard-NNNNNN.tar`` is a plain POSIX tar in which a sample is two members with
one key: ``KEY.flac`` (the clip, or its segment for items with an onset and offset, mono, 16-bit
FLAC at the shard set's sample rate) and ``KEY.json``::

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

    >>> from earmark.data.sources import from_spec
    >>> write_shards(from_spec("esc50:ESC-50"), "shards/esc50")   # doctest: +SKIP
    {'shards': [...], 'clips': 2000, 'hours': 2.78, ...}
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

from earmark.data.dataset import load_segment
from earmark.data.manifest import Item, Manifest
from earmark.errors import AudioError, DataError
from earmark.files import atomic_path, write_json

SHARD_SIZE = 512 * 1024 * 1024  # bytes of audio and metadata per shard, about
INDEX = "index.json"


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def record_name(k: int) -> str:
    """The record written once shard ``k`` is whole."""
    return f"shard-{k:06d}.json"


def _fingerprint(manifest: Manifest, sample_rate: int) -> str:
    """What a restart must find unchanged: the items, in order, and the sample rate."""
    h = hashlib.sha1(f"{sample_rate}".encode())
    for it in manifest.items:
        h.update(f"\n{it.path}|{it.onset}|{it.offset}|{';'.join(it.labels)}".encode())
    return h.hexdigest()


def _sample(job: tuple[int, Item, int, list | None]) -> tuple[int, bytes | None, dict | str]:
    """(index, FLAC bytes, metadata) of one item, or (index, None, error message)."""
    i, item, sample_rate, events = job
    try:
        wave = load_segment(item.path, sample_rate, item.onset, item.offset).numpy()
    except AudioError as err:
        return i, None, str(err)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    meta = {"key": f"{i:09d}", "labels": list(item.labels),
            "duration": round(len(wave) / sample_rate, 6), "split": item.split,
            "fold": item.fold, "group": item.group, "source": item.path}
    if item.onset is not None or item.offset is not None:
        meta["onset"], meta["offset"] = item.onset, item.offset
    if events is not None:
        meta["events"] = [[e.onset, e.offset, e.label] for e in events]
    return i, buf.getvalue(), meta


def _jobs(manifest: Manifest, start: int, sample_rate: int) -> Iterator[tuple]:
    strong = manifest.meta.get("events") or {}
    for i in range(start, len(manifest)):
        item = manifest.items[i]
        yield i, item, sample_rate, strong.get(item.path)


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
                 progress: bool = False) -> dict:
    """Write ``manifest`` as tar shards under ``out`` and return (and write) the index.

    ``sample_rate`` defaults to the first readable file's rate. ``workers`` processes decode
    and encode the clips; one writes the shards in the manifest's order. Unreadable files are
    skipped and listed in the index (``failed``)."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    if sample_rate is None:
        sample_rate = _first_rate(manifest)
    fingerprint = _fingerprint(manifest, sample_rate)
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
            for flac, meta in pending:
                _add(tar, f"{meta['key']}.flac", flac)
                _add(tar, f"{meta['key']}.json", json.dumps(meta).encode())
        metas = [m for _, m in pending]
        record = {"name": name, "clips": len(metas), "bytes": (out / name).stat().st_size,
                  "first": metas[0]["key"], "last": metas[-1]["key"], "next_item": next_item,
                  "fingerprint": fingerprint, "failed": pending_failed,
                  "labels": Counter(lab for m in metas for lab in m["labels"]),
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
        results = (pool.map(_sample, _jobs(manifest, start, sample_rate), chunksize=16)
                   if pool else map(_sample, _jobs(manifest, start, sample_rate)))
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


def read_shard(path: str | Path) -> Iterator[tuple[np.ndarray, int, dict]]:
    """(samples float32, sample rate, metadata) of each sample of one shard, in order."""
    path = Path(path)
    try:
        tar = tarfile.open(path)
    except (tarfile.TarError, OSError) as err:
        raise DataError(path, f"not a readable tar shard ({err})") from None
    with tar:
        audio: dict[str, bytes] = {}
        for member in tar:
            key, _, ext = member.name.partition(".")
            data = tar.extractfile(member).read()
            if ext == "flac":
                audio[key] = data
            elif ext == "json":
                if key not in audio:
                    raise DataError(path, f"sample {key}: metadata before its audio")
                wave, sr = sf.read(io.BytesIO(audio.pop(key)), dtype="float32")
                yield wave, sr, json.loads(data)

