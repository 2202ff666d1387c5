"""Training augmentations: waveform gain, shift and polarity; SpecAugment; mixup.

All take a batch and a ``torch.Generator`` (or use the global one) so runs are repeatable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class WaveAugment:
    """Random gain (dB), circular time shift (fraction of the clip) and polarity inversion."""

    gain_db: float = 6.0
    shift: float = 0.1
    polarity: float = 0.5  # probability of flipping the sign

    def __call__(self, wave: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        b, n = wave.shape
        dev = wave.device
        out = wave
        if self.gain_db:
            db = (torch.rand(b, 1, generator=gen) * 2 - 1) * self.gain_db
            out = out * (10 ** (db / 20)).to(dev)
        if self.polarity:
            sign = torch.where(torch.rand(b, 1, generator=gen) < self.polarity, -1.0, 1.0)
            out = out * sign.to(dev)
        if self.shift:
            max_shift = int(n * self.shift)
            if max_shift > 0:
                shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen)
                idx = (torch.arange(n).unsqueeze(0) - shifts.unsqueeze(1)) % n  # (B, N)
                out = out.gather(1, idx.to(dev))
        return out


class SpecAugment(nn.Module):
    """Masks up to ``time_mask`` consecutive frames and ``freq_mask`` consecutive mel bins.

    ``(B, F, T) -> (B, F, T)``; masked values are set to each item's mean, so the
    per-bin BatchNorm of the models sees no out-of-range values. Only active in training.
    """

    def __init__(self, time_mask: int = 192, freq_mask: int = 24, time_masks: int = 1,
                 freq_masks: int = 1):
        super().__init__()
        self.time_mask, self.freq_mask = time_mask, freq_mask
        self.time_masks, self.freq_masks = time_masks, freq_masks

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return spec
        b, f, t = spec.shape
        fill = spec.mean(dim=(1, 2), keepdim=True)
        keep = torch.ones_like(spec, dtype=torch.bool)
        for _ in range(self.time_masks):
            keep &= ~_band_mask(b, t, min(self.time_mask, t), spec.device).unsqueeze(1)
        for _ in range(self.freq_masks):
            keep &= ~_band_mask(b, f, min(self.freq_mask, f), spec.device).unsqueeze(2)
        return torch.where(keep, spec, fill)


def _band_mask(b: int, size: int, width: int, device) -> torch.Tensor:
    """(B, size) boolean: one random band of 0..width-1 consecutive positions per item."""
    w = torch.randint(0, width + 1, (b, 1), device=device)
    start = (torch.rand(b, 1, device=device) * (size - w + 1)).long()
    pos = torch.arange(size, device=device).unsqueeze(0)
    return (pos >= start) & (pos < start + w)


def mixup(wave: torch.Tensor, target: torch.Tensor, alpha: float,
          gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each item with a random partner: ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta."""
    if alpha <= 0:
        return wave, target
    b = wave.shape[0]
    beta = torch.distributions.Beta(alpha, alpha)
    lam = beta.sample((b,)).to(wave.device)
    perm = torch.randperm(b, generator=gen).to(wave.device)
    lw = lam.view(b, *([1] * (wave.dim() - 1)))
    lt = lam.view(b, *([1] * (target.dim() - 1)))
    return lw * wave + (1 - lw) * wave[perm], lt * target + (1 - lt) * target[perm]
