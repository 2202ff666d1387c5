"""``manifest:FILE``: a list of files and labels in CSV or JSONL, e.g. one ``Manifest.write`` wrote.

CSV (a ``.csv`` file): a header with at least ``path`` and ``labels``; optional columns
``onset``, ``offset`` (seconds), ``split`` (``train``/``valid``/``test``, default ``train``),
``fold`` (an integer) and ``group`` (any text: speaker, session, device, location; what
``earmark cv --group-by group`` holds out). Empty cells mean "not given"; a file that gives
no split at all has ``manifest.has_splits`` false, and ``earmark eval`` then scores every item.
Inside the ``labels`` cell, labels are separated by ``;`` (what ``Manifest.write`` writes); a
file in which no cell holds a ``;`` is read with ``,`` as the separator instead. A label that
itself contains a comma therefore needs ``;`` somewhere in the file, or JSONL.

JSONL (any other suffix): one object per line with the same keys; ``labels`` is a list of
strings or a string separated as above.

Relative paths are relative to the manifest's folder. The vocabulary is the sorted set of
labels found; ``multi_label`` is true when any item has more than one label. Every listed
audio file must exist (an error lists how many are missing and the first few).
"""

from __future__ import annotations

import json
from pathlib import Path

from earmark.data.manifest import SPLITS, Item, Manifest, vocabulary
from earmark.data.paths import absolute, check_audio_exists, read_table, require_file
from earmark.errors import DataError


def split_labels(text: str, separator: str = ";") -> tuple[str, ...]:
    """``"dog; cat"`` -> ``("dog", "cat")``; blanks dropped, order kept.

    >>> split_labels("dog;cat")
    ('dog', 'cat')
    """
    return tuple(x.strip() for x in text.split(separator) if x.strip())


def _item(row: dict, where: str, base: Path, separator: str) -> Item:
    path = row.get("path")
    if not isinstance(path, str) or not path.strip():
        raise DataError(where, "has no path")
    labels = row.get("labels")
    if labels is None:
        raise DataError(where, "has no labels")
    if isinstance(labels, str):
        labels = split_labels(labels, separator)
    elif isinstance(labels, list) and all(isinstance(x, str) for x in labels):
        labels = tuple(x.strip() for x in labels if x.strip())
    else:
        raise DataError(where, f"labels must be a string or a list of strings, got {labels!r}")
    split = row.get("split") or "train"
    if split not in SPLITS:
        raise DataError(where, f"split {split!r} is not one of {', '.join(SPLITS)}")
    try:
        onset, offset, fold = (_number(row.get("onset"), float), _number(row.get("offset"), float),
                               _number(row.get("fold"), int))
    except ValueError as e:
        raise DataError(where, f"onset, offset and fold must be numbers: {e}") from None
    if onset is not None and offset is not None and offset <= onset:
        raise DataError(where, f"offset {offset} is not after onset {onset}")
    group = row.get("group")
    if isinstance(group, (int, float)) and not isinstance(group, bool):
        group = str(group)  # JSONL speaker ids written as numbers
    elif group is not None and not isinstance(group, str):
        raise DataError(where, f"group must be a string, got {group!r}")
    return Item(path=absolute(base / path.strip()), labels=labels, onset=onset, offset=offset,
                split=split, fold=fold, group=(group or "").strip() or None)


def _number(value, kind):
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return kind(value)


def _rows_csv(path: Path) -> tuple[list[tuple[str, dict]], str]:
    rows = read_table(path, ["path", "labels"])
    separator = ";" if any(";" in r["labels"] for r in rows) else ","
    return [(f"{path}: line {n}", r) for n, r in enumerate(rows, start=2)], separator


def _rows_jsonl(path: Path) -> tuple[list[tuple[str, dict]], str]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(path, f"line {n} is not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(path, f"line {n} is not a JSON object")
            rows.append((f"{path}: line {n}", row))
    texts = [r.get("labels") for _, r in rows if isinstance(r.get("labels"), str)]
    return rows, ";" if any(";" in t for t in texts) else ","


def load(file: str) -> Manifest:
    """The manifest stored in ``file`` (CSV or JSONL).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["a.wav", "b.wav"]:
    ...     (root / name).touch()  # load() only checks that the files exist
    >>> _ = (root / "birds.csv").write_text("path,labels,split,fold,group\\n"
    ...                                     "a.wav,robin,train,1,site-3\\n"
    ...                                     "b.wav,robin;wren,test,2,site-4\\n")
    >>> m = load(str(root / "birds.csv"))
    >>> m.labels, m.multi_label, m.name
    (['robin', 'wren'], True, 'birds')
    >>> m.items[0]  # doctest: +ELLIPSIS +NORMALIZE_WHITESPACE
    Item(path='/.../a.wav', labels=('robin',), onset=None, offset=None, split='train',
         fold=1, group='site-3')
    """
    path = require_file(file, "manifest file")
    rows, separator = (_rows_csv if path.suffix.lower() == ".csv" else _rows_jsonl)(path)
    items = [_item(row, where, path.parent, separator) for where, row in rows]
    if not items:
        raise DataError(path, "lists no audio files")
    check_audio_exists((it.path for it in items), path)
    # every item then reads as train; eval must know that no test split was ever given
    split_column = any(str(row.get("split") or "").strip() for _, row in rows)
    return Manifest(items=items, labels=vocabulary(items),
                    multi_label=any(len(it.labels) > 1 for it in items), name=path.stem,
                    meta={"split_column": split_column})
