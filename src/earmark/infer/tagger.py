"""Tagging with a saved model: ``earmark.load(path)`` returns a :class:`Tagger`.

    >>> import earmark
    >>> from earmark.models.directory import save_model_dir
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> save_model_dir(model, "model", ["dog", "rain", "siren"])
    PosixPath('model')
    >>> tagger = earmark.load("model")
    >>> top = tagger.tag("dog.wav", top_k=2)                     # [(label, score)], best first
    >>> len(top), top[0][1] >= top[1][1]
    (2, True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from earmark.audio import io as audio_io
from earmark.audio.io import audio_info, iter_blocks, load_audio
from earmark.errors import AudioError, ModelError
from earmark.files import write_json
from earmark.infer.chunks import ChunkScores, chunk_scores
from earmark.infer.stream import StreamSession
from earmark.models.directory import CONFIG, load_model
from earmark.models.pretrained import resolve_model
from earmark.steps import Steps, finish

# The chunk length of a full-context model's stream when none is given; a streaming model
# streams in its own chunk.
DEFAULT_CHUNK_SECONDS = 1.0


def default_chunk_seconds(model) -> float:
    """The chunk length a model streams in when none is given: a streaming model's own
    chunk (SAT: the 1 or 2 s it was trained on), else :data:`DEFAULT_CHUNK_SECONDS` (a
    full-context model scores its sliding window once per chunk).

        >>> import earmark
        >>> default_chunk_seconds(earmark.create_model("sat-tiny", 3, chunk_seconds=2.0))
        2.0
        >>> default_chunk_seconds(earmark.create_model("vit-tiny", 3))
        1.0
    """
    if model.is_streaming:
        return float(model.chunk_seconds)
    return DEFAULT_CHUNK_SECONDS


class Tagger:
    """A model with its labels and front end, ready to tag raw audio."""

    def __init__(self, model: nn.Module, config: dict, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.config = config
        self.device = torch.device(device)
        self._chunk_steps: dict = {}  # traced chunk steps of a streaming model, see chunk_step
        self._primed = None  # a streaming model's primed cache, see primed_cache

    def chunk_step(self, chunk_samples: int, compile: bool = False):
        """A streaming model's traced (or compiled) chunk step for chunks of ``chunk_samples``,
        built once per tagger and shape: every stream, ``chunk_scores`` and ``detect`` call
        after the first reuses it. None for models without one."""
        key = (chunk_samples, compile)
        if key not in self._chunk_steps:
            model = self.model
            if not hasattr(model, "traced_chunk_step"):
                return None
            with torch.no_grad():
                example = torch.zeros(1, chunk_samples, device=self.device)
                self._chunk_steps[key] = model.traced_chunk_step(example, self.primed_cache(),
                                                                 compile=compile)
        return self._chunk_steps[key]

    def primed_cache(self):
        """A streaming model's cache primed with silence (one forward pass), computed once per
        tagger: every stream starts from it. Chunk steps return new caches and never change
        it in place."""
        if self._primed is None:
            with torch.no_grad():
                self._primed = self.model.prime_cache(1)
        return self._primed

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def chunk_seconds(self) -> float:
        """The chunk length of this model's streams when none is given (see
        :func:`default_chunk_seconds`): what :meth:`stream`, ``earmark stream`` and
        ``earmark serve`` use, and what a streaming model exports as."""
        return default_chunk_seconds(self.model)

    @property
    def multi_label(self) -> bool:
        return bool(self.model.multi_label)

    @property
    def training_seed(self) -> int:
        """The seed of the run that trained the model (0 where its directory records none):
        the one that set its validation items aside, which ``select_split`` needs to find
        them again."""
        return int((self.config.get("provenance") or {}).get("seed", 0))

    def to(self, device: str | torch.device) -> Tagger:
        self.model.to(device)
        self.device = torch.device(device)
        self._chunk_steps, self._primed = {}, None  # built for the old device
        return self

    # ---- audio in ----------------------------------------------------------------------------

    def waveform(self, audio, sample_rate: int | None = None) -> torch.Tensor:
        """A path or an array/tensor ((N,) or (C, N)) -> mono float32 (N,) at the model's rate."""
        if isinstance(audio, (str, Path)):
            wave, _ = load_audio(audio, sample_rate=self.sample_rate)
            return wave
        wave = torch.as_tensor(np.asarray(audio) if not torch.is_tensor(audio) else audio)
        wave = wave.float()
        if wave.dim() == 2:
            wave = wave.mean(0)
        if wave.dim() != 1:
            raise AudioError("<array>", f"expected (N,) or (C, N) samples, got {tuple(wave.shape)}")
        if wave.numel() == 0:
            raise AudioError("<array>", "zero samples")
        if not torch.isfinite(wave).all():
            raise AudioError("<array>", "contains NaN or infinite samples")
        sr = sample_rate or self.sample_rate
        if sr != self.sample_rate:
            import soxr

            wave = torch.from_numpy(soxr.resample(wave.numpy(), sr, self.sample_rate, "HQ"))
        return wave.float()

    def fit_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """A waveform (..., N) fitted to the model's input as every scoring call fits it: a
        clip shorter than the model's clip length tiled or padded as it trained, and never
        shorter than one patch."""
        fit = getattr(self.model, "fit", None)
        n = int(round(self.model.clip_seconds * self.sample_rate))
        if fit and wave.shape[-1] < n:
            from earmark.audio.clips import fit_length

            wave = fit_length(wave, n, fit)
        shortest = getattr(self.model, "min_samples", 0)  # e.g. one patch of frames
        if wave.shape[-1] < shortest:
            wave = torch.nn.functional.pad(wave, (0, shortest - wave.shape[-1]))
        return wave

    def score_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """Scores of one (N,) waveform at the model's rate, fitted to the clip length as the
        model says (no file reading, no blocks): the call every other path ends in."""
        return self.score_batch(wave.unsqueeze(0))[0]

    @torch.inference_mode()
    def score_batch(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms of one length at the model's rate -> (B, C) scores, in one call."""
        logits = self.model(self.fit_wave(waves).to(self.device))
        return self.model.activation(logits).float().cpu()

    # ---- public API --------------------------------------------------------------------------

    def scores(self, audio, sample_rate: int | None = None) -> torch.Tensor:
        """Clip scores, one per label (probabilities). Audio longer than
        ``LONG_FILE_SECONDS`` is scored in ``BLOCK_SECONDS`` blocks (files read block by
        block) and the blocks' scores averaged, weighted by their length."""
        long, block = audio_io.LONG_FILE_SECONDS, audio_io.BLOCK_SECONDS
        if isinstance(audio, (str, Path)):
            if audio_info(audio).duration <= long:
                return self.score_wave(self.waveform(audio))
            return finish(self._block_means(iter_blocks(audio, block,
                                                        sample_rate=self.sample_rate)))
        wave = self.waveform(audio, sample_rate)
        if wave.shape[-1] <= long * self.sample_rate:
            return self.score_wave(wave)
        return finish(self._block_means(wave.split(int(round(block * self.sample_rate)))))

    def score_steps(self, wave: torch.Tensor) -> Steps[torch.Tensor]:
        """The clip scores :meth:`scores` gives an (N,) waveform at the model's rate, as a
        series of bounded model calls that yields after each (see :mod:`earmark.steps`): the
        model's own pieces of a long input (ViT's and SAT's clip-length pieces) one at a
        time, in ``BLOCK_SECONDS`` blocks past ``LONG_FILE_SECONDS``. A server scores other
        work between the pieces; the scores equal :meth:`scores`'s up to float rounding."""
        if wave.shape[-1] <= audio_io.LONG_FILE_SECONDS * self.sample_rate:
            return (yield from self._wave_steps(wave))
        block = int(round(audio_io.BLOCK_SECONDS * self.sample_rate))
        return (yield from self._block_means(wave.split(block), piecewise=True))

    def _wave_steps(self, wave: torch.Tensor) -> Steps[torch.Tensor]:
        steps = getattr(self.model, "forward_steps", None)
        if steps is None:  # e.g. an ONNX model: one call
            scores = self.score_wave(wave)
            yield
            return scores
        pieces = steps(self.fit_wave(wave.unsqueeze(0)).to(self.device))
        while True:  # inference mode piece by piece: never left on while the caller works
            with torch.inference_mode():
                try:
                    next(pieces)
                except StopIteration as done:
                    return self.model.activation(done.value).float().cpu()[0]
            yield

    def _block_means(self, blocks, piecewise: bool = False) -> Steps[torch.Tensor]:
        """Scores of consecutive blocks averaged, weighted by their length."""
        total, weight = None, 0.0
        for b in blocks:
            if piecewise:
                s = (yield from self._wave_steps(b)) * b.shape[-1]
            else:
                s = self.score_wave(b) * b.shape[-1]
                yield
            total = s if total is None else total + s
            weight += b.shape[-1]
        return total / weight

    def tag(self, audio, sample_rate: int | None = None, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` labels with their scores, best first."""
        return self.top(self.scores(audio, sample_rate), top_k)

    def top(self, scores: torch.Tensor, top_k: int = 5) -> list[tuple[str, float]]:
        k = min(top_k, len(self.labels))
        vals, idx = scores.topk(k)
        return [(self.labels[i], float(v)) for v, i in zip(vals.tolist(), idx.tolist())]

    # ---- detection -----------------------------------------------------------------------------

    @property
    def has_frames(self) -> bool:
        return hasattr(self.model, "forward_frames")

    @torch.inference_mode()
    def frame_scores(self, audio, sample_rate: int | None = None) -> tuple[torch.Tensor, float]:
        """Frame scores ``(T, C)`` of a model that localises, and the seconds per frame."""
        if not self.has_frames:
            raise ModelError(f"{self.config.get('name')} has no frame outputs; use chunk_scores")
        # no fitting to the clip length: frames must stay aligned with the input
        wave = self.waveform(audio, sample_rate)
        _, frames = self.model.forward_frames(wave.unsqueeze(0).to(self.device))
        return frames[0].float().cpu(), self.model.frame_seconds

    def detect(self, audio, sample_rate: int | None = None, threshold=None, config=None,
               chunk_seconds: float | None = None) -> list:
        """Sound events ``[Event(onset, offset, label, score)]`` sorted by onset: see
        :func:`earmark.infer.detect.detect`."""
        from earmark.infer.detect import detect

        return detect(self, audio, sample_rate, threshold, config, chunk_seconds)

    def tune_detection(self, manifest, config=None, metric: str = "event_f1",
                       chunk_seconds: float | None = None):
        """Per-class thresholds tuned on strongly labelled files: see
        :func:`earmark.infer.detect.tune_detection`."""
        from earmark.infer.detect import tune_detection

        return tune_detection(self, manifest, config, metric, chunk_seconds)

    def save_detection(self, model_dir: str | Path, config) -> Path:
        """Store a DetectionConfig in the model directory's config.json (atomically)."""
        import json

        path = Path(model_dir) / CONFIG
        data = json.loads(path.read_text())
        data["detection"] = config.to_dict()
        write_json(path, data)
        self.config["detection"] = data["detection"]
        return path

    def chunk_scores(self, audio, chunk_seconds: float,
                     sample_rate: int | None = None) -> list[ChunkScores]:
        """Scores of consecutive ``chunk_seconds`` pieces: see
        :func:`earmark.infer.chunks.chunk_scores`."""
        return chunk_scores(self, audio, chunk_seconds, sample_rate)

    def stream(self, chunk_seconds: float | None = None, **kw) -> StreamSession:
        """An online tagging session (:class:`earmark.infer.stream.StreamSession`): push
        blocks of samples, get one result per chunk. ``kw``: ``top_k``, ``tail`` ("pad" or
        "drop"), ``sample_rate``, ``window_seconds``.

            >>> import earmark
            >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
            >>> tagger = Tagger(model, {"labels": ["dog", "rain", "siren"]})
            >>> session = tagger.stream(chunk_seconds=1.0)
            >>> block = torch.zeros(24000)                           # 1.5 s at 16 kHz
            >>> [(r.start, r.end) for r in session.push(block) + session.flush()]
            [(0.0, 1.0), (1.0, 1.5)]
        """
        return StreamSession(self, chunk_seconds, **kw)


def load(path: str | Path, device: str | torch.device = "cpu",
         trust_checkpoint: bool = False, offline: bool | None = None) -> Tagger:
    """Load a model directory, a training run directory, a training checkpoint (``.ckpt``),
    an exported ONNX file (``.onnx``, run with onnxruntime) or a released checkpoint by name
    (``"sat-tiny-2s-audioset"``: downloaded, checked and converted on first use, then read
    from the cache; see :mod:`earmark.models.pretrained`).

    A ``.ckpt`` is read as weights and plain values only; ``trust_checkpoint=True`` unpickles
    anything else it holds, which can run code: only for a file from a source you trust.
    Model directories (safetensors) carry no code and need no trust; released checkpoints
    are always read as weights only. ``offline=True`` (default: ``EARMARK_OFFLINE``) never
    touches the network."""
    path = resolve_model(path, offline_mode=offline)
    if path.is_file() and path.suffix == ".onnx":
        return load_onnx(path)
    model, config = load_model(path, trust=trust_checkpoint)
    return Tagger(model, config, device)


def load_onnx(path: str | Path, providers: list[str] | None = None) -> Tagger:
    """A :class:`Tagger` over an exported file (:class:`~earmark.infer.onnx.OnnxModel`).

        >>> import earmark
        >>> from earmark.export import export_onnx
        >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
        >>> path = export_onnx(model, "esc50.onnx", chunk_seconds=1.0, check=False,
        ...                    labels=["dog", "rain", "siren"])
        >>> tagger = load_onnx(path)
        >>> [(label, score)] = tagger.tag("dog.wav", top_k=1)
        >>> label in tagger.labels and 0 <= score <= 1
        True
    """
    from earmark.infer.onnx import OnnxModel

    model = OnnxModel(path, providers)
    return Tagger(model, model.config)
