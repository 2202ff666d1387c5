"""Shared fixtures: tests make their own small audio on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
FSDD = SHARED / "data" / "fsdd" / "recordings"


def tone(seconds: float = 1.0, sr: int = 16000, freq: float = 440.0, amp: float = 0.5,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


@pytest.fixture
def write_wav(tmp_path):
    """``write_wav(name, seconds=1.0, sr=16000, freq=440.0, channels=1) -> Path``."""

    def make(name: str = "tone.wav", seconds: float = 1.0, sr: int = 16000, freq: float = 440.0,
             channels: int = 1, data: np.ndarray | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        x = tone(seconds, sr, freq, channels=channels) if data is None else data
        sf.write(path, x, sr)
        return path

    return make


@pytest.fixture(scope="session")
def fsdd_dir() -> Path:
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD} (../shared is absent)")
    return FSDD.parent
