"""Spectrogram front ends: one preset per model family, equal to its paper's code.

Stateless functions (:func:`spectrogram`, :func:`amplitude_to_db`, ...) sit beside a
thin module, :class:`FrontEnd` (alias :class:`LogMel`), that holds its window and
mel filter bank as buffers. The STFT is ``torch.stft``; the filter banks come from
``librosa.filters.mel``. Shapes are ``(..., bins, time)``.

    >>> fe = front_end("sat")
    >>> fe(torch.zeros(2, 16000)).shape
    torch.Size([2, 64, 101])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from earmark.steps import Steps

__all__ = [
    "PRESETS",
    "FrontEnd",
    "FrontEndConfig",
    "LogMel",
    "amplitude_to_db",
    "compress",
    "front_end",
    "mel_filterbank",
    "num_frames",
    "resize_spectrogram",
    "spectrogram",
]

_MEL_SCALES = ("htk", "slaney")
_MEL_NORMS = (None, "slaney")
_LOGS = ("db", "log", "none")
_NORMALIZE = (None, "mean", "meanvar")
_PAD_MODES = ("reflect", "constant", "replicate", "circular")


@dataclass(frozen=True)
class FrontEndConfig:
    """Everything that turns a waveform into a model's input spectrogram.

    ``n_mels=0`` means linear STFT bins (``n_fft // 2 + 1`` of them), no mel filter
    bank; then ``f_min``, ``f_max``, ``mel_scale`` and ``mel_norm`` are unused.
    ``power`` is 2.0 for a power spectrum, 1.0 for magnitude. ``log`` is ``"db"``
    (``(20 / power) * log10(max(x, amin))``, then floored at ``max - top_db`` per item
    when ``top_db`` is set), ``"log"`` (natural ``log(max(x, amin))``) or ``"none"``.
    With ``center=False`` frames are those whose window fits inside the signal, as in
    ``tf.signal.stft``. ``resize=(bins, time)`` resizes the result bilinearly.
    ``normalize`` works per clip, after the log: ``"mean"`` subtracts each bin's mean over
    the clip's frames (cepstral mean normalisation: a fixed microphone or channel colouring
    and the recording level cancel), ``"meanvar"`` also divides by each bin's standard
    deviation. A streaming model normalises each chunk on its own.

    It is stored in every saved model's config.json:

        >>> cfg = PRESETS["htsat"]
        >>> FrontEndConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    name: str
    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    n_mels: int
    f_min: float
    f_max: float
    mel_scale: str = "htk"
    mel_norm: str | None = None
    power: float = 2.0
    center: bool = True
    pad_mode: str = "reflect"
    log: str = "db"
    amin: float = 1e-10
    top_db: float | None = None
    resize: tuple[int, int] | None = None
    normalize: str | None = None

    def __post_init__(self) -> None:
        def bad(msg: str) -> ValueError:
            return ValueError(f"front end {self.name!r}: {msg}")

        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0:
            raise bad("sample_rate, n_fft and hop_length must be positive")
        if not 0 < self.win_length <= self.n_fft:
            raise bad(f"win_length must be in 1..n_fft={self.n_fft}, got {self.win_length}")
        if self.n_mels < 0:
            raise bad(f"n_mels must be >= 0 (0 = linear bins), got {self.n_mels}")
        if self.n_mels and not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise bad(f"need 0 <= f_min < f_max <= {self.sample_rate / 2}")
        if self.mel_scale not in _MEL_SCALES:
            raise bad(f"mel_scale must be one of {_MEL_SCALES}, got {self.mel_scale!r}")
        if self.mel_norm not in _MEL_NORMS:
            raise bad(f"mel_norm must be one of {_MEL_NORMS}, got {self.mel_norm!r}")
        if self.power <= 0:
            raise bad(f"power must be positive, got {self.power}")
        if self.pad_mode not in _PAD_MODES:
            raise bad(f"pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")
        if self.log not in _LOGS:
            raise bad(f"log must be one of {_LOGS}, got {self.log!r}")
        if self.amin <= 0:
            raise bad(f"amin must be positive, got {self.amin}")
        if self.top_db is not None and (self.log != "db" or self.top_db < 0):
            raise bad("top_db needs log='db' and must be >= 0")
        if self.normalize not in _NORMALIZE:
            raise bad(f"normalize must be one of {_NORMALIZE}, got {self.normalize!r}")
        if self.resize is not None:
            # Normalise a JSON list to a tuple so configs compare and hash equal.
            object.__setattr__(self, "resize", tuple(int(s) for s in self.resize))
            if len(self.resize) != 2 or min(self.resize) < 1:
                raise bad(f"resize must be (bins, time) of positive ints, got {self.resize}")

    @property
    def n_bins(self) -> int:
        """Frequency rows of the output (after any resize)."""
        if self.resize is not None:
            return self.resize[0]
        return self.n_mels or self.n_fft // 2 + 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``resize`` as a list)."""
        d = dataclasses.asdict(self)
        if d["resize"] is not None:
            d["resize"] = list(d["resize"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrontEndConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise ValueError."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown front end config keys {unknown}; known: {sorted(fields)}")
        try:
            return cls(**d)
        except TypeError as err:  # a required field is missing
            raise ValueError(f"incomplete front end config: {err}") from err


# Each preset equals what its paper's official code computes; the sources are named.
PRESETS: dict[str, FrontEndConfig] = {
    # SAT / audio ViT (paper 003; RicherMans/SAT): torchaudio MelSpectrogram(16 kHz,
    # n_fft=win=512, hop=160, 64 mels, f 0-8000, defaults mel_scale="htk", norm=None,
    # periodic Hann, center, reflect, power 2) then AmplitudeToDB(top_db=120):
    # 10*log10(max(x, 1e-10)) floored at max - 120 dB.
    "sat": FrontEndConfig(
        name="sat", sample_rate=16000, n_fft=512, win_length=512, hop_length=160, n_mels=64,
        f_min=0.0, f_max=8000.0, mel_scale="htk", mel_norm=None, power=2.0, center=True,
        pad_mode="reflect", log="db", amin=1e-10, top_db=120.0,
    ),
    # HTS-AT (paper 002; RetroCirce/HTS-Audio-Transformer config): torchlibrosa
    # Spectrogram(n_fft=win=1024, hop=320, periodic Hann, center, reflect) and
    # LogmelFilterBank(sr=32000, 64 mels, fmin=50, fmax=14000, ref=1, amin=1e-10,
    # top_db=None), whose filters are librosa.filters.mel defaults (Slaney scale and
    # area norm).
    "htsat": FrontEndConfig(
        name="htsat", sample_rate=32000, n_fft=1024, win_length=1024, hop_length=320,
        n_mels=64, f_min=50.0, f_max=14000.0, mel_scale="slaney", mel_norm="slaney",
        power=2.0, center=True, pad_mode="reflect", log="db", amin=1e-10, top_db=None,
    ),
    # Codebook bag-of-words (paper 001, section 3.1): 16 kHz, 96 mel bins 0-8 kHz,
    # 10 ms hop, 30 ms Hann window, FFT size 2048. The paper names no magnitude/power
    # or log compression; we take the usual choice: power spectrum, librosa's default
    # (Slaney) mel filters, natural log with a 1e-10 floor. Centred frames give 101
    # frames per second; the paper's 96 x 100 input is the first 100 of them.
    "codebook": FrontEndConfig(
        name="codebook", sample_rate=16000, n_fft=2048, win_length=480, hop_length=160,
        n_mels=96, f_min=0.0, f_max=8000.0, mel_scale="slaney", mel_norm="slaney",
        power=2.0, center=True, pad_mode="reflect", log="log", amin=1e-10, top_db=None,
    ),
    # TokenLearner (paper 000): the TensorFlow "simple audio" tutorial it follows:
    # |tf.signal.stft(x, frame_length=255, frame_step=128)| (fft_length 256 -> 129
    # bins, periodic Hann, no padding; 5 s at 16 kHz -> 624 x 129), no mel, no log,
    # then keras Resizing to 64 x 64 (bilinear, half-pixel centres). n_mels=0 means
    # linear bins. The 255-sample window sits at the start of each 256-sample frame,
    # as in TensorFlow, since (256 - 255) // 2 = 0.
    "tokenlearner": FrontEndConfig(
        name="tokenlearner", sample_rate=16000, n_fft=256, win_length=255, hop_length=128,
        n_mels=0, f_min=0.0, f_max=8000.0, mel_scale="htk", mel_norm=None, power=1.0,
        center=False, pad_mode="constant", log="none", amin=1e-10, top_db=None,
        resize=(64, 64),
    ),
}


def mel_filterbank(config: FrontEndConfig) -> torch.Tensor | None:
    """The config's mel filter bank, shape (n_mels, n_fft // 2 + 1); None when n_mels=0."""
    if config.n_mels == 0:
        return None
    fb = librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.f_min,
        fmax=config.f_max, htk=config.mel_scale == "htk", norm=config.mel_norm,
        dtype=np.float64,
    )
    return torch.from_numpy(fb).float()


def num_frames(config: FrontEndConfig, num_samples: int) -> int:
    """STFT frames for ``num_samples`` samples (``resize[1]`` when the config resizes)."""
    if config.resize is not None:
        return config.resize[1]
    return _stft_frames(num_samples, config.n_fft, config.win_length, config.hop_length,
                        config.center)


def _stft_frames(n: int, n_fft: int, win_length: int, hop_length: int, center: bool) -> int:
    if center:
        return 1 + n // hop_length
    # The window occupies [left, left + win_length) of each n_fft-long frame.
    left = (n_fft - win_length) // 2
    return max(0, 1 + (n - left - win_length) // hop_length)


def spectrogram(
    wave: torch.Tensor,
    window: torch.Tensor,
    n_fft: int,
    hop_length: int,
    center: bool = True,
    pad_mode: str = "reflect",
    power: float = 2.0,
) -> torch.Tensor:
    """|STFT|**power of ``wave`` (..., N) -> (..., n_fft // 2 + 1, frames).

    ``window`` has the window length; it is centred in each n_fft-long frame (as
    librosa and torch do). With ``center=False``, frames are those whose window fits
    in the signal (``1 + (N - left - win) // hop``, left = (n_fft - win) // 2), as
    ``tf.signal.stft`` counts them.
    """
    win_length = window.shape[-1]
    shape = wave.shape
    x = wave.reshape(-1, shape[-1])  # (B, N)
    n = shape[-1]
    if center:
        if pad_mode == "reflect" and n <= n_fft // 2:
            raise ValueError(
                f"a wave of {n} samples is too short for reflect padding of {n_fft // 2}; "
                f"needs at least {n_fft // 2 + 1}"
            )
    else:
        if _stft_frames(n, n_fft, win_length, hop_length, center) < 1:
            raise ValueError(f"a wave of {n} samples is shorter than one window ({win_length})")
        # Zero-pad the right so a frame is kept when its window (not its n_fft) fits.
        right = n_fft - (n_fft - win_length) // 2 - win_length
        if right:
            x = F.pad(x, (0, right))
    spec = torch.stft(
        x, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window,
        center=center, pad_mode=pad_mode, normalized=False, onesided=True, return_complex=True,
    )  # (B, freq, frames)
    return _power(spec, power).reshape(*shape[:-1], *spec.shape[-2:])


def _power(spec: torch.Tensor, power: float) -> torch.Tensor:
    if power == 2.0:
        return spec.real.square() + spec.imag.square()
    if power == 1.0:
        return spec.abs()
    return spec.abs().pow(power)


def spectrogram_blocks(
    wave: torch.Tensor,
    window: torch.Tensor,
    n_fft: int,
    hop_length: int,
    center: bool = True,
    pad_mode: str = "reflect",
    power: float = 2.0,
    block_frames: int = 1000,
) -> Iterator[torch.Tensor]:
    """:func:`spectrogram` ``block_frames`` frames at a time, for a wave long enough to have
    more than one block: the signal is padded once as :func:`spectrogram` pads it, and each
    block's frames are the same samples through the same FFT, so the blocks joined along
    time equal the whole.

        >>> w, win = torch.randn(48000), torch.hann_window(400)
        >>> whole = spectrogram(w, win, 512, 160)
        >>> torch.allclose(torch.cat(list(spectrogram_blocks(w, win, 512, 160,
        ...                                                  block_frames=100)), -1), whole)
        True
    """
    win_length = window.shape[-1]
    shape = wave.shape
    x = wave.reshape(-1, shape[-1])
    total = _stft_frames(shape[-1], n_fft, win_length, hop_length, center)
    if center:  # as torch.stft pads
        x = F.pad(x.unsqueeze(1), (n_fft // 2, n_fft // 2), mode=pad_mode).squeeze(1)
    else:  # as spectrogram pads
        x = F.pad(x, (0, n_fft - (n_fft - win_length) // 2 - win_length))
    for t0 in range(0, total, block_frames):
        t1 = min(total, t0 + block_frames)
        spec = torch.stft(
            x[:, t0 * hop_length:(t1 - 1) * hop_length + n_fft], n_fft=n_fft,
            hop_length=hop_length, win_length=win_length, window=window, center=False,
            normalized=False, onesided=True, return_complex=True,
        )  # (B, freq, t1 - t0)
        yield _power(spec, power).reshape(*shape[:-1], *spec.shape[-2:])


def amplitude_to_db(
    x: torch.Tensor, multiplier: float = 10.0, amin: float = 1e-10, top_db: float | None = None
) -> torch.Tensor:
    """``multiplier * log10(max(x, amin))`` of (..., bins, time), floored at max - top_db.

    The floor's max is taken per item (over the last two dims). torchaudio's
    AmplitudeToDB takes it over a whole (B, bins, time) batch, which makes an item's
    features depend on its batch mates; per item, a batch equals its items stacked,
    and for a single clip the two agree.
    """
    x_db = multiplier * torch.log10(torch.clamp(x, min=amin))
    if top_db is not None:
        peak = x_db.amax(dim=(-2, -1), keepdim=True)
        x_db = torch.maximum(x_db, peak - top_db)
    return x_db


def compress(x: torch.Tensor, config: FrontEndConfig) -> torch.Tensor:
    """Apply the config's log compression to a (..., bins, time) |X|**power spectrogram."""
    if config.log == "db":
        # dB of |X|^p is (20 / p) * log10: 10 for power, 20 for magnitude spectra.
        return amplitude_to_db(x, 20.0 / config.power, config.amin, config.top_db)
    if config.log == "log":
        return torch.log(torch.clamp(x, min=config.amin))
    return x


def normalize_per_clip(x: torch.Tensor, how: str, eps: float = 1e-5) -> torch.Tensor:
    """Each bin of a (..., bins, time) spectrogram less its mean over time (``"mean"``),
    also over its standard deviation (``"meanvar"``).

        >>> x = torch.tensor([[1.0, 3.0], [10.0, 10.0]])
        >>> normalize_per_clip(x, "mean")
        tensor([[-1.,  1.],
                [ 0.,  0.]])
    """
    x = x - x.mean(-1, keepdim=True)
    if how == "meanvar":
        x = x / (x.std(-1, keepdim=True, unbiased=False) + eps)
    return x


def resize_spectrogram(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (..., bins, time) to (..., *size), half-pixel centres, no antialias.

    This is what TensorFlow's ``tf.image.resize`` (and keras ``Resizing``) does by default.
    """
    shape = x.shape
    y = F.interpolate(
        x.reshape(-1, 1, *shape[-2:]), size=tuple(size), mode="bilinear",
        align_corners=False, antialias=False,
    )
    return y.reshape(*shape[:-2], *size)


class FrontEnd(nn.Module):
    """Waveform (..., N) -> spectrogram (..., bins, time), float32, as the config says.

    ``window`` and ``mel_fb`` are non-persistent buffers (rebuilt from the config, so
    they do not appear in saved weights). A batch equals its items stacked.

        >>> fe = FrontEnd(PRESETS["htsat"])
        >>> fe(torch.randn(32000)).shape, fe.num_frames(32000)
        (torch.Size([64, 101]), 101)
    """

    window: torch.Tensor
    mel_fb: torch.Tensor | None

    def __init__(self, config: FrontEndConfig | str | dict[str, Any]):
        super().__init__()
        self.config = frontend_config(config)
        c = self.config
        self.register_buffer(
            "window", torch.hann_window(c.win_length, periodic=True), persistent=False
        )
        self.register_buffer("mel_fb", mel_filterbank(c), persistent=False)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def n_bins(self) -> int:
        return self.config.n_bins

    def num_frames(self, num_samples: int) -> int:
        """Output time steps for a wave of ``num_samples`` samples."""
        return num_frames(self.config, num_samples)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        c = self.config
        # The front end stays in float32 under mixed precision or model.half(): the log of
        # fp16 powers is coarse and they underflow.
        wave = wave.to(torch.float32)
        with torch.autocast(wave.device.type, enabled=False):
            x = spectrogram(wave, self.window.float(), c.n_fft, c.hop_length, c.center,
                            c.pad_mode, c.power)  # (..., freq, frames)
            return self._finish(self._mel(x))

    def steps(self, wave: torch.Tensor, block_frames: int = 1000) -> Steps[torch.Tensor]:
        """:meth:`forward` as a series of bounded pieces (see :mod:`earmark.steps`): the STFT
        and mel bands ``block_frames`` frames at a time (:func:`spectrogram_blocks`), then
        the log, normalisation and resizing, which look at the whole, in one piece. Equal to
        :meth:`forward` up to float rounding."""
        c = self.config
        wave = wave.to(torch.float32)
        if self.num_frames(wave.shape[-1]) <= block_frames or c.resize is not None:
            x = self(wave)
            yield
            return x
        blocks = spectrogram_blocks(wave, self.window.float(), c.n_fft, c.hop_length, c.center,
                                    c.pad_mode, c.power, block_frames)
        parts = []
        while True:  # float32 piece by piece: autocast is never left off while others run
            with torch.autocast(wave.device.type, enabled=False):
                part = next(blocks, None)
                if part is not None:
                    parts.append(self._mel(part))
            if part is None:
                break
            yield
        with torch.autocast(wave.device.type, enabled=False):
            return self._finish(torch.cat(parts, -1))

    def _mel(self, x: torch.Tensor) -> torch.Tensor:
        """(..., freq, frames) power -> (..., mel, frames); as is without a filter bank."""
        return x if self.mel_fb is None else torch.matmul(self.mel_fb.float(), x)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        """The steps that look at a whole spectrogram: log (its top_db floor is per clip),
        per-clip normalisation, resizing."""
        c = self.config
        x = compress(x, c)
        if c.normalize is not None:
            x = normalize_per_clip(x, c.normalize)
        if c.resize is not None:
            x = resize_spectrogram(x, c.resize)
        return x

    def extra_repr(self) -> str:
        return f"{self.config.name!r}, sample_rate={self.config.sample_rate}"


LogMel = FrontEnd


def frontend_config(config: FrontEndConfig | str | dict[str, Any]) -> FrontEndConfig:
    """The :class:`FrontEndConfig` a preset name, a config dict or a preset with changes
    names, without building the front end."""
    if isinstance(config, FrontEndConfig):
        return config
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(
                f"unknown front end preset {config!r}; presets: {', '.join(sorted(PRESETS))}"
            )
        return PRESETS[config]
    if isinstance(config, dict) and "preset" in config:  # a preset with some fields changed
        changes = {k: v for k, v in config.items() if k != "preset"}
        base = frontend_config(config["preset"]).to_dict()
        unknown = sorted(set(changes) - set(base))
        if unknown:
            raise ValueError(f"unknown front end config keys {unknown}; known: {sorted(base)}")
        return FrontEndConfig.from_dict({**base, "name": f"{config['preset']}*", **changes})
    if isinstance(config, dict):
        return FrontEndConfig.from_dict(config)
    raise TypeError(f"expected a preset name, FrontEndConfig or dict, got {type(config).__name__}")


def front_end(name_or_config: FrontEndConfig | str | dict[str, Any]) -> FrontEnd:
    """Build a front end from a preset name, a FrontEndConfig or its dict (config.json), or a
    preset with changes: ``{"preset": "sat", "f_max": 4000.0, "normalize": "mean"}`` (as
    ``--model-arg 'frontend={"preset": "sat", "normalize": "mean"}'``).

        >>> front_end({"preset": "sat", "normalize": "mean"}).config.normalize
        'mean'

        >>> front_end("tokenlearner")(torch.zeros(80000)).shape
        torch.Size([64, 64])
        >>> front_end("nope")
        Traceback (most recent call last):
        ...
        ValueError: unknown front end preset 'nope'; presets: codebook, htsat, sat, tokenlearner
    """
    return FrontEnd(name_or_config)
