"""``desed:DIR``: DESED (DCASE task 4) sound event detection data with strong labels.

Labels come from tab-separated tables with the header ``filename onset offset event_label``;
a file has one row per event, and a row with empty onset and offset is a weak (clip-level)
label. Weak tables with the header ``filename event_labels`` (comma-separated labels) are
read too; tables with neither column (unlabelled lists, ``*_durations.tsv``) are skipped
and named in ``manifest.meta["skipped_tables"]``.

Two layouts are accepted:

- the DESED release: ``DIR/metadata/<part>/<name>.tsv`` with its audio in
  ``DIR/audio/<part>/<name>/`` (e.g. ``metadata/validation/validation.tsv`` and
  ``audio/validation/validation/``), or in ``DIR/audio/<part>/`` when that folder is absent;
- flat: ``DIR/*.tsv`` with the audio in ``DIR/audio/`` (or in ``DIR`` itself).

The split is read from the table's path, first folder first: a name containing ``valid``
is ``valid``; ``eval``, ``test`` or ``public`` is ``test``; anything else is ``train``.

Each audio file becomes one multi-label item carrying all its labels (clip level); the
strong events stay in ``manifest.meta["events"]``, a dict ``path -> [(onset, offset, label)]``
sorted by onset. The vocabulary is DESED's ten classes (:data:`LABELS`) when every label is
one of them, so models trained on any DESED subset line up, and the sorted labels found
otherwise. Files of the real DESED sets are downloaded from YouTube and some are always
missing, so a row naming an absent file is skipped with a warning and counted in
``manifest.meta["missing"]``; a missing audio folder is an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from earmark.data.manifest import Item, Manifest, vocabulary
from earmark.data.paths import absolute, read_rows, require_dir
from earmark.errors import DataError

# The ten DESED classes (DCASE 2019-2023 task 4), in alphabetical order.
LABELS = [
    "Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush",
    "Frying", "Running_water", "Speech", "Vacuum_cleaner",
]

_SPLIT_WORDS = (("valid", "valid"), ("eval", "test"), ("test", "test"), ("public", "test"),
                ("train", "train"))

Event = tuple[float, float, str]


def split_of_names(names: list[str]) -> str:
    """The split that the first telling folder or file name implies; ``train`` if none does.

    >>> split_of_names(["validation", "synthetic21_validation", "soundscapes"])
    'valid'
    """
    for name in names:
        for word, split in _SPLIT_WORDS:
            if word in name.lower():
                return split
    return "train"


def _tables(root: Path) -> tuple[list[tuple[Path, Path | None, str]], Path]:
    """(table, audio folder or None, split) per TSV, and the folder holding the tables."""
    meta = root / "metadata"
    found = []
    if meta.is_dir():
        for table in sorted(meta.rglob("*.tsv")):
            rel = table.relative_to(meta).with_suffix("")
            audio = next((d for d in (root / "audio" / rel, root / "audio" / rel.parent)
                          if d.is_dir()), None)
            found.append((table, audio, split_of_names(list(rel.parts))))
        return found, meta
    audio = root / "audio" if (root / "audio").is_dir() else root
    return [(t, audio, split_of_names([t.stem])) for t in sorted(root.glob("*.tsv"))], root


def _read_table(table: Path) -> tuple[str | None, list[dict]]:
    header, rows = read_rows(table, delimiter="\t")
    kind = "strong" if "event_label" in header else "weak" if "event_labels" in header else None
    if kind is None or "filename" not in header:
        return None, []
    return kind, rows


def _float(text: str, table: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(table, f"line {line}: onset/offset {text!r} is not a number") from None


def load(root: str) -> Manifest:
    """A multi-label, clip-level manifest of DESED-style tables under ``root``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "metadata" / "validation").mkdir(parents=True)
    >>> (root / "audio" / "validation" / "validation").mkdir(parents=True)
    >>> _ = (root / "metadata" / "validation" / "validation.tsv").write_text(
    ...     "filename\\tonset\\toffset\\tevent_label\\n"
    ...     "a.wav\\t0.47\\t1.34\\tDog\\n"
    ...     "a.wav\\t2.0\\t5.5\\tSpeech\\n"
    ...     "b.wav\\t\\t\\t\\n")  # b.wav holds no event
    >>> for name in ["a.wav", "b.wav"]:
    ...     (root / "audio" / "validation" / "validation" / name).touch()  # only checked to exist
    >>> m = load(str(root))
    >>> m.split_sizes(), m.labels == LABELS
    ({'train': 0, 'valid': 2, 'test': 0}, True)
    >>> item = m.split("valid").items[0]
    >>> item.labels, m.meta["events"][item.path]
    (('Dog', 'Speech'), [(0.47, 1.34, 'Dog'), (2.0, 5.5, 'Speech')])
    """
    root_path = require_dir(root, "DESED folder")
    tables, table_dir = _tables(root_path)
    labels_of: dict[str, list[str]] = {}
    split_of: dict[str, str] = {}
    events: dict[str, list[Event]] = {}
    skipped, missing, listed = [], [], 0
    for table, audio_dir, split in tables:
        kind, rows = _read_table(table)
        if kind is None:
            skipped.append(str(table))
            continue
        if audio_dir is None:
            rel = table.relative_to(table_dir).with_suffix("")
            raise DataError(root_path / "audio" / rel, f"missing audio folder for {table}")
        for n, row in enumerate(rows, start=2):
            path = absolute(audio_dir / row["filename"])
            if path not in split_of:
                listed += 1
                if not Path(path).is_file():
                    missing.append(path)
                    split_of[path] = "missing"
                    continue
                split_of[path] = split
                labels_of[path] = []
            if split_of[path] == "missing":
                continue
            if kind == "weak":
                labels_of[path] += [x.strip() for x in row["event_labels"].split(",") if x.strip()]
                continue
            label = row["event_label"]
            if not label:
                continue  # a file listed with no event in it: a clip with no labels
            labels_of[path].append(label)
            if row.get("onset") and row.get("offset"):
                event = (_float(row["onset"], table, n), _float(row["offset"], table, n), label)
                events.setdefault(path, []).append(event)

    if not labels_of:
        raise DataError(root_path, "no labelled audio found; expected metadata/**/*.tsv with "
                        "a filename and event_label column and audio/ beside it")
    if missing:
        warnings.warn(f"{root_path}: {len(missing)} of {listed} listed audio files are missing "
                      f"and skipped (e.g. {missing[0]})", stacklevel=2)
    items = [Item(path=p, labels=tuple(sorted(set(labs))), split=split_of[p])
             for p, labs in labels_of.items()]
    found = vocabulary(items)
    labels = list(LABELS) if set(found) <= set(LABELS) else found
    return Manifest(items=items, labels=labels, multi_label=True, name="desed",
                    meta={"events": {p: sorted(ev) for p, ev in events.items()},
                          "missing": len(missing), "skipped_tables": skipped})
