from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from earmark.audio import io
from earmark.audio.io import (
    audio_info,
    find_audio_files,
    iter_blocks,
    load_audio,
    write_audio,
)
from earmark.errors import AudioError
from tests.conftest import tone

# ---------------------------------------------------------------- bad input

def _missing(tmp_path):
    return tmp_path / "missing.wav"


def _directory(tmp_path):
    d = tmp_path / "clips.wav"
    d.mkdir()
    return d


def _unsupported(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not audio")
    return p


def _corrupt_header(tmp_path):
    p = tmp_path / "corrupt.wav"
    p.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(range(200)))
    return p


def _empty_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    return p


def _zero_samples(tmp_path):
    p = tmp_path / "zero.wav"
    sf.write(p, np.zeros(0, np.float32), 16000)
    return p


BAD_INPUTS = {
    "missing file": (_missing, "file not found"),
    "directory": (_directory, "is a directory"),
    "unsupported format": (_unsupported, "unsupported audio format '.txt'"),
    "corrupt header": (_corrupt_header, "cannot decode audio"),
    "empty file": (_empty_file, "empty file (0 bytes)"),
    "zero samples": (_zero_samples, "contains no samples"),
}

READERS = {
    "load_audio": lambda p: load_audio(p),
    "load_audio resampled": lambda p: load_audio(p, sample_rate=8000, mono=False),
    "audio_info": audio_info,
    "iter_blocks": lambda p: iter_blocks(p, 0.5),
}


@pytest.mark.parametrize("reader", READERS.values(), ids=READERS.keys())
@pytest.mark.parametrize("kind", BAD_INPUTS.keys())
def test_bad_input_raises_audio_error_naming_file_and_reason(tmp_path, kind, reader):
    make, reason = BAD_INPUTS[kind]
    path = make(tmp_path)
    with pytest.raises(AudioError) as info:
        reader(path)
    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert reason in info.value.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_samples_raise_naming_file_and_time(tmp_path, bad):
    x = tone(1.0, 16000)
    x[8000] = bad
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")  # PCM cannot hold NaN
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert str(info.value).startswith(f"{path}: ")
    assert "NaN or infinite" in info.value.reason and "0.500 s" in info.value.reason


def test_silent_audio_is_allowed(write_wav):
    wave, sr = load_audio(write_wav("silence.wav", data=np.zeros(1600, np.float32)))
    assert sr == 16000 and wave.shape == (1600,) and not wave.any()


# ---------------------------------------------------------------- decoding

def test_stereo_is_mixed_down_by_averaging(write_wav):
    x = tone(0.5, 16000)
    stereo = np.stack([x, -0.5 * x], axis=1)
    path = write_wav("stereo.wav", data=stereo)
    ref, _ = sf.read(path, dtype="float32")

    mono, sr = load_audio(path)
    assert sr == 16000 and mono.dtype == torch.float32 and mono.shape == (8000,)
    np.testing.assert_allclose(mono.numpy(), ref.mean(axis=1), atol=1e-7)

    both, _ = load_audio(path, mono=False)
    assert both.shape == (2, 8000)
    np.testing.assert_array_equal(both.numpy(), ref.T)


def _peak_hz(x: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum)) * sr / len(x)


def test_resampling_keeps_frequency_and_duration(write_wav):
    path = write_wav("tone8k.wav", seconds=1.0, sr=8000, freq=440.0)
    wave, sr = load_audio(path, sample_rate=16000)
    assert sr == 16000 and wave.shape == (16000,)
    assert abs(_peak_hz(wave.numpy(), sr) - 440.0) <= 1.0
    # Level kept too: the resampler neither drops nor doubles energy.
    assert np.sqrt(np.mean(wave.numpy()[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), 0.01)


def test_audio_info_reads_header(write_wav):
    info = audio_info(write_wav("s.wav", seconds=1.5, sr=22050, channels=2))
    assert (info.sample_rate, info.frames, info.channels) == (22050, 33075, 2)
    assert info.duration == pytest.approx(1.5)


@pytest.mark.parametrize("ext, atol", [("wav", 1e-4), ("flac", 1e-4), ("ogg", 0.05), ("mp3", 0.05)])
def test_round_trip(tmp_path, ext, atol):
    if not sf.check_format(ext.upper()):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {ext}")
    x = tone(1.0, 16000, freq=440.0)
    path = write_audio(tmp_path / f"a.{ext}", torch.from_numpy(x), 16000)
    wave, sr = load_audio(path)
    assert sr == 16000 and wave.shape == (16000,)
    np.testing.assert_allclose(wave.numpy()[2000:-2000], x[2000:-2000], atol=atol)
    assert abs(_peak_hz(wave.numpy(), sr) - 440.0) <= 1.0


def test_write_audio_takes_channels_first(tmp_path):
    x = np.stack([tone(0.25, 16000, 300.0), tone(0.25, 16000, 600.0)])  # (2, 4000)
    path = write_audio(tmp_path / "st.flac", x, 16000)
    wave, _ = load_audio(path, mono=False)
    assert wave.shape == (2, 4000)
    np.testing.assert_allclose(wave.numpy(), x, atol=1e-4)


# ---------------------------------------------------------------- blocks of long files

@pytest.mark.parametrize("sample_rate, mono", [(None, True), (None, False), (22050, True),
                                               (8000, False)])
def test_iter_blocks_concatenate_to_load_audio(write_wav, sample_rate, mono):
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal((36800, 2))).astype(np.float32)  # 2.3 s stereo at 16 kHz
    path = write_wav("long.wav", data=x)
    whole, sr = load_audio(path, sample_rate, mono)

    blocks = list(iter_blocks(path, 0.5, sample_rate, mono))
    step = round(0.5 * sr)
    assert [b.shape[-1] for b in blocks[:-1]] == [step] * (len(blocks) - 1)
    assert 0 < blocks[-1].shape[-1] <= step
    joined = torch.cat(blocks, dim=-1)
    assert joined.shape == whole.shape
    torch.testing.assert_close(joined, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sample_rate, frames", [(16000, 36800), (22050, 36800), (8000, 16000),
                                                 (8000, 4000)])
def test_iter_array_blocks_concatenate_to_load_audio(write_wav, sample_rate, frames):
    """Samples already in memory, blocked as a file's would be: the same wave. 16000 frames
    at 8 kHz fill two reads exactly, 4000 fewer than one."""
    rng = np.random.default_rng(1)
    x = (0.3 * rng.standard_normal((frames, 2))).astype(np.float32)
    whole, _ = load_audio(write_wav("mem.wav", data=x), sample_rate)
    decoded, _ = sf.read(write_wav("mem2.wav", data=x), dtype="float32", always_2d=True)
    blocks = list(io.iter_array_blocks(decoded, 16000, 0.5, sample_rate))
    step = round(0.5 * sample_rate)
    assert [b.shape[-1] for b in blocks[:-1]] == [step] * (len(blocks) - 1)
    torch.testing.assert_close(torch.cat(blocks), whole, atol=1e-5, rtol=0)


def test_iter_blocks_reports_nan_with_time(tmp_path):
    x = tone(2.0, 16000)
    x[20000] = np.nan  # 1.25 s
    path = tmp_path / "nan_late.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    blocks = iter_blocks(path, 0.5)
    assert next(blocks).shape == (8000,)
    with pytest.raises(AudioError) as info:
        list(blocks)
    assert info.value.path == str(path) and "1.250 s" in info.value.reason


# ---------------------------------------------------------------- atomic writes

def test_write_audio_leaves_no_temp_file(tmp_path):
    write_audio(tmp_path / "out" / "a.wav", np.zeros(100, np.float32), 16000)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.wav"]


def _failing_write(path, *args, **kwargs):
    with open(path, "wb") as fh:
        fh.write(b"RIFF half")
    raise OSError("disk full")


def test_failed_write_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(io.sf, "write", _failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_audio(tmp_path / "a.wav", np.zeros(100, np.float32), 16000)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_existing_target(tmp_path, monkeypatch):
    target = write_audio(tmp_path / "a.wav", tone(0.1, 16000), 16000)
    before = target.read_bytes()
    monkeypatch.setattr(io.sf, "write", _failing_write)
    with pytest.raises(OSError):
        write_audio(target, np.zeros(100, np.float32), 16000)
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_write_audio_rejects_bad_waves_naming_file(tmp_path):
    with pytest.raises(AudioError, match="a.wav: cannot write a wave of shape"):
        write_audio(tmp_path / "a.wav", np.zeros((1, 2, 3)), 16000)
    with pytest.raises(AudioError, match="a.wav: cannot write NaN"):
        write_audio(tmp_path / "a.wav", np.full(10, np.nan), 16000)
    with pytest.raises(AudioError, match="a.aac: cannot write format"):
        write_audio(tmp_path / "a.aac", np.zeros(10), 16000)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- finding files

def test_find_audio_files(tmp_path, write_wav):
    for name in ["b.wav", "sub/c.flac", "sub/deep/d.OGG", "sub/a.mp3", ".hidden/x.wav", "._e.wav"]:
        write_wav(name, seconds=0.01)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub" / "readme.md").write_text("x")

    assert find_audio_files(tmp_path) == [
        tmp_path / "b.wav", tmp_path / "sub/a.mp3", tmp_path / "sub/c.flac",
        tmp_path / "sub/deep/d.OGG",
    ]
    assert find_audio_files([str(tmp_path)], recursive=False) == [tmp_path / "b.wav"]
    # Explicit files are kept (even non-audio ones, so loading reports them); no duplicates.
    assert find_audio_files([tmp_path / "notes.txt", tmp_path / "sub", tmp_path / "sub/c.flac"]) \
        == [tmp_path / "notes.txt", tmp_path / "sub/a.mp3", tmp_path / "sub/c.flac",
            tmp_path / "sub/deep/d.OGG"]


def test_find_audio_files_missing_path_raises(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    with pytest.raises(AudioError) as info:
        find_audio_files([tmp_path, tmp_path / "gone"])
    assert info.value.path == str(tmp_path / "gone")


def test_find_audio_files_reports_every_bad_path_and_keeps_the_rest(tmp_path):
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "a.wav").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    errors: list[AudioError] = []
    found = find_audio_files([tmp_path / "gone.wav", tmp_path / "dangling.wav",
                              tmp_path / "loop.wav", tmp_path / "empty", tmp_path / "clips"],
                             errors=errors)
    assert found == [tmp_path / "clips" / "a.wav"]
    reasons = {Path(e.path).name: e.reason for e in errors}
    assert reasons["gone.wav"] == "no such file or directory"
    assert reasons["dangling.wav"].startswith("dangling symbolic link")
    assert reasons["loop.wav"].startswith("symbolic link loop")
    assert reasons["empty"].startswith("folder holds no audio files")
    # a folder without audio is an error unless asked for (data adapters' class folders)
    with pytest.raises(AudioError, match="no audio"):
        find_audio_files([tmp_path / "empty"])
    assert find_audio_files([tmp_path / "empty"], empty_folders=True) == []


def test_a_broken_mp3_is_reported_quietly_and_truly(tmp_path, capfd):
    path = tmp_path / "broken.mp3"
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 12)
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert "cannot decode audio" in info.value.reason and "not a valid MP3" in info.value.reason
    assert "does not exist" not in str(info.value)
    err = capfd.readouterr().err  # file descriptor 2, where libmpg123 writes
    assert "mpg123" not in err and "warning" not in err, err
