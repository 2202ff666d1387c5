"""What every earmark model shares: a front end, clip logits, and the arguments that rebuild it.

A model maps a batch of waveforms ``(B, N)`` at ``model.sample_rate`` to clip logits
``(B, C)``; ``model.activation`` (sigmoid for multi-label, softmax for single-label data)
turns them into scores. Families implement :meth:`forward_spectrogram`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from earmark.audio.features import front_end
from earmark.steps import Steps


class AudioModel(nn.Module):
    family: str = "base"
    # whether it tags chunk by chunk with a cache (``forward_chunk``, ``prime_cache``,
    # ``chunk_seconds``: SAT) rather than whole clips
    is_streaming: bool = False

    def __init__(self, num_classes: int, frontend: str | dict, clip_seconds: float,
                 multi_label: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.frontend = front_end(frontend)
        self.clip_seconds = float(clip_seconds)
        self.multi_label = multi_label
        # Set by the trainer; applied to the log-mel in training mode only. No parameters.
        self.spec_augment: nn.Module | None = None
        self.init_args: dict[str, Any] = {}

    @property
    def sample_rate(self) -> int:
        return int(self.frontend.config.sample_rate)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveform -> (B, C) clip logits."""
        spec = self.frontend(wave)  # (B, mel, T)
        if self.training and self.spec_augment is not None:
            spec = self.spec_augment(spec)
        return self.forward_spectrogram(spec)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_steps(self, wave: torch.Tensor) -> Steps[torch.Tensor]:
        """:meth:`forward` (in evaluation) as a series of bounded model calls that yields
        after each (see :mod:`earmark.steps`), so that a server can score other work between
        the pieces of a long input. The logits equal :meth:`forward`'s up to float rounding."""
        spec = yield from self.frontend.steps(wave)
        return (yield from self.spectrogram_steps(spec))

    def spectrogram_steps(self, spec: torch.Tensor) -> Steps[torch.Tensor]:
        """:meth:`forward_spectrogram` in pieces; families that split long inputs (ViT, SAT)
        yield after each piece, the others after their one call."""
        logits = self.forward_spectrogram(spec)
        yield
        return logits

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid() if self.multi_label else logits.softmax(-1)

    def scores_to_logits(self, scores: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`activation`, so averaged scores can travel as logits."""
        scores = scores.clamp(1e-7, 1 - 1e-7) if self.multi_label else scores.clamp_min(1e-12)
        return torch.logit(scores) if self.multi_label else scores.log()

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def build_args(self) -> dict[str, Any]:
        """Keyword arguments that rebuild this model with ``create_model(name, num_classes, **)``."""
        return dict(self.init_args)
