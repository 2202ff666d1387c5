"""A teacher's scores stored beside tar shards, for pseudo-strong-label training.

``earmark psl-scores TEACHER --data shards:DIR --crop-seconds S`` scores every clip of a shard
set once, on a grid of crops (``S`` seconds long, starting every ``hop`` seconds; a clip
shorter than a crop is one crop), and writes beside each shard ``shard-NNNNNN.tar`` a sidecar
``shard-NNNNNN.psl.npz``:

- ``keys`` (N,): the samples' keys, in shard order;
- ``offsets`` (N + 1,): sample ``i``'s crops are rows ``offsets[i]:offsets[i + 1]``;
- ``scores`` (crops, C) float16: the teacher's probabilities, in the label order of
  ``psl.json``.

``DIR/psl.json`` names the teacher, its labels and whether they are multi-label, the crop
length and hop, and the sidecars written. Training with ``--stage psl --teacher-scores DIR``
then draws a crop of the grid for each clip and learns its stored scores instead of running the
teacher every step.

    >>> import tempfile
    >>> shards = Path(tempfile.mkdtemp())
    >>> _ = (shards / INFO).write_text(json.dumps(
    ...     {"teacher": "runs/teacher", "labels": ["dog", "owl"], "multi_label": True,
    ...      "crop_seconds": 2.0, "hop_seconds": 1.0, "sample_rate": 16000}))
    >>> info = read_info(shards)
    >>> info["labels"], grid(info, 16000)
    (['dog', 'owl'], (32000, 16000))

    A sidecar of two clips, the first with three crops and the second with one:

    >>> path = write_sidecar(sidecar(shards / "shard-000000.tar"), ["000000000", "000000001"],
    ...                      [np.full((3, 2), 0.5), np.full((1, 2), 0.25)])
    >>> path.name
    'shard-000000.psl.npz'
    >>> keys, offsets, scores = read_sidecar(path)
    >>> keys.tolist(), offsets.tolist(), scores.shape, scores.dtype
    (['000000000', '000000001'], [0, 3, 4], (4, 2), dtype('float16'))
    >>> scores[offsets[1]:offsets[2]]  # the second clip's crop
    array([[0.25, 0.25]], dtype=float16)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from earmark.errors import DataError
from earmark.files import atomic_path

INFO = "psl.json"


def sidecar(shard: str | Path) -> Path:
    """The scores file beside ``shard``: ``shard-000003.tar`` -> ``shard-000003.psl.npz``."""
    shard = Path(shard)
    return shard.with_name(shard.stem + ".psl.npz")


def crop_starts(frames: int, crop: int, hop: int) -> list[int]:
    """Start samples of the crops of a clip of ``frames`` samples (one crop when shorter).

    >>> crop_starts(10, 4, 2)
    [0, 2, 4, 6]
    >>> crop_starts(3, 4, 2)
    [0]
    """
    if frames <= crop:
        return [0]
    return [k * hop for k in range(1 + (frames - crop) // hop)]


def write_sidecar(path: Path, keys: list[str], scores: list[np.ndarray]) -> Path:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in scores])]).astype(np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, keys=np.asarray(keys), offsets=offsets,
                 scores=np.concatenate(scores).astype(np.float16))
    return path


def read_sidecar(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys (N,), offsets (N + 1,), scores (crops, C) float16) of one sidecar."""
    try:
        with np.load(path) as z:
            return z["keys"], z["offsets"], z["scores"]
    except (OSError, KeyError, ValueError) as err:
        raise DataError(path, f"not a readable teacher-score sidecar ({err})") from None


def read_info(directory: str | Path) -> dict:
    """``psl.json`` of a shard folder; a DataError naming it when missing."""
    path = Path(directory) / INFO
    if not path.is_file():
        raise DataError(path, "no stored teacher scores (write them with earmark psl-scores)")
    info = json.loads(path.read_text())
    for key in ("labels", "crop_seconds", "hop_seconds", "multi_label"):
        if key not in info:
            raise DataError(path, f"missing {key!r}")
    return info


def grid(info: dict, sample_rate: int) -> tuple[int, int]:
    """(crop, hop) in samples at ``sample_rate``."""
    return (round(info["crop_seconds"] * sample_rate),
            max(1, round(info["hop_seconds"] * sample_rate)))
