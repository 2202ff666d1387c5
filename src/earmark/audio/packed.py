"""Clips stored inside a container file: a tar shard or an HDF5 waveform pack.

A clip in a container has the path ``CONTAINER#KEY``:

- ``shards/shard-000003.tar#000000042``: the member ``000000042.flac`` (or ``.wav``, any
  member of that key that is not metadata such as ``.json``) of a tar shard (what ``earmark shard`` writes, or any WebDataset
  tar of audio);
- ``hdf5/balanced_train.h5#17``: row 17 of the ``waveform`` dataset of a PANNs / HTS-AT pack
  (int16 samples, 32 kHz unless the file's ``sample_rate`` attribute says otherwise, scaled by
  1/32767 as HTS-AT's ``int16_to_float32`` does);
- ``hdf5/balanced.h5#Y0abc_30.000.wav``: the dataset of that name in a SAT / CED pack (one
  dataset per clip, int16 or float, 16 kHz unless a ``sample_rate`` attribute says otherwise;
  integers scaled by 1/32768 as SAT's ``WeakHDF5Dataset`` does).

:func:`earmark.audio.io.load_audio` and :func:`~earmark.audio.io.audio_info` read such paths
like files, so every command that reads a manifest reads containers too. Open HDF5 files and
the member tables of tar shards are kept per process (DataLoader workers open their own).

    >>> member_of("a/shard-000000.tar#000000007")
    ('a/shard-000000.tar', 'tar', '000000007')
    >>> member_of("dog.wav") is None
    True
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import wave
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from earmark.errors import AudioError, HeaderError, TooLongError

TAR_SUFFIXES = (".tar",)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
PANNS_RATE = 32000  # PANNs / HTS-AT packs hold 32 kHz clips
SAT_RATE = 16000  # SAT / CED packs hold 16 kHz clips
# members of a sample that are not its audio (WebDataset names members KEY.EXT)
METADATA = ("json", "txt", "cls", "npy", "pt", "pth", "pickle")
_SUFFIX = "|".join(re.escape(x) for x in TAR_SUFFIXES + HDF5_SUFFIXES)
_MEMBER = re.compile(rf"^(.*?(?:{_SUFFIX}))#(.+)$", re.IGNORECASE)


def member_of(path: str | os.PathLike) -> tuple[str, str, str] | None:
    """``(container, kind, key)`` of a ``CONTAINER#KEY`` path (kind ``tar`` or ``hdf5``), or
    None for an ordinary path."""
    text = os.fspath(path)
    if "#" not in text:
        return None
    m = _MEMBER.match(text)
    if m is None:
        return None
    container, key = m.group(1), m.group(2)
    kind = "tar" if container.lower().endswith(TAR_SUFFIXES) else "hdf5"
    return container, kind, key


def member_path(container: str | os.PathLike, key: str | int) -> str:
    """The path of clip ``key`` inside ``container``."""
    return f"{os.fspath(container)}#{key}"


def split_member_name(name: str) -> tuple[str, str]:
    """(key, extension) of a tar member named as WebDataset names them, ``dir/KEY.EXT``.

    >>> split_member_name("a/000000042.flac")
    ('000000042', 'flac')
    """
    key, _, ext = name.rpartition("/")[2].partition(".")
    return key, ext


def is_audio_member(member: tarfile.TarInfo) -> bool:
    """Whether a tar member is a sample's audio: a file ``KEY.EXT`` whose EXT is no metadata."""
    _, ext = split_member_name(member.name)
    return member.isfile() and bool(ext) and ext.lower() not in METADATA


def shard_record(shard: str | os.PathLike) -> str:
    """The record ``earmark shard`` writes beside a shard (a path or URL):
    ``shard-000003.tar`` -> ``shard-000003.json``."""
    text = os.fspath(shard)
    return text[: -len(".tar")] + ".json" if text.endswith(".tar") else text + ".json"


# ---- tar shards -------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _tar_table(container: str, mtime: float) -> dict[str, tuple[int, int]]:
    """key -> (data offset, size) of the audio members of a local shard (headers only: tarfile
    seeks past the data)."""
    try:
        with tarfile.open(container) as tar:
            return {split_member_name(m.name)[0]: (m.offset_data, m.size)
                    for m in tar if is_audio_member(m)}
    except (tarfile.TarError, OSError) as err:
        raise AudioError(container, f"not a readable tar shard ({err})") from None


def is_url(text: str | os.PathLike) -> bool:
    """Whether a shard is named by an http(s) URL rather than a path."""
    return os.fspath(text).startswith(("http://", "https://"))


def fetch(url: str, start: int | None = None, size: int | None = None) -> bytes:
    """The bytes of ``url`` (``size`` of them from ``start`` with a range request); AudioError
    naming the URL when it cannot be read. A server that ignores ranges is read only up to the
    end of the range."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if start is not None:
        request.add_header("Range", f"bytes={start}-{start + size - 1}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if start is None or response.status == 206:
                return response.read()
            return response.read(start + size)[start:]
    except (urllib.error.URLError, OSError) as err:
        raise AudioError(url, f"cannot be read ({err})") from None


@lru_cache(maxsize=64)
def record_samples(shard: str) -> tuple[dict, ...]:
    """The samples' metadata in the record of a shard served over http(s), fetched once per
    process (the manifest and the reads by range both need it)."""
    record = shard_record(shard)
    try:
        return tuple(json.loads(fetch(record))["samples"])
    except (ValueError, KeyError, TypeError):
        raise AudioError(record, "not a shard record of earmark shard (JSON with samples); "
                         "shards on a web server are read through their records") from None


def _member_table(container: str) -> dict[str, tuple[int, int]]:
    """key -> (data offset, size) of a shard's audio members: from the tar headers of a local
    file, from the record of a shard served over http(s)."""
    if is_url(container):
        table = {m["key"]: (m["offset"], m["size"]) for m in record_samples(container)
                 if "offset" in m}
        if not table:
            raise AudioError(shard_record(container), "lists no member offsets; clips of shards "
                             "on a web server are read by range, which needs them")
        return table
    try:
        mtime = os.stat(container).st_mtime
    except OSError:
        raise AudioError(container, "shard not found") from None
    return _tar_table(container, mtime)


def _read_tar(container: str, key: str) -> tuple[np.ndarray, int]:
    name = member_path(container, key)
    table = _member_table(container)
    if key not in table:
        raise AudioError(name, "no audio member with this key in the shard")
    offset, size = table[key]
    if is_url(container):
        data = fetch(container, offset, size)
    else:
        with open(container, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    return decode_bytes(data, name)


# What a header may say. Below 1 kHz nothing a tagger hears survives, and resampling up to
# the model's rate would multiply the samples (a 1 Hz header turns 1 MB into 16 GB at 16 kHz);
# 384 kHz is the highest rate studio converters record at.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
MAX_CHANNELS = 64  # 7th-order ambisonics; more is not a recording of a scene


def check_header(name: str, sample_rate: int, channels: int, frames: int | None = None,
                 max_seconds: float | None = None) -> None:
    """Raise :class:`~earmark.errors.HeaderError` naming ``name`` when a header's sample
    rate, channel count or length cannot be right, or the audio is longer than
    ``max_seconds``: checked before the samples are decoded, so a small file cannot claim a
    huge decoding job.

    >>> check_header("a.wav", 0, 1)
    Traceback (most recent call last):
    ...
    earmark.errors.HeaderError: a.wav: sample rate 0 Hz in the header is outside 1000-384000 Hz
    """
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise HeaderError(name, f"sample rate {sample_rate} Hz in the header is outside "
                                f"{MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise HeaderError(name, f"{channels} channels in the header; 1-{MAX_CHANNELS} are taken")
    if frames is not None and frames < 0:
        raise HeaderError(name, f"negative length ({frames} frames) in the header")
    if frames is not None and max_seconds is not None and frames > max_seconds * sample_rate:
        raise TooLongError(name, f"{frames / sample_rate:.1f} s of audio, longer than the "
                                 f"{max_seconds:g} s taken")


def decode_bytes(data: bytes, name: str, max_seconds: float | None = None
                 ) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, sample rate) of an encoded audio file in memory.
    AudioError naming ``name`` when it cannot be decoded; HeaderError (a kind of AudioError)
    when its header fails :func:`check_header` (``max_seconds``: the longest audio taken),
    before anything is decoded. A last frame cut off by the end of the data is dropped, as
    soundfile drops it."""
    if not data:
        raise AudioError(name, "empty audio member (0 bytes)")
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":  # 16-bit PCM: no decoder needed
        pcm = _pcm16(data, name, max_seconds)
        if pcm is not None:
            return pcm
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            check_header(name, f.samplerate, f.channels, f.frames, max_seconds)
            x, sr = f.read(dtype="float32", always_2d=True), f.samplerate
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        detail = getattr(err, "error_string", None) or str(err)  # not the BytesIO's repr
        raise AudioError(name, f"cannot decode audio: {detail}") from None
    return x, sr


def _pcm16(data: bytes, name: str, max_seconds: float | None) -> tuple[np.ndarray, int] | None:
    """(samples, rate) of a 16-bit PCM WAV in memory, scaled as soundfile scales them; None
    for any other WAV (soundfile reads those)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2:
                return None
            channels, rate = w.getnchannels(), w.getframerate()
            # the header's length may be anything: what the data holds is what counts
            check_header(name, rate, channels, min(w.getnframes(), len(data) // 2 // channels),
                         max_seconds)
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError):
        return None
    whole = len(frames) // (2 * channels) * 2 * channels  # a cut-off last frame is dropped
    x = np.frombuffer(frames[:whole], dtype="<i2").astype(np.float32) / np.float32(32768.0)
    return x.reshape(-1, channels), rate


# ---- HDF5 packs -------------------------------------------------------------------------------

_open_h5: dict[tuple[int, str], object] = {}  # (process id, path) -> open h5py.File


def open_hdf5(container: str | os.PathLike):
    """The container opened read-only, kept open for this process."""
    import h5py

    key = (os.getpid(), os.fspath(container))
    f = _open_h5.get(key)
    if f is None:
        if not Path(container).is_file():
            raise AudioError(container, "HDF5 pack not found")
        try:
            f = h5py.File(container, "r")
        except OSError as err:
            raise AudioError(container, f"not a readable HDF5 file ({err})") from None
        _open_h5[key] = f
    return f


def hdf5_rate(obj, default: int) -> int:
    """The ``sample_rate`` attribute of an HDF5 dataset or file, else ``default``."""
    rate = obj.attrs.get("sample_rate")
    if rate is None and hasattr(obj, "file") and obj.file is not obj:
        rate = obj.file.attrs.get("sample_rate")
    return default if rate is None else int(np.asarray(rate).reshape(-1)[0])


def _hdf5_clip(container: str, key: str):
    """(dataset, row or None, integer scale, sample rate) of a clip in an HDF5 pack."""
    f = open_hdf5(container)
    if "waveform" in f and key.isdigit():  # PANNs / HTS-AT: rows of one int16 matrix
        data, row = f["waveform"], int(key)
        if row >= data.shape[0]:
            raise AudioError(member_path(container, key),
                             f"row {row} is beyond the pack's {data.shape[0]} clips")
        return data, row, 32767.0, hdf5_rate(data, PANNS_RATE)
    # SAT / CED: one dataset per clip, named by the clip's file name (or its base name)
    for candidate in (key, os.path.basename(key)):
        if candidate in f and hasattr(f[candidate], "shape"):
            return f[candidate], None, 32768.0, hdf5_rate(f[candidate], SAT_RATE)
    raise AudioError(member_path(container, key), "no clip of this name in the HDF5 pack")


def _read_hdf5(container: str, key: str) -> tuple[np.ndarray, int]:
    data, row, scale, rate = _hdf5_clip(container, key)
    x = np.asarray(data[row] if row is not None else data[()])
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / np.float32(scale)
    x = x.astype(np.float32, copy=False)
    x = x.reshape(-1, 1) if x.ndim == 1 else x.T  # (frames, channels)
    return np.ascontiguousarray(x), rate


# ---- both -------------------------------------------------------------------------------------


def member_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(sample rate, frames, channels) of a ``CONTAINER#KEY`` clip without decoding all of it
    where the container allows (HDF5: the dataset's shape)."""
    container, kind, key = _parts(path)
    if kind == "hdf5":
        data, row, _, rate = _hdf5_clip(container, key)
        shape = data.shape[1:] if row is not None else data.shape  # (frames,) or (C, frames)
        return rate, (shape[-1] if shape else 0), (shape[0] if len(shape) == 2 else 1)
    x, sr = read_member(path)
    return sr, x.shape[0], x.shape[1]


def read_member(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """(samples (frames, channels) float32, sample rate) of a ``CONTAINER#KEY`` clip, as
    stored (:func:`earmark.audio.io.load_audio` checks them). AudioError naming the clip's
    path for a missing container or key or an undecodable member."""
    container, kind, key = _parts(path)
    return _read_tar(container, key) if kind == "tar" else _read_hdf5(container, key)


def _parts(path: str | os.PathLike) -> tuple[str, str, str]:
    found = member_of(path)
    if found is None:
        raise AudioError(path, "not a CONTAINER#KEY path")
    return found
