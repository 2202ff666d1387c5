"""``folder:DIR``: one subfolder per class.

Layout::

    DIR/dog/a.wav
    DIR/dog/more/b.flac       # files are found recursively inside a class folder
    DIR/rain/c.wav

Every audio file under ``DIR/<class>/`` becomes one single-label item. Folders whose name
starts with ``.`` or ``_`` (``_background_noise_``, ``.cache``) are not classes; files lying
directly in ``DIR`` belong to no class and are ignored with a warning.

The split is a deterministic function of the file's path relative to ``DIR``: the SHA-1 of
that path (with ``/`` separators) modulo 10 puts 10 % of the files in ``test`` (0), 10 % in
``valid`` (1) and the rest in ``train``. Adding or removing a file never moves another one,
and the split is the same on every machine. Small classes may end up with no test file.
"""

from __future__ import annotations

import hashlib
import warnings

from earmark.audio.io import AUDIO_EXTENSIONS
from earmark.data.manifest import Item, Manifest
from earmark.data.paths import absolute, audio_files, is_audio, require_dir
from earmark.errors import DataError


def hash_split(relative_path: str) -> str:
    """``train``/``valid``/``test`` (80/10/10) from the SHA-1 of a ``/``-separated path."""
    bucket = int(hashlib.sha1(relative_path.encode("utf-8")).hexdigest()[:8], 16) % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def load(root: str) -> Manifest:
    """A manifest of ``root/<class>/**/<audio>``, one single-label item per file.

    >>> import tempfile
    >>> from pathlib import Path
    >>> root = Path(tempfile.mkdtemp())
    >>> for label in ["dog", "rain"]:
    ...     (root / label).mkdir()
    ...     for i in range(10):
    ...         (root / label / f"{i}.wav").touch()  # load() only lists the files
    >>> m = load(str(root))
    >>> m.labels, m.split_sizes()
    (['dog', 'rain'], {'train': 17, 'valid': 1, 'test': 2})
    """
    root_path = require_dir(root, "class folders")
    classes = sorted(d.name for d in root_path.iterdir()
                     if d.is_dir() and not d.name.startswith((".", "_")))
    stray = [p.name for p in root_path.iterdir() if p.is_file() and is_audio(p)]
    if stray:
        warnings.warn(f"{root_path}: {len(stray)} audio files outside any class folder are "
                      f"ignored (e.g. {stray[0]})", stacklevel=2)
    items = []
    for name in classes:
        for path in audio_files(root_path / name):
            rel = path.relative_to(root_path).as_posix()
            items.append(Item(path=absolute(path), labels=(name,), split=hash_split(rel)))
    if not items:
        raise DataError(root_path, "no audio files found in class subfolders "
                        f"(extensions {', '.join(AUDIO_EXTENSIONS)})")
    used = sorted({it.labels[0] for it in items})
    return Manifest(items=items, labels=used, multi_label=False, name=f"folder:{root_path.name}")
