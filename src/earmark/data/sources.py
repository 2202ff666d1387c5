"""Data SPECs: which adapter reads ``KIND:PATH`` (``fsdd:/data/fsdd``, ``manifest:x.csv``).

A new data source is a module of this package with a ``load(location) -> Manifest`` function
and one row in :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from earmark.data import (
    audioset,
    desed,
    esc50,
    folder,
    fsd50k,
    fsdd,
    hdf5,
    manifest_file,
    shards,
    speechcommands,
    synth,
)
from earmark.data.manifest import Manifest
from earmark.errors import DataError

SOURCES: dict[str, Callable[[str], Manifest]] = {
    "audioset": audioset.load,  # AudioSet segment CSVs and a folder of clips
    "desed": desed.load,  # DESED / DCASE task 4 tables (weak, strong, unlabelled)
    "esc50": esc50.load,  # ESC-50: meta/esc50.csv, five folds
    "folder": folder.load,  # one sub-folder per label
    "fsd50k": fsd50k.load,  # FSD50K ground-truth CSVs
    "fsdd": fsdd.load,  # Free Spoken Digit Dataset recordings
    "hdf5": hdf5.load,  # PANNs / HTS-AT and SAT / CED waveform packs
    "manifest": manifest_file.load,  # earmark's own CSV / JSONL manifests
    "shards": shards.load,  # what earmark shard wrote, or a brace pattern of tar shards
    "speechcommands": speechcommands.load,  # Speech Commands v1/v2 with their split lists
    "synth": synth.load,  # earmark's synthetic clips and soundscapes
}


def sources() -> list[str]:
    """The KINDs a data SPEC can name."""
    return sorted(SOURCES)


def from_spec(spec: str) -> Manifest:
    """Resolve a data SPEC such as ``fsdd:/data/fsdd`` or ``manifest:files.csv``.

    >>> from_spec("vggsound:/data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    earmark.errors.DataError: vggsound:/data: unknown data kind 'vggsound'; known: ['audioset', ...]
    """
    if ":" not in spec:
        raise DataError(spec, f"a data SPEC is KIND:PATH with KIND one of {sources()}")
    kind, _, location = spec.partition(":")
    if kind not in SOURCES:
        raise DataError(spec, f"unknown data kind {kind!r}; known: {sources()}")
    if not Path(location).exists() and "{" not in location:  # braces: a pattern of shards
        raise DataError(location, "does not exist")
    return SOURCES[kind](location)


def audio_inputs(inputs: list[str], errors: list | None = None) -> list:
    """The audio that a list of command-line inputs names, in the order given: files, folders
    (searched recursively), clips in packs or shards (``PACK#KEY``) and data SPECs
    (``shards:DIR``, ``hdf5:pack.h5``: every clip of the set).

    Paths that cannot be read and folders without audio are appended to ``errors`` as
    :class:`~earmark.errors.AudioError` (raised at once without ``errors``), so a batch goes
    on with the rest; a SPEC that cannot be read raises :class:`DataError`.

        >>> import tempfile, numpy as np, soundfile as sf
        >>> root = Path(tempfile.mkdtemp())
        >>> sf.write(root / "a.wav", np.zeros(800), 8000)
        >>> problems = []
        >>> [Path(p).name for p in audio_inputs([str(root), str(root / "gone.wav")], problems)]
        ['a.wav']
        >>> len(problems)
        1
    """
    from earmark.audio.io import find_audio_files
    from earmark.audio.packed import member_of

    files: list = []
    for text in inputs:
        if member_of(text) is not None:
            files.append(text)
        elif text.partition(":")[0] in sources() and not Path(text).exists():
            files += [it.path for it in from_spec(text).items]
        else:
            files += find_audio_files([text], errors=errors)
    return files
