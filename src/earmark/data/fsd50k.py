"""``fsd50k:DIR``: FSD50K, 51k Freesound clips with 200 multi-label classes.

Layout of the Zenodo release, unzipped into ``DIR``::

    FSD50K.ground_truth/vocabulary.csv   index,label,mid (no header), the vocabulary order
    FSD50K.ground_truth/dev.csv          fname,labels,mids,split   split is train or val
    FSD50K.ground_truth/eval.csv         fname,labels,mids
    FSD50K.dev_audio/{fname}.wav
    FSD50K.eval_audio/{fname}.wav

``labels`` is a quoted, comma-separated list of names from the vocabulary. ``val`` becomes
``valid`` and the eval set ``test``. A clip the ground truth lists but the audio folders lack
is an error (a download that did not finish), listing how many and the first few.
"""

from __future__ import annotations

import csv
from pathlib import Path

from earmark.data.manifest import Item, Manifest
from earmark.data.paths import absolute, check_audio_exists, read_table, require_file
from earmark.errors import DataError

GROUND_TRUTH = "FSD50K.ground_truth"
_SPLITS = {"train": "train", "val": "valid"}


def _vocabulary(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    try:
        indexed = sorted((int(r[0]), r[1].strip()) for r in rows)
    except (ValueError, IndexError):
        raise DataError(path, "expected rows index,label,mid with no header") from None
    return [name for _, name in indexed]


def load(root: str) -> Manifest:
    """A multi-label manifest of FSD50K under ``root``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> gt = root / GROUND_TRUTH
    >>> gt.mkdir()
    >>> _ = (gt / "vocabulary.csv").write_text("0,Bark,/m/05tny_\\n1,Speech,/m/09x0r\\n")
    >>> _ = (gt / "dev.csv").write_text("fname,labels,mids,split\\n"
    ...                                 '64760,"Bark,Speech","/m/05tny_,/m/09x0r",train\\n'
    ...                                 "16399,Speech,/m/09x0r,val\\n")
    >>> _ = (gt / "eval.csv").write_text("fname,labels,mids\\n37199,Bark,/m/05tny_\\n")
    >>> for name in ["dev_audio/64760", "dev_audio/16399", "eval_audio/37199"]:
    ...     (root / f"FSD50K.{name}.wav").parent.mkdir(exist_ok=True)
    ...     (root / f"FSD50K.{name}.wav").touch()  # load() only checks that the clips exist
    >>> m = load(str(root))
    >>> m.labels, m.multi_label, m.split_sizes()
    (['Bark', 'Speech'], True, {'train': 1, 'valid': 1, 'test': 1})
    >>> m.items[0].labels
    ('Bark', 'Speech')
    """
    root_path = Path(root)
    gt = root_path / GROUND_TRUTH
    vocab_csv = require_file(gt / "vocabulary.csv", "FSD50K vocabulary")
    dev_csv = require_file(gt / "dev.csv", "FSD50K dev ground truth")
    eval_csv = require_file(gt / "eval.csv", "FSD50K eval ground truth")
    labels = _vocabulary(vocab_csv)
    known = set(labels)

    items = []
    for table, audio_dir, has_split in ((dev_csv, "FSD50K.dev_audio", True),
                                        (eval_csv, "FSD50K.eval_audio", False)):
        rows = read_table(table, ["fname", "labels"] + (["split"] if has_split else []))
        listed = []
        for n, row in enumerate(rows, start=2):
            names = tuple(x.strip() for x in row["labels"].split(",") if x.strip())
            unknown = [x for x in names if x not in known]
            if unknown:
                raise DataError(table, f"line {n}: label(s) {', '.join(unknown)} not in "
                                f"{vocab_csv.name}")
            if has_split:
                if row["split"] not in _SPLITS:
                    raise DataError(table, f"line {n}: split {row['split']!r} is not train or val")
                split = _SPLITS[row["split"]]
            else:
                split = "test"
            path = absolute(root_path / audio_dir / f"{row['fname']}.wav")
            listed.append(Item(path=path, labels=names, split=split))
        check_audio_exists((it.path for it in listed), table)
        items += listed
    return Manifest(items=items, labels=labels, multi_label=True, name="fsd50k")
