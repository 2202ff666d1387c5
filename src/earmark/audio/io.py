"""Decode, resample, mix down and write audio files (soundfile + soxr).

Every bad input raises :class:`earmark.errors.AudioError`, whose message reads
``"<path>: <reason>"`` so a batch command can report the file and carry on.

    >>> wave, sr = load_audio("dog.wav", sample_rate=16000)
    >>> wave.shape, sr
    (torch.Size([80000]), 16000)
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from earmark.audio.packed import check_header, member_info, member_of, read_member
from earmark.errors import AudioError
from earmark.files import atomic_path
from earmark.quiet import native_stderr_silenced

__all__ = [
    "AUDIO_EXTENSIONS",
    "AudioInfo",
    "audio_info",
    "find_audio_files",
    "iter_array_blocks",
    "iter_blocks",
    "load_audio",
    "write_audio",
]

# Containers libsndfile (the decoder behind soundfile) reads in this build: WAV and its
# 64-bit cousins, FLAC, Ogg (Vorbis, Opus), MP3 (libsndfile >= 1.1), AIFF, AU and CAF.
AUDIO_EXTENSIONS: tuple[str, ...] = (
    ".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3",
    ".aiff", ".aif", ".aifc", ".au", ".caf", ".w64", ".rf64",
)

# soxr's "HQ" is a 20-bit-quality linear-phase filter: transparent for tagging and
# noticeably faster than "VHQ".
RESAMPLE_QUALITY = "HQ"

# Container soundfile writes for each extension write_audio accepts.
_WRITE_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG", ".mp3": "MP3"}

PathLike = str | os.PathLike


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, without decoding its samples.

    ``duration`` is in seconds.
    """

    sample_rate: int
    frames: int
    channels: int
    duration: float


def _check_path(path: Path) -> None:
    """Raise AudioError for what can be told before decoding: missing, folder, format, 0 bytes."""
    if not path.exists():
        raise AudioError(path, "file not found")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if path.suffix.lower() not in AUDIO_EXTENSIONS:
        kind = f"'{path.suffix}'" if path.suffix else "without an extension"
        raise AudioError(
            path, f"unsupported audio format {kind} (supported: {', '.join(AUDIO_EXTENSIONS)})"
        )
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _decode_error(path: Path, err: Exception) -> AudioError:
    if isinstance(err, sf.LibsndfileError):
        detail = err.error_string
    elif isinstance(err, OSError) and err.strerror:
        detail = err.strerror
    else:
        detail = str(err)
    if "does not exist" in detail and path.is_file():
        # libsndfile says so of any file it cannot parse (a broken mp3, say): the file is
        # there, its contents are the problem
        detail = f"not a valid {path.suffix.lstrip('.').upper() or 'audio'} file"
    return AudioError(path, f"cannot decode audio (corrupt header or data?): {detail}")


def _quiet(path: Path):
    """libmpg123 prints its parser's warnings on stderr for a broken mp3; the AudioError says
    what matters, so they are silenced while an mp3 is opened or read."""
    return native_stderr_silenced() if path.suffix.lower() == ".mp3" else nullcontext()


def _open(path: Path) -> sf.SoundFile:
    """Open a checked path for reading; soundfile's errors become AudioError."""
    _check_path(path)
    try:
        with _quiet(path):
            f = sf.SoundFile(path)
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise _decode_error(path, err) from err
    try:
        check_header(path, f.samplerate, f.channels, f.frames)
        if f.frames <= 0:
            raise AudioError(path, "contains no samples (zero length)")
    except AudioError:
        f.close()
        raise
    return f


def check_samples(path: PathLike, x: np.ndarray, start_frame: int, sample_rate: int) -> None:
    """Raise AudioError naming ``path`` if decoded samples x, shape (frames, channels), are
    empty (checked for a whole clip, ``start_frame`` 0) or hold NaN or inf (naming the time)."""
    if start_frame == 0 and x.shape[0] == 0:
        raise AudioError(path, "contains no samples (zero length)")
    finite = np.isfinite(x)
    if finite.all():
        return
    first = int(np.argmin(finite.all(axis=1)))
    seconds = (start_frame + first) / sample_rate
    raise AudioError(path, f"contains NaN or infinite samples (first at {seconds:.3f} s)")


def _shape_out(x: np.ndarray, mono: bool) -> torch.Tensor:
    """(frames, channels) -> (frames,) mixed down by averaging, or (channels, frames)."""
    x = x.mean(axis=1, dtype=np.float32) if mono else x.T
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def audio_info(path: PathLike) -> AudioInfo:
    """Read a file's header: sample rate, frames, channels and duration.

    Raises AudioError like :func:`load_audio` does, except that samples are not
    decoded, so NaN samples are not detected here.

        >>> audio_info("dog.wav").duration
        5.0
    """
    if member_of(path) is not None:
        sr, frames, channels = member_info(path)
        if frames <= 0:
            raise AudioError(path, "contains no samples (zero length)")
        return AudioInfo(sr, frames, channels, frames / sr)
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(f.samplerate, f.frames, f.channels, f.frames / f.samplerate)


def load_audio(
    path: PathLike, sample_rate: int | None = None, mono: bool = True
) -> tuple[torch.Tensor, int]:
    """Decode a file to a float32 tensor, mixed down and resampled on request.

    Returns ``(wave, sr)``: ``wave`` has shape ``(N,)`` when ``mono`` (channels
    averaged) or ``(C, N)`` otherwise; ``sr`` is ``sample_rate`` if given, else the
    file's own rate. Silent audio is returned as is; a missing, empty, zero-length,
    undecodable or unsupported file, or one with NaN/inf samples, raises AudioError.

        >>> wave, sr = load_audio("stereo_44k.flac", sample_rate=16000)
        >>> wave.dtype, wave.ndim, sr
        (torch.float32, 1, 16000)
        >>> load_audio("stereo_44k.flac", mono=False)[0].shape
        torch.Size([2, 44100])
    """
    if member_of(path) is not None:  # a clip inside a tar shard or an HDF5 pack
        x, sr_in = read_member(path)
    else:
        path = Path(path)
        with _open(path) as f:
            sr_in = f.samplerate
            try:
                with _quiet(path):
                    x = f.read(dtype="float32", always_2d=True)  # (frames, channels)
            except (sf.SoundFileError, RuntimeError, OSError) as err:
                raise _decode_error(path, err) from err
    check_samples(path, x, 0, sr_in)
    if mono:
        # Mixing down first resamples one channel instead of C; both are linear, so equal.
        x = x.mean(axis=1, keepdims=True, dtype=np.float32)
    sr_out = sr_in if sample_rate is None else int(sample_rate)
    if sr_out <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if sr_out != sr_in:
        x = soxr.resample(x, sr_in, sr_out, quality=RESAMPLE_QUALITY)
    return _shape_out(x, mono), sr_out


# Files longer than this are tagged (and their events detected) block by block of
# BLOCK_SECONDS, so memory stays bounded.
LONG_FILE_SECONDS = 600.0
BLOCK_SECONDS = 60.0


def iter_blocks(
    path: PathLike, block_seconds: float, sample_rate: int | None = None, mono: bool = True
) -> Iterator[torch.Tensor]:
    """Yield a long file block by block, in memory bounded by the block size.

    Each block has ``round(block_seconds * sr)`` samples (``sr`` = ``sample_rate`` or
    the file's rate), the last one fewer; shapes as in :func:`load_audio`. Blocks are
    resampled with a streaming resampler, so their concatenation equals
    ``load_audio(path, sample_rate, mono)[0]``. The file is checked when this is
    called; NaN/inf samples raise AudioError naming the time when their block is read.

        >>> [block.shape[0] for block in iter_blocks("street.flac", 10.0, sample_rate=8000)]
        [80000, 80000, 80000, 80000, 80000, 80000, 32000]
    """
    if member_of(path) is not None:  # clips in containers are short: one read, then blocks
        wave, sr = load_audio(path, sample_rate, mono)
        step = round(block_seconds * sr)
        if step < 1:
            raise ValueError(f"block_seconds={block_seconds} gives blocks of no samples at {sr} Hz")
        return iter([wave[..., i:i + step] for i in range(0, wave.shape[-1], step)])
    path = Path(path)
    with _open(path) as f:
        sr_in, channels = f.samplerate, f.channels
    sr_out = sr_in if sample_rate is None else int(sample_rate)
    if sr_out <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    block_out = round(block_seconds * sr_out)
    if block_out < 1:
        raise ValueError(f"block_seconds={block_seconds} gives blocks of no samples at {sr_out} Hz")
    return _blocks(path, block_out, sr_in, sr_out, channels, mono)


def _blocks(
    path: Path, block_out: int, sr_in: int, sr_out: int, channels: int, mono: bool
) -> Iterator[torch.Tensor]:
    # Input read per step: about one output block's worth.
    block_in = max(1, math.ceil(block_out * sr_in / sr_out))
    yield from _resampled(_reads(path, block_in, sr_in), block_in, block_out, sr_in, sr_out,
                          channels, mono)


def _reads(path: Path, block_in: int, sr_in: int) -> Iterator[np.ndarray]:
    """A file's samples, ``block_in`` frames (frames, channels) at a time, checked."""
    start = 0
    with _open(path) as f:
        while True:
            try:
                with _quiet(path):
                    x = f.read(block_in, dtype="float32", always_2d=True)  # (frames, channels)
            except (sf.SoundFileError, RuntimeError, OSError) as err:
                raise _decode_error(path, err) from err
            if x.shape[0]:
                check_samples(path, x, start, sr_in)
                start += x.shape[0]
            yield x
            if x.shape[0] < block_in:
                return


def iter_array_blocks(x: np.ndarray, sample_rate: int, block_seconds: float,
                      sample_rate_out: int | None = None) -> Iterator[torch.Tensor]:
    """Decoded samples ``x`` (frames, channels) as :func:`iter_blocks` gives a file's: mono
    (N,) tensors of ``block_seconds`` at ``sample_rate_out`` (the last one shorter), mixed
    down and resampled a block at a time with the same streaming resampler, so the blocks
    joined equal the whole resampled at once.

        >>> x = np.zeros((44100, 2), np.float32)
        >>> [b.shape[0] for b in iter_array_blocks(x, 44100, 0.4, 16000)]
        [6400, 6400, 3200]
    """
    sr_out = int(sample_rate_out or sample_rate)
    block_out = max(1, int(round(block_seconds * sr_out)))
    block_in = max(1, math.ceil(block_out * sample_rate / sr_out))
    # an empty read ends the stream, as a file's short last read does
    reads = [x[i:i + block_in] for i in range(0, x.shape[0], block_in)]
    if not reads or reads[-1].shape[0] == block_in:
        reads.append(x[:0])
    yield from _resampled(iter(reads), block_in, block_out, sample_rate, sr_out, x.shape[1],
                          True)


def _resampled(reads: Iterator[np.ndarray], block_in: int, block_out: int, sr_in: int,
               sr_out: int, channels: int, mono: bool) -> Iterator[torch.Tensor]:
    """Blocks of ``block_out`` frames at ``sr_out`` from reads of ``block_in`` frames at
    ``sr_in``; a shorter read is the last."""
    out_channels = 1 if mono else channels
    stream = None
    if sr_out != sr_in:
        stream = soxr.ResampleStream(
            sr_in, sr_out, out_channels, dtype="float32", quality=RESAMPLE_QUALITY
        )
    pending: list[np.ndarray] = []  # resampled (frames, out_channels) not yet yielded
    n_pending = 0
    for x in reads:
        done = x.shape[0] < block_in
        if mono:
            x = x.mean(axis=1, keepdims=True, dtype=np.float32)
        if stream is not None:
            x = stream.resample_chunk(x, last=done)
        if x.shape[0]:
            pending.append(x)
            n_pending += x.shape[0]
        while n_pending >= block_out:
            buf = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield _shape_out(buf[:block_out], mono)
            rest = buf[block_out:]
            pending, n_pending = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
        if done:
            break
    if n_pending:
        yield _shape_out(np.concatenate(pending), mono)


def write_audio(
    path: PathLike,
    wave: torch.Tensor | np.ndarray,
    sample_rate: int,
    subtype: str | None = None,
) -> Path:
    """Write ``wave`` ((N,) or (C, N)) to a .wav, .flac, .ogg or .mp3 file, atomically.

    The samples go to a hidden temporary file in the target's folder that then
    replaces the target in one step, so a crash never leaves a half-written file
    and a failed write leaves an existing target untouched. ``subtype`` is
    soundfile's (e.g. ``"PCM_16"``, ``"FLOAT"``); by default the format's usual one.
    Parent folders are created. Returns the path written.

        >>> write_audio("out/tone.flac", torch.zeros(16000), 16000)
        PosixPath('out/tone.flac')
    """
    path = Path(path)
    fmt = _WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(
            path, f"cannot write format '{path.suffix}' (supported: {', '.join(_WRITE_FORMATS)})"
        )
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().cpu().numpy()
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise AudioError(path, f"cannot write a wave of shape {tuple(x.shape)}; expected (N,) or (C, N)")
    if not np.isfinite(x).all():
        raise AudioError(path, "cannot write NaN or infinite samples")
    if x.ndim == 2:
        x = x.T  # soundfile wants (frames, channels)
    with atomic_path(path) as tmp:
        sf.write(tmp, x, int(sample_rate), format=fmt, subtype=subtype)
    return path


def find_audio_files(paths: PathLike | Iterable[PathLike], recursive: bool = True,
                     errors: list[AudioError] | None = None,
                     empty_folders: bool = False) -> list[Path]:
    """Expand files and folders to a list of audio files.

    A folder contributes its files whose extension is in ``AUDIO_EXTENSIONS``
    (case-insensitive), sorted, searched recursively unless ``recursive=False``;
    hidden files and folders (name starting with ".", such as macOS "._x.wav"
    resource forks) are skipped. A file named explicitly is kept whatever its
    extension, so that loading it reports why it cannot be used rather than
    dropping it silently. Duplicates are dropped.

    A path that does not exist (or is a dangling or looping symbolic link) and a folder
    without audio (unless ``empty_folders``) raise AudioError; with ``errors`` given they are
    appended to it instead and the other paths are still expanded, as batch commands need.

        >>> find_audio_files(["clips/", "extra.wav"])
        [PosixPath('clips/a.wav'), PosixPath('clips/sub/b.flac'), PosixPath('extra.wav')]
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        # abspath, not resolve(): no system call per file, which counts on 100k-file sets.
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            found.append(p)

    def bad(p: Path, reason: str) -> None:
        if errors is None:
            raise AudioError(p, reason)
        errors.append(AudioError(p, reason))

    for p in map(Path, paths):
        if not p.exists():
            bad(p, _missing_reason(p))
            continue
        if not p.is_dir():
            add(p)
            continue
        in_folder: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(p):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
            in_folder += [
                Path(dirpath, f) for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS
            ]
        if not in_folder and not empty_folders:
            bad(p, f"folder holds no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})")
        for q in sorted(in_folder):
            add(q)
    return found


def _missing_reason(p: Path) -> str:
    """Why an existing-looking path cannot be opened: no file, a dangling link, a link loop."""
    if not p.is_symlink():
        return "no such file or directory"
    try:
        target = os.readlink(p)
    except OSError:
        target = "?"
    try:
        os.stat(p)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return f"symbolic link loop (-> {target})"
    return f"dangling symbolic link (-> {target}, which does not exist)"
