"""The docstring examples of ``src/earmark`` run in a fresh folder that holds the files they
name, so an example reads as a user would write it: ``load_audio("dog.wav")``.

- ``dog.wav``: 5 s of a 16 kHz tone, mono;
- ``stereo_44k.flac``: 1 s at 44.1 kHz, two channels;
- ``street.flac``: 64 s at 16 kHz (an event 61.5 s in);
- ``clips/a.wav``, ``clips/sub/b.flac`` and ``extra.wav``: a folder of clips and one more file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from _pytest.doctest import DoctestItem

EXAMPLES = {  # name -> (seconds, sample rate, channels)
    "dog.wav": (5.0, 16000, 1),
    "stereo_44k.flac": (1.0, 44100, 2),
    "street.flac": (64.0, 16000, 1),
    "clips/a.wav": (0.5, 16000, 1),
    "clips/sub/b.flac": (0.5, 16000, 1),
    "extra.wav": (0.5, 16000, 1),
}


@pytest.fixture(scope="session")
def example_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("examples")
    rng = np.random.default_rng(0)
    for name, (seconds, rate, channels) in EXAMPLES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(round(seconds * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.01 * rng.standard_normal(t.size)
        sf.write(path, np.stack([x] * channels, axis=1) if channels > 1 else x, rate)
    return root


@pytest.fixture(autouse=True)
def _examples_folder(request, tmp_path, monkeypatch):
    """Each docstring example runs in its own folder, with links to the example files."""
    if not isinstance(request.node, DoctestItem):
        return
    root = request.getfixturevalue("example_files")
    for name in ("dog.wav", "stereo_44k.flac", "street.flac", "clips", "extra.wav"):
        (tmp_path / name).symlink_to(root / name)
    monkeypatch.chdir(tmp_path)
