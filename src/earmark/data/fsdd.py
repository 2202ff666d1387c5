"""``fsdd:DIR``: the Free Spoken Digit Dataset.

Files are ``{digit}_{speaker}_{take}.wav`` in ``DIR/recordings/`` (the repository layout)
or directly in ``DIR``. Labels are the digits ``"0"`` .. ``"9"``, single-label.

Splits: the dataset's own README makes takes 0-4 the test set and the rest the training
set. earmark carves a validation set out of training deterministically: takes 5-9 are
``valid``, takes 10 and up ``train``. Every speaker is in every split (the split is by
take, not by speaker); the speakers are listed in ``manifest.meta["speakers"]``, and each
item's ``group`` is its speaker, so ``earmark cv --group-by group`` tests on unheard voices.
"""

from __future__ import annotations

import re
import warnings

from earmark.data.manifest import Item, Manifest
from earmark.data.paths import absolute, require_dir
from earmark.errors import DataError

LABELS = [str(d) for d in range(10)]
TEST_TAKES = range(5)  # official, from the FSDD README
VALID_TAKES = range(5, 10)  # earmark's choice

_NAME = re.compile(r"^(\d)_(.+)_(\d+)$")


def split_of_take(take: int) -> str:
    return "test" if take in TEST_TAKES else "valid" if take in VALID_TAKES else "train"


def load(root: str) -> Manifest:
    """A manifest of the FSDD recordings under ``root``.

    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["0_george_0", "0_george_7", "0_george_12", "7_jackson_3"]:
    ...     (root / f"{name}.wav").touch()  # load() only reads the names
    >>> m = load(str(root))
    >>> m.split_sizes(), m.labels[:3], m.meta["speakers"]
    ({'train': 1, 'valid': 1, 'test': 2}, ['0', '1', '2'], ['george', 'jackson'])
    >>> m.items[0].labels, m.items[0].group
    (('0',), 'george')
    """
    root_path = require_dir(root, "FSDD folder")
    audio_dir = root_path / "recordings" if (root_path / "recordings").is_dir() else root_path
    items, speakers, odd = [], set(), []
    for path in sorted(audio_dir.glob("*.wav")):
        m = _NAME.match(path.stem)
        if m is None:
            odd.append(path.name)
            continue
        digit, speaker, take = m.group(1), m.group(2), int(m.group(3))
        speakers.add(speaker)
        items.append(Item(path=absolute(path), labels=(digit,), split=split_of_take(take),
                          group=speaker))
    if odd:
        warnings.warn(f"{audio_dir}: {len(odd)} .wav files not named "
                      f"{{digit}}_{{speaker}}_{{take}}.wav are ignored (e.g. {odd[0]})",
                      stacklevel=2)
    if not items:
        raise DataError(audio_dir, "no FSDD recordings ({digit}_{speaker}_{take}.wav) found; "
                        "expected them in DIR/recordings/ or DIR/")
    return Manifest(items=items, labels=list(LABELS), multi_label=False,
                    name="fsdd", meta={"speakers": sorted(speakers)})
