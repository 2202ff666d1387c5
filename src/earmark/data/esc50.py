"""``esc50:DIR``: ESC-50, 2,000 five-second clips in 50 classes and five folds.

Layout (as in the ESC-50 repository): ``DIR/meta/esc50.csv`` with the columns
``filename,fold,target,category,esc10,src_file,take`` and the clips in ``DIR/audio/``.

The label is ``category``; the vocabulary is ordered by the ``target`` index, so output ``k``
of a model is the class the ESC-50 papers call ``k``. Every item keeps its fold (1-5) in
``Item.fold``. The default split, for a single run, is fold 5 ``test``, fold 4 ``valid``
and folds 1-3 ``train``; cross validation ignores it and uses ``Manifest.for_fold(k)``.
The ESC-10 subset's categories are in ``manifest.meta["esc10"]``. Each item's ``group`` is
its ``src_file``, the freesound recording it was cut from (clips of one recording share a
fold), for ``earmark cv --group-by group``.
"""

from __future__ import annotations

from pathlib import Path

from earmark.data.manifest import Item, Manifest
from earmark.data.paths import absolute, check_audio_exists, read_table, require_dir, require_file
from earmark.errors import DataError

TEST_FOLD = 5
VALID_FOLD = 4


def split_of_fold(fold: int) -> str:
    return "test" if fold == TEST_FOLD else "valid" if fold == VALID_FOLD else "train"


def load(root: str) -> Manifest:
    """A manifest of ESC-50 under ``root``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "meta").mkdir()
    >>> (root / "audio").mkdir()
    >>> rows = ["filename,fold,target,category,esc10,src_file,take"]
    >>> for fold in range(1, 6):  # a dog and a rooster clip in each fold
    ...     for target, category in enumerate(["dog", "rooster"]):
    ...         name = f"{fold}-{100 + target}-A-{target}.wav"
    ...         rows.append(f"{name},{fold},{target},{category},{target == 0},{100 + target},A")
    ...         (root / "audio" / name).touch()  # load() only checks that the clips exist
    >>> _ = (root / "meta" / "esc50.csv").write_text("\\n".join(rows))
    >>> m = load(str(root))
    >>> m.labels, m.folds, m.split_sizes()
    (['dog', 'rooster'], [1, 2, 3, 4, 5], {'train': 6, 'valid': 2, 'test': 2})
    >>> m.meta["esc10"], m.items[0].group
    (['dog'], '100')
    >>> train, test = m.for_fold(1)
    >>> len(train), len(test)
    (8, 2)
    """
    root_path = Path(root)
    meta = require_file(root_path / "meta" / "esc50.csv", "ESC-50 metadata (meta/esc50.csv)")
    audio_dir = require_dir(root_path / "audio", "ESC-50 audio folder")
    rows = read_table(meta, ["filename", "fold", "target", "category"])
    names: dict[int, str] = {}
    esc10: set[str] = set()
    items = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            fold, target = int(row["fold"]), int(row["target"])
        except ValueError:
            raise DataError(meta, f"line {n}: fold and target must be integers, got "
                            f"{row['fold']!r} and {row['target']!r}") from None
        category = row["category"]
        if names.setdefault(target, category) != category:
            raise DataError(meta, f"line {n}: target {target} is {category!r} here but "
                            f"{names[target]!r} earlier")
        if row.get("esc10", "").lower() == "true":
            esc10.add(category)
        items.append(Item(path=absolute(audio_dir / row["filename"]), labels=(category,),
                          split=split_of_fold(fold), fold=fold,
                          group=(row.get("src_file") or "").strip() or None))
    if not items:
        raise DataError(meta, "lists no clips")
    check_audio_exists((it.path for it in items), meta)
    labels = [names[t] for t in sorted(names)]
    return Manifest(items=items, labels=labels, multi_label=False, name="esc50",
                    meta={"esc10": sorted(esc10)})
