"""What chunking, streaming and detection need from a tagger: the :class:`Scorer` protocol.

:mod:`earmark.infer.chunks`, :mod:`earmark.infer.stream` and :mod:`earmark.infer.detect`
are typed against it rather than against :class:`~earmark.infer.tagger.Tagger`, so that the
tagger can use them without those modules importing the tagger back. A
:class:`~earmark.infer.tagger.Tagger` is a Scorer, whether it runs a PyTorch model or an
exported ONNX file.

    >>> import earmark
    >>> from earmark.infer.tagger import Tagger
    >>> model = earmark.create_model("vit-tiny", 3, depth=1, embed_dim=32, num_heads=2)
    >>> isinstance(Tagger(model, {"labels": ["a", "b", "c"]}), Scorer)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch


class ChunkLike(Protocol):
    """Scores of one span of audio: ``start`` and ``end`` in seconds, ``scores`` ``(C,)``."""

    start: float
    end: float
    scores: torch.Tensor


class Session(Protocol):
    """A live stream of a scorer (see :class:`earmark.infer.stream.StreamSession`)."""

    def push(self, samples) -> Sequence[ChunkLike]: ...

    def flush(self) -> Sequence[ChunkLike]: ...


@runtime_checkable
class Scorer(Protocol):
    """A model with its labels and front end that scores waveforms at its own rate."""

    model: Any  # an AudioModel or an OnnxModel: is_streaming, clip_seconds, activation, ...
    config: dict  # the model directory's config.json (labels, saved detection settings)
    device: torch.device

    @property
    def labels(self) -> list[str]: ...

    @property
    def sample_rate(self) -> int: ...

    @property
    def chunk_seconds(self) -> float:
        """The chunk length a stream of this model uses when none is given."""

    @property
    def has_frames(self) -> bool: ...

    def waveform(self, audio, sample_rate: int | None = None) -> torch.Tensor:
        """A path or samples -> mono float32 ``(N,)`` at :attr:`sample_rate`."""

    def score_wave(self, wave: torch.Tensor) -> torch.Tensor:
        """``(N,)`` -> ``(C,)`` scores."""

    def score_batch(self, waves: torch.Tensor) -> torch.Tensor:
        """``(B, N)`` -> ``(B, C)`` scores."""

    def frame_scores(self, audio, sample_rate: int | None = None
                     ) -> tuple[torch.Tensor, float]:
        """Frame scores ``(T, C)`` and the seconds per frame (models with frames)."""

    def top(self, scores: torch.Tensor, top_k: int = 5) -> list[tuple[str, float]]: ...

    def primed_cache(self) -> Any:
        """A streaming model's cache primed with silence."""

    def chunk_step(self, chunk_samples: int, compile: bool = False) -> Callable | None:
        """A streaming model's traced chunk step, or None."""

    def stream(self, chunk_seconds: float | None = None, **kw) -> Session:
        """A live stream of this scorer."""
