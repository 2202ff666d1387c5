"""``speechcommands:DIR``: Google Speech Commands v2 (35 words, one-second clips).

Layout of the v2 archive: one folder per word (``DIR/yes/0a7c2a8d_nohash_0.wav``, ...),
``validation_list.txt`` and ``testing_list.txt`` listing the ``valid`` and ``test`` files as
``word/file.wav`` paths; every other clip is ``train``. Files are named
``{speaker}_nohash_{n}.wav``: the speaker id is each item's ``group`` (None for a file named
otherwise), as the official lists keep a speaker's clips in one split.

``_background_noise_`` holds long noise recordings, not a class: its files are not items;
their paths are in ``manifest.meta["background_noise"]`` for noise augmentation. The
vocabulary is every word folder, sorted (the full 35-word task; the 12-class "10 words +
unknown + silence" variant is not built here).
"""

from __future__ import annotations

from pathlib import Path

from earmark.data.manifest import Item, Manifest
from earmark.data.paths import absolute, audio_files, check_audio_exists, require_dir, require_file
from earmark.errors import DataError

NOISE_DIR = "_background_noise_"
SPEAKER_MARK = "_nohash_"


def speaker_of(filename: str) -> str | None:
    """The speaker id of a clip: ``"0a7c2a8d_nohash_0.wav"`` -> ``"0a7c2a8d"``; None if the name
    does not follow the v2 pattern."""
    speaker, mark, _ = Path(filename).name.partition(SPEAKER_MARK)
    return speaker if mark and speaker else None


def _read_list(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def load(root: str) -> Manifest:
    """A manifest of Speech Commands v2 under ``root``.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ["yes/0a7c2a8d_nohash_0.wav", "yes/0a7c2a8d_nohash_1.wav",
    ...              "no/0b09edd3_nohash_0.wav", "_background_noise_/white_noise.wav"]:
    ...     (root / name).parent.mkdir(exist_ok=True)
    ...     (root / name).touch()  # load() only checks that the files exist
    >>> _ = (root / "validation_list.txt").write_text("yes/0a7c2a8d_nohash_1.wav\\n")
    >>> _ = (root / "testing_list.txt").write_text("no/0b09edd3_nohash_0.wav\\n")
    >>> m = load(str(root))
    >>> m.labels, m.split_sizes()
    (['no', 'yes'], {'train': 1, 'valid': 1, 'test': 1})
    >>> m.items[0].group, [Path(p).name for p in m.meta["background_noise"]]
    ('0b09edd3', ['white_noise.wav'])
    """
    root_path = require_dir(root, "Speech Commands folder")
    split_of: dict[str, str] = {}
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        listing = require_file(root_path / name, f"Speech Commands v2 {split} list")
        entries = _read_list(listing)
        check_audio_exists((str(root_path / e) for e in entries), listing)
        split_of.update({e: split for e in entries})

    words = sorted(d.name for d in root_path.iterdir()
                   if d.is_dir() and not d.name.startswith((".", "_")))
    items = []
    for word in words:
        for path in audio_files(root_path / word):
            rel = path.relative_to(root_path).as_posix()
            items.append(Item(path=absolute(path), labels=(word,),
                              split=split_of.get(rel, "train"), group=speaker_of(path.name)))
    if not items:
        raise DataError(root_path, "no word folders with .wav files found")
    noise_dir = root_path / NOISE_DIR
    noise = [absolute(p) for p in audio_files(noise_dir)] if noise_dir.is_dir() else []
    labels = sorted({it.labels[0] for it in items})
    return Manifest(items=items, labels=labels, multi_label=False, name="speechcommands",
                    meta={"background_noise": noise})
