"""Clips inside containers: CONTAINER#KEY paths and the decoding of in-memory audio."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from earmark.audio.packed import decode_bytes, member_of
from earmark.errors import AudioError


def encoded(x, subtype, fmt="WAV"):
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format=fmt, subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm_wav_in_memory_decodes_as_soundfile_does(channels):
    x = (np.random.default_rng(0).standard_normal((800, channels)) * 0.3).clip(-1, 1)
    data = encoded(x, "PCM_16")
    got, rate = decode_bytes(data, "clip")
    want, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert rate == 16000 and got.dtype == np.float32 and np.array_equal(got, want)


def test_other_encodings_go_through_soundfile_and_garbage_is_named():
    x = np.linspace(-0.5, 0.5, 400)[:, None]
    for data in (encoded(x, "FLOAT"), encoded(x, "PCM_24"), encoded(x, "PCM_16", "FLAC")):
        got, _ = decode_bytes(data, "clip")
        np.testing.assert_allclose(got, x, atol=1 / 2 ** 15)
    with pytest.raises(AudioError, match="shard.tar#7: cannot decode"):
        decode_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk", "shard.tar#7")
    with pytest.raises(AudioError, match="empty audio member"):
        decode_bytes(b"", "shard.tar#8")


def test_member_paths():
    assert member_of("x/p.H5#a/b.wav") == ("x/p.H5", "hdf5", "a/b.wav")
    assert member_of("take#2.wav") is None  # a file name with a hash is a file
    assert member_of("d/s.tar#k#1") == ("d/s.tar", "tar", "k#1")
