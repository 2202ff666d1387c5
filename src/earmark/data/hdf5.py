"""``hdf5:PATH``: the waveform packs that users of PANNs, HTS-AT, SAT and CED have built.

Two layouts, told apart by what PATH is:

- **PANNs / HTS-AT** (PATH is an ``.h5`` file or a folder of them). A *waveform pack* holds
  ``audio_name`` (N names), ``waveform`` (N x samples, int16 at 32 kHz) and ``target``
  (N x 527 booleans); an *index* (HTS-AT's ``create_indexes.py``) holds ``audio_name``,
  ``target``, ``hdf5_path`` and ``index_in_hdf5`` and points into packs. A folder is read as
  all the packs (or indexes) in it, in name order. An index's ``hdf5_path`` written on another
  machine is looked up beside the index (its base name) when it does not exist as written.
- **SAT / CED** (PATH is a ``.tsv`` or ``.csv`` label file): columns ``filename``, ``labels``
  (class indices joined by ``;``) and ``hdf5path``, separated by tabs or spaces as SAT's
  ``prepare_label_list.py`` writes them; each pack holds one dataset per clip, named by the
  clip's file name (or its base name, SAT's default).

Targets are indices into AudioSet's ``class_labels_indices.csv``, which is looked for beside
PATH and in its parent folder; without it the labels are the indices themselves (``"0"``,
``"1"``, ...). Every manifest is multi-label. The split comes from the file name, as for
``audioset:``: ``eval`` in it makes the items ``test``, otherwise ``train``. Items are clips
inside the packs (``pack.h5#17``, ``pack.h5#Yabc.wav``, see :mod:`earmark.audio.packed`), so
training, evaluation and ``earmark shard`` read the packs directly.

    >>> import tempfile, h5py
    >>> root = Path(tempfile.mkdtemp())
    >>> with h5py.File(root / "balanced_train.h5", "w") as f:  # a pack of two clips, 3 classes
    ...     f["audio_name"] = [b"Yabc.wav", b"Ydef.wav"]
    ...     f["waveform"] = np.zeros((2, 3200), dtype=np.int16)
    ...     f["target"] = np.array([[1, 0, 1], [0, 1, 0]], dtype=bool)
    >>> _ = (root / "class_labels_indices.csv").write_text(
    ...     "index,mid,display_name\\n0,/m/09x0r,Speech\\n1,/m/05tny_,Bark\\n2,/m/0bt9lr,Dog\\n")
    >>> m = load(str(root / "balanced_train.h5"))
    >>> m.labels, m.multi_label, m.meta["layout"]
    (['Speech', 'Bark', 'Dog'], True, 'panns')
    >>> m.items[0].path  # doctest: +ELLIPSIS
    '/.../balanced_train.h5#0'
    >>> m.items[0].labels, m.items[0].split
    (('Speech', 'Dog'), 'train')
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from earmark.audio.packed import HDF5_SUFFIXES, member_path, open_hdf5
from earmark.data.audioset import class_index_places, class_map, split_of
from earmark.data.manifest import Item, Manifest
from earmark.errors import AudioError, DataError

TABLE_SUFFIXES = (".tsv", ".csv", ".txt")


def _class_names(place: Path, n: int) -> list[str]:
    """Display names of AudioSet's class list beside ``place`` (or inside it, for a folder) or
    in the parent folder, else the indices as text; at least ``n`` of them."""
    for candidate in class_index_places(place if place.is_dir() else place.parent):
        if candidate.is_file():
            names = class_map(candidate)[0]
            if len(names) < n:
                raise DataError(place, f"targets have {n} classes but {candidate} lists "
                                f"{len(names)}")
            return names
    return [str(i) for i in range(n)]


def _text(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _resolve_pack(written: str, index: Path) -> str:
    if os.path.isfile(written):
        return os.path.abspath(written)
    beside = index.parent / os.path.basename(written)
    if beside.is_file():
        return str(beside.resolve())
    raise DataError(index, f"its pack {written} does not exist, nor {beside}")


def _panns(files: list[Path]) -> tuple[list[tuple[str, np.ndarray, str]], int]:
    """(clip path, target row, split) of every clip of PANNs / HTS-AT packs or indexes, and
    the number of classes."""
    rows: list[tuple[str, np.ndarray, str]] = []
    classes = 0
    for path in files:
        try:
            f = open_hdf5(path)
        except AudioError as err:
            raise DataError(path, err.reason) from None
        if "target" not in f or not ("waveform" in f or "hdf5_path" in f):
            raise DataError(path, "is neither a PANNs/HTS-AT waveform pack (audio_name, "
                            "waveform, target) nor an index (audio_name, target, hdf5_path, "
                            "index_in_hdf5)")
        target = np.asarray(f["target"][()], dtype=bool)
        if target.ndim != 2:
            raise DataError(path, f"target must be clips x classes, has shape {target.shape}")
        classes = max(classes, target.shape[1])
        split = split_of(path)
        if "waveform" in f:
            if f["waveform"].shape[0] != target.shape[0]:
                raise DataError(path, f"{f['waveform'].shape[0]} waveforms but "
                                f"{target.shape[0]} targets")
            absolute = str(path.resolve())
            rows += [(member_path(absolute, i), target[i], split) for i in range(len(target))]
        else:
            packs = _text(f["hdf5_path"][()])
            where = np.asarray(f["index_in_hdf5"][()])
            resolved = {p: _resolve_pack(p, path) for p in dict.fromkeys(packs)}
            rows += [(member_path(resolved[p], int(i)), t, split)
                     for p, i, t in zip(packs, where, target)]
    return rows, classes


def _load_panns(location: Path) -> Manifest:
    if location.is_dir():
        files = sorted(p for p in location.iterdir() if p.suffix.lower() in HDF5_SUFFIXES)
        if not files:
            raise DataError(location, f"holds no HDF5 pack ({', '.join(HDF5_SUFFIXES)})")
    else:
        files = [location]
    rows, classes = _panns(files)
    labels = _class_names(location, classes)
    items = [Item(path=path, labels=tuple(labels[j] for j in np.flatnonzero(t)), split=split)
             for path, t, split in rows]
    return Manifest(items=items, labels=labels, multi_label=True, name=f"hdf5:{location.stem}",
                    meta={"layout": "panns"})


def _load_sat(table: Path) -> Manifest:
    with open(table, newline="", encoding="utf-8") as f:
        head = f.readline()
        f.seek(0)
        if "\t" in head:
            reader = csv.DictReader(f, delimiter="\t")
        elif "," in head:
            reader = csv.DictReader(f)
        else:  # SAT reads its tables with sep="\s+"
            reader = csv.DictReader((" ".join(line.split()) for line in f), delimiter=" ")
        missing = {"filename", "labels", "hdf5path"} - set(reader.fieldnames or [])
        if missing:
            raise DataError(table, f"missing column(s) {', '.join(sorted(missing))} (the SAT / "
                            "CED layout has filename, labels, hdf5path)")
        rows = list(reader)
    if not rows:
        raise DataError(table, "lists no clips")
    parsed, packs = [], {}
    for n, row in enumerate(rows, start=2):
        try:
            idx = [int(x) for x in row["labels"].replace(",", ";").split(";") if x.strip()]
        except ValueError:
            raise DataError(table, f"line {n}: labels must be class indices joined by ';', got "
                            f"{row['labels']!r}") from None
        written = row["hdf5path"]
        if written not in packs:
            packs[written] = _resolve_pack(written, table)
        parsed.append((member_path(packs[written], row["filename"]), [i for i in idx if i >= 0]))
    classes = 1 + max((i for _, idx in parsed for i in idx), default=-1)
    labels = _class_names(table, classes)
    split = split_of(table)
    items = [Item(path=path, labels=tuple(labels[i] for i in idx), split=split)
             for path, idx in parsed]
    return Manifest(items=items, labels=labels, multi_label=True, name=f"hdf5:{table.stem}",
                    meta={"layout": "sat"})


def load(location: str) -> Manifest:
    """A multi-label manifest of the clips of a PANNs/HTS-AT pack, index or folder of them, or
    of a SAT/CED label table (see the module docstring)."""
    path = Path(location)
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return _load_sat(path)
    if path.is_dir() or path.suffix.lower() in HDF5_SUFFIXES:
        return _load_panns(path)
    raise DataError(path, f"hdf5: takes a pack or index ({', '.join(HDF5_SUFFIXES)}), a folder "
                    f"of them, or a SAT/CED label table ({', '.join(TABLE_SUFFIXES)})")
