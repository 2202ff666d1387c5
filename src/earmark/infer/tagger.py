"""Tagging with a saved model: ``earmark.load(path)`` returns a :class:`Tagger`.

    >>> import earmark
    >>> tagger = earmark.load("runs/fsdd/model")                 # doctest: +SKIP
    >>> tagger.tag("recording.wav", top_k=3)                     # doctest: +SKIP
    [('7', 0.97), ('1', 0.01), ('9', 0.004)]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from earmark.audio.io import audio_info, iter_blocks, load_audio
from earmark.errors import AudioError, ModelError
from earmark.files import write_json
from earmark.models.directory import CONFIG, load_model

# Files longer than this are scored block by block, so memory stays bounded.
LONG_FILE_SECONDS = 600.0
BLOCK_SECONDS = 60.0


@dataclass
class ChunkScores:
    start: float  # seconds
    end: float
    scores: torch.Tensor  # (C,)


class Tagger:
    """A model with its labels and front end, ready to tag raw audio."""

    def __init__(self, model: nn.Module, config: dict, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.config = config
        self.device = torch.device(device)
        self._chunk_steps: dict = {}  # traced chunk steps of a streaming model, see chunk_step

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
                self._chunk_steps[key] = model.traced_chunk_step(example, model.prime_cache(1),
                                                                 compile=compile)
        return self._chunk_steps[key]

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def multi_label(self) -> bool:
        return bool(self.model.multi_label)

    def to(self, device: str | torch.device) -> Tagger:
        self.model.to(device)
        self.device = torch.device(device)
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

    def _fit(self, wave: torch.Tensor) -> torch.Tensor:
        fit = getattr(self.model, "fit", None)
        n = int(round(self.model.clip_seconds * self.sample_rate))
        if fit and wave.shape[-1] < n:
            from earmark.data.dataset import fit_length

            wave = fit_length(wave, n, fit)
        return wave

    @torch.inference_mode()
    def _score(self, wave: torch.Tensor) -> torch.Tensor:
        logits = self.model(self._fit(wave).unsqueeze(0).to(self.device))
        return self.model.activation(logits)[0].float().cpu()

    # ---- public API --------------------------------------------------------------------------

    def scores(self, audio, sample_rate: int | None = None) -> torch.Tensor:
        """Clip scores, one per label (probabilities). Long files are read block by block."""
        if isinstance(audio, (str, Path)) and audio_info(audio).duration > LONG_FILE_SECONDS:
            total, weight = None, 0.0
            for block in iter_blocks(audio, BLOCK_SECONDS, sample_rate=self.sample_rate):
                s = self._score(block) * block.shape[-1]
                total = s if total is None else total + s
                weight += block.shape[-1]
            return total / weight
        return self._score(self.waveform(audio, sample_rate))

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
        """Sound events ``[Event(onset, offset, label, score)]`` sorted by onset.

        Models with frame outputs (HTS-AT) detect from their frame scores; others from the
        scores of consecutive chunks (``chunk_seconds``, by default the model's clip length).
        ``config`` is a :class:`earmark.infer.detect.DetectionConfig` (thresholds, median
        filter, minimum length, gap merging, label map); by default the one saved with the
        model, if any. ``threshold`` overrides its thresholds. Long files are read block by
        block.
        """
        from earmark.infer.detect import DetectionConfig, chunks_to_events, frames_to_events

        if config is None:
            saved = self.config.get("detection")
            config = DetectionConfig.from_dict(saved) if saved else DetectionConfig()
        if threshold is not None:
            config = replace(config, threshold=threshold)
        if not self.has_frames or chunk_seconds is not None:
            chunk = chunk_seconds or self.model.clip_seconds
            return chunks_to_events(self.chunk_scores(audio, chunk, sample_rate), self.labels,
                                    config)
        if isinstance(audio, (str, Path)) and audio_info(audio).duration > LONG_FILE_SECONDS:
            events, start = [], 0.0
            for block in iter_blocks(audio, BLOCK_SECONDS, sample_rate=self.sample_rate):
                frames, hop = self.frame_scores(block, self.sample_rate)
                dur = block.shape[-1] / self.sample_rate
                found = frames_to_events(frames.numpy(), self.labels, hop, config,
                                         offset_seconds=start, duration=dur)
                events = _join_at(events + found, start) if events else found
                start += dur
            return events
        wave = self.waveform(audio, sample_rate)
        frames, hop = self.frame_scores(wave, self.sample_rate)
        return frames_to_events(frames.numpy(), self.labels, hop, config,
                                duration=wave.shape[-1] / self.sample_rate)

    def tune_detection(self, manifest, config=None, metric: str = "event_f1",
                       chunk_seconds: float | None = None):
        """Per-class thresholds tuned on strongly labelled files (``manifest.meta["events"]``,
        as the ``desed`` and synth soundscape sources give); returns a DetectionConfig.
        The thresholds apply to the detection labels (after ``config.label_map``)."""
        from earmark.infer.detect import DetectionConfig, tune_thresholds

        config = config or DetectionConfig()
        events = manifest.meta.get("events")
        if not events:
            raise ModelError(f"{manifest.name}: no strong labels (meta['events']) to tune on")
        scores, truths, hop = [], [], None
        for item in manifest.items:
            if item.path not in events:
                continue
            if self.has_frames and chunk_seconds is None:
                frames, hop = self.frame_scores(item.path)
            else:
                chunks = self.chunk_scores(item.path, chunk_seconds or self.model.clip_seconds)
                frames = torch.stack([c.scores for c in chunks])
                hop = chunks[0].end - chunks[0].start
            scores.append(frames.numpy())
            truths.append(events[item.path])
        if not scores:
            raise ModelError(f"{manifest.name}: none of its files has strong labels")
        thresholds = tune_thresholds(scores, truths, self.labels, hop, metric=metric,
                                     config=config)
        return replace(config, threshold=thresholds)

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
        """Scores of consecutive ``chunk_seconds`` pieces (the last one may be shorter)."""
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be positive, got {chunk_seconds}")
        if isinstance(audio, (str, Path)):
            blocks = iter_blocks(audio, chunk_seconds, sample_rate=self.sample_rate)
        else:
            n = max(1, int(round(chunk_seconds * self.sample_rate)))
            blocks = self.waveform(audio, sample_rate).split(n)
        if self.model.is_streaming and abs(chunk_seconds - self.model.chunk_seconds) < 1e-9:
            # a streaming model scores its chunks through its cache, as it would live
            session = self.stream(chunk_seconds)
            results = [r for block in blocks for r in session.push(block)] + session.flush()
            return [ChunkScores(r.start, r.end, r.scores) for r in results]
        out, start = [], 0.0
        for block in blocks:
            dur = block.shape[-1] / self.sample_rate
            out.append(ChunkScores(start, start + dur, self._score(block)))
            start += dur
        return out

    def stream(self, chunk_seconds: float | None = None, **kw) -> StreamSession:  # noqa: F821
        """An online tagging session (:class:`earmark.infer.stream.StreamSession`): push
        blocks of samples, get one result per chunk. ``kw``: ``top_k``, ``tail`` ("pad" or
        "drop"), ``sample_rate``, ``window_seconds``.

            >>> session = tagger.stream(chunk_seconds=1.0)            # doctest: +SKIP
            >>> results = session.push(block) + session.flush()       # doctest: +SKIP
        """
        from earmark.infer.stream import StreamSession

        return StreamSession(self, chunk_seconds, **kw)


def _join_at(events: list, boundary: float) -> list:
    """Merge events of one label that a block boundary at ``boundary`` cut in two."""
    out: list = []
    for ev in sorted(events, key=lambda e: (e.label, e.onset)):
        prev = out[-1] if out else None
        if (prev is not None and prev.label == ev.label and abs(prev.offset - boundary) < 1e-6
                and abs(ev.onset - boundary) < 1e-6):
            best = max(s for s in (prev.score, ev.score) if s is not None) \
                if prev.score is not None or ev.score is not None else None
            out[-1] = type(ev)(prev.onset, ev.offset, ev.label, best)
        else:
            out.append(ev)
    return sorted(out, key=lambda e: (e.onset, e.label))


def load(path: str | Path, device: str | torch.device = "cpu",
         trust_checkpoint: bool = False) -> Tagger:
    """Load a model directory, a training run directory, a training checkpoint (``.ckpt``) or
    an exported ONNX file (``.onnx``, run with onnxruntime).

    A ``.ckpt`` is read as weights and plain values only; ``trust_checkpoint=True`` unpickles
    anything else it holds, which can run code: only for a file from a source you trust.
    Model directories (safetensors) carry no code and need no trust."""
    path = Path(path)
    if path.is_file() and path.suffix == ".onnx":
        return load_onnx(path)
    model, config = load_model(path, trust=trust_checkpoint)
    return Tagger(model, config, device)


def load_onnx(path: str | Path, providers: list[str] | None = None) -> Tagger:
    """A :class:`Tagger` over an exported file (:class:`~earmark.infer.onnx.OnnxModel`).

        >>> tagger = load_onnx("esc50.onnx")                          # doctest: +SKIP
        >>> tagger.tag("dog.wav", top_k=1)                            # doctest: +SKIP
        [('dog', 0.93)]
    """
    from earmark.infer.onnx import OnnxModel

    model = OnnxModel(path, providers)
    return Tagger(model, model.config)
