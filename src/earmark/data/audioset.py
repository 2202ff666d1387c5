"""``audioset:CSV``: an AudioSet segments CSV with locally downloaded audio.

The CSV is one of Google's segment lists (``balanced_train_segments.csv``,
``eval_segments.csv``, ...): lines starting with ``#`` are comments, every other line is
``YTID, start_seconds, end_seconds, "mid,mid,..."``. ``class_labels_indices.csv``
(``index,mid,display_name``) must lie beside the CSV or in its parent folder; the vocabulary
is its display names in index order (527 classes) and every manifest is multi-label.

AudioSet is distributed as YouTube ids, so the audio is whatever the user downloaded. For
each row earmark looks in the CSV's folder and in an ``audio/`` folder beside it for a file
whose name (without extension, any of :data:`earmark.audio.io.AUDIO_EXTENSIONS`) is

- ``{YTID}`` or ``Y{YTID}`` (the PANNs/HTS-AT convention), or
- ``{YTID}_{start}`` or ``{YTID}_{start}_{end}``, optionally with the ``Y`` prefix, where the
  times are written as in the CSV (``30.000``), with one decimal (``30.0``) or as integers
  (``30``).

The file is taken to be the ten-second segment itself (no onset/offset). Videos that were
taken down are a normal part of AudioSet, so rows without a local file are skipped with a
warning and counted in ``manifest.meta["missing"]``; only when no row has a file is it an
error. The split comes from the CSV's name: ``eval`` in the name makes every item ``test``,
otherwise ``train``.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

from earmark.data.manifest import Item, Manifest
from earmark.data.paths import absolute, is_audio, read_table
from earmark.errors import DataError

CLASS_INDEX = "class_labels_indices.csv"


def class_index_places(folder: Path) -> list[Path]:
    """Where AudioSet's class list is looked for: in ``folder``, then in its parent."""
    return [folder / CLASS_INDEX, folder.parent / CLASS_INDEX]


def find_class_index(csv_path: Path) -> Path:
    """``class_labels_indices.csv`` beside ``csv_path`` or in its parent folder."""
    places = class_index_places(csv_path.parent)
    for place in places:
        if place.is_file():
            return place
    raise DataError(places[0], f"missing AudioSet class list; also looked for {places[1]}")


def split_of(path: Path) -> str:
    """The split of a file of AudioSet (segments CSV, pack, label table) by its name: ``eval``
    in it is the test split, anything else training."""
    return "test" if "eval" in path.name.lower() else "train"


def class_map(path: Path) -> tuple[list[str], dict[str, str]]:
    """(display names in index order, mid -> display name) of a class list."""
    rows = read_table(path, ["index", "mid", "display_name"])
    rows.sort(key=lambda r: int(r["index"]))
    return [r["display_name"] for r in rows], {r["mid"]: r["display_name"] for r in rows}


def _segments(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, [YTID, start, end, mids]) for every data line of a segments CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = [(n, line) for n, line in enumerate(f, start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
    rows = csv.reader((line for _, line in lines), skipinitialspace=True)
    return [(n, [x.strip() for x in row]) for (n, _), row in zip(lines, rows)]


def _index_audio(folders: list[Path]) -> dict[str, str]:
    # file stem -> path; the first folder wins when both hold the same name
    found: dict[str, str] = {}
    for folder in folders:
        if folder.is_dir():
            for entry in sorted(os.listdir(folder)):
                if is_audio(entry):
                    found.setdefault(os.path.splitext(entry)[0], absolute(folder / entry))
    return found


def _time_forms(text: str) -> list[str]:
    value = float(text)
    forms = [text, f"{value:.1f}", f"{value:.3f}"]
    if value.is_integer():
        forms.append(str(int(value)))
    return list(dict.fromkeys(forms))


def candidate_names(ytid: str, start: str, end: str) -> list[str]:
    """File stems that count as the segment ``ytid`` from ``start`` to ``end`` seconds.

    >>> candidate_names("abc", "30.000", "40.000")[:4]
    ['abc', 'Yabc', 'abc_30.000_40.000', 'abc_30.000_40.0']
    """
    names = [ytid, "Y" + ytid]
    for prefix in ("", "Y"):
        for s in _time_forms(start):
            names += [f"{prefix}{ytid}_{s}_{e}" for e in _time_forms(end)]
            names.append(f"{prefix}{ytid}_{s}")
    return names


def load(csv_file: str) -> Manifest:
    """A multi-label manifest of the segments in ``csv_file`` that have a local audio file.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / CLASS_INDEX).write_text("index,mid,display_name\\n"
    ...                                     "0,/m/09x0r,Speech\\n1,/m/05tny_,Bark\\n")
    >>> _ = (root / "balanced_train_segments.csv").write_text(
    ...     "# YTID, start_seconds, end_seconds, positive_labels\\n"
    ...     '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05tny_"\\n'
    ...     '--ZhevVpy1s, 50.000, 60.000, "/m/09x0r"\\n')
    >>> (root / "audio").mkdir()
    >>> (root / "audio" / "Y--PJHxphWEs_30.000_40.000.wav").touch()  # only the first was fetched
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     m = load(str(root / "balanced_train_segments.csv"))
    >>> print(caught[0].message)  # doctest: +ELLIPSIS
    /...: 1 of 2 segments have no local audio file and are skipped (e.g. --ZhevVpy1s)
    >>> m.labels, m.meta["missing"]
    (['Speech', 'Bark'], 1)
    >>> Path(m.items[0].path).name, m.items[0].labels, m.items[0].split
    ('Y--PJHxphWEs_30.000_40.000.wav', ('Speech', 'Bark'), 'train')
    """
    csv_path = Path(csv_file)
    if not csv_path.is_file():
        raise DataError(csv_path, "missing AudioSet segments CSV")
    labels, display = class_map(find_class_index(csv_path))
    audio = _index_audio([csv_path.parent, csv_path.parent / "audio"])
    split = split_of(csv_path)

    items, missing, rows = [], [], _segments(csv_path)
    for n, row in rows:
        if len(row) < 4:
            raise DataError(csv_path, f"line {n}: expected YTID, start, end, \"labels\"; "
                            f"got {len(row)} field(s)")
        ytid, start, end, mids = row[0], row[1], row[2], ",".join(row[3:])
        try:
            names = candidate_names(ytid, start, end)
        except ValueError:
            raise DataError(csv_path, f"line {n}: start and end must be seconds, got "
                            f"{start!r} and {end!r}") from None
        unknown = [m for m in mids.split(",") if m.strip() and m.strip() not in display]
        if unknown:
            raise DataError(csv_path, f"line {n}: label id(s) {', '.join(unknown)} are not in "
                            f"{CLASS_INDEX}")
        path = next((audio[s] for s in names if s in audio), None)
        if path is None:
            missing.append(ytid)
            continue
        tags = tuple(dict.fromkeys(display[m.strip()] for m in mids.split(",") if m.strip()))
        items.append(Item(path=path, labels=tags, split=split))
    if not items:
        raise DataError(csv_path, f"none of its {len(rows)} segments has a local audio file "
                        f"in {csv_path.parent} or {csv_path.parent / 'audio'}")
    if missing:
        warnings.warn(f"{csv_path}: {len(missing)} of {len(rows)} segments have no local audio "
                      f"file and are skipped (e.g. {', '.join(missing[:3])})", stacklevel=2)
    return Manifest(items=items, labels=labels, multi_label=True, name=f"audioset:{csv_path.stem}",
                    meta={"missing": len(missing)})
