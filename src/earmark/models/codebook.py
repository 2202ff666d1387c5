"""The codebook bag-of-words tagger of paper 001 (Verma, "Attention is all you need? Good
embeddings with statistics are enough").

No convolution, attention or recurrence. Per 1 s of audio (96 mel bins x 100 frames of the
``codebook`` front end, section 3.1) the spectrogram is cut into four families of slices:

    patch      120 spectral patches, 8 bins x 10 frames, a 12 x 10 grid     (3.1.1)
    band        12 frequency-band envelopes, 8 bins x 100 frames            (3.1.2)
    envelope    10 spectral envelopes, 96 bins x 10 frames                  (3.1.3)
    thumbnail    1 whole spectrogram resized bicubically to 8 x 10           (3.1.4)

143 slices in all. Each family has its own MLP autoencoder (three hidden layers of
``ae_hidden`` units with dropout, a bottleneck of input size / ``compression``, a mirrored
decoder); each bottleneck is assigned to the nearest of the family's ``codebook_size``
k-means centroids (3.2); the count histograms of the four families, concatenated (4 * D
values summing to 143), go through an MLP head (two hidden layers of ``hidden`` units,
``head_dropout``), whose input counts are zeroed with probability ``mask_prob`` in training
(3.3). Clip scores are the mean of the scores of the clip's 1 s chunks (section 2).

The autoencoders and code books are fitted by ``earmark train --model codebook`` before the
head (see :mod:`earmark.train.codebook`); the forward pass does the whole chain.

    >>> import torch, earmark
    >>> model = earmark.create_model("codebook", num_classes=10, codebook_size=16,
    ...                              ae_hidden=64).eval()
    >>> model(torch.zeros(2, 16000)).shape
    torch.Size([2, 10])
    >>> model.histogram(model.chunk_spectrograms(model.frontend(torch.randn(1, 16000)))[0]
    ...                 ).sum().item()
    143.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from earmark.audio.clips import fit_length, load_segment
from earmark.models.base import AudioModel
from earmark.models.registry import register_model

if TYPE_CHECKING:
    from earmark.audio.augment import AcousticAugment

BINS, FRAMES = 96, 100  # one second of the codebook front end (section 3.1)
PATCH = (8, 10)  # bins x frames of a spectral patch (3.1.1)
BAND = 8  # bins of a frequency-band envelope (3.1.2)
ENVELOPE = 10  # frames of a spectral envelope (3.1.3)
THUMBNAIL = (8, 10)  # the whole spectrogram, resized (3.1.4)

# family -> (slices per second, values per slice, the slice's (bins, frames) for pictures)
FAMILIES: dict[str, tuple[int, int, tuple[int, int]]] = {
    "patch": ((BINS // PATCH[0]) * (FRAMES // PATCH[1]), PATCH[0] * PATCH[1], PATCH),
    "band": (BINS // BAND, BAND * FRAMES, (BAND, FRAMES)),
    "envelope": (FRAMES // ENVELOPE, BINS * ENVELOPE, (BINS, ENVELOPE)),
    "thumbnail": (1, THUMBNAIL[0] * THUMBNAIL[1], THUMBNAIL),
}
SLICES_PER_SECOND = sum(n for n, _, _ in FAMILIES.values())  # 143


def _resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in): bicubic, antialiased resizing along one axis as a matrix.

    Resizing is linear and separable, so ``A @ X @ B.T`` equals resizing X, and export needs
    nothing but matrix products."""
    eye = torch.eye(size_in, dtype=torch.float64)[None, None]  # (1, 1, in, in)
    out = F.interpolate(eye, size=(size_out, size_in), mode="bicubic", antialias=True,
                        align_corners=False)
    return out[0, 0].float()


class Slicer(nn.Module):
    """(N, 96, 100) spectrograms -> {family: (N, slices, values)} in the order of FAMILIES."""

    def __init__(self):
        super().__init__()
        self.register_buffer("thumb_bins", _resize_matrix(BINS, THUMBNAIL[0]), persistent=False)
        self.register_buffer("thumb_frames", _resize_matrix(FRAMES, THUMBNAIL[1]),
                             persistent=False)

    def forward(self, spec: torch.Tensor) -> dict[str, torch.Tensor]:
        n = spec.shape[0]
        pb, pf = PATCH
        # patch (i, j) covers bins 8i..8i+7 and frames 10j..10j+9; bins vary slowest
        patch = spec.reshape(n, BINS // pb, pb, FRAMES // pf, pf).permute(0, 1, 3, 2, 4)
        band = spec.reshape(n, BINS // BAND, BAND * FRAMES)
        envelope = spec.reshape(n, BINS, FRAMES // ENVELOPE, ENVELOPE).permute(0, 2, 1, 3)
        thumbnail = self.thumb_bins @ spec @ self.thumb_frames.T  # (N, 8, 10)
        return {"patch": patch.reshape(n, -1, pb * pf), "band": band,
                "envelope": envelope.reshape(n, FRAMES // ENVELOPE, -1),
                "thumbnail": thumbnail.reshape(n, 1, -1)}


def _mlp(sizes: list[int], dropout: float) -> nn.Sequential:
    """Linear layers between ``sizes``; ReLU and dropout after all but the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class SliceAutoencoder(nn.Module):
    """The vanilla MLP autoencoder of section 3.1: ``layers`` hidden layers of ``hidden`` units
    (ReLU, dropout) down to a linear bottleneck of ``bottleneck`` values, and back."""

    def __init__(self, dim: int, bottleneck: int, hidden: int = 2048, layers: int = 3,
                 dropout: float = 0.5):
        super().__init__()
        self.dim, self.bottleneck = dim, bottleneck
        self.encoder = _mlp([dim] + [hidden] * layers + [bottleneck], dropout)
        self.decoder = _mlp([bottleneck] + [hidden] * layers + [dim], dropout)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def nearest(z: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid (Euclidean) of each row: (..., d), (D, d) -> (...)."""
    dist = (centroids * centroids).sum(-1) - 2 * z @ centroids.T  # |z|^2 does not change it
    return dist.argmin(-1)


class CodebookTagger(AudioModel):
    """Paper 001's tagger; see the module docstring. ``compression`` is F (10 or 20 in the
    paper), ``codebook_size`` D (16, 64, 256 or 1024), ``mask_prob`` p. The defaults are the
    paper's best model (section 4: D 256, F 10, a 512-unit head with dropout 0.4, p 0.35).

    ``norm`` holds the mean and standard deviation of the training log-mel, which the slices
    are standardised with before the autoencoders (set by the trainer). Counts enter the head
    divided by the family's number of slices (a fixed scale, so every family's histogram
    sums to one). ``tail_frames``: a clip that runs this many frames past its last whole
    second gets one more chunk, the last second of the clip.
    """

    family = "codebook"

    def __init__(self, num_classes: int, codebook_size: int = 256, compression: int = 10,
                 mask_prob: float = 0.35, hidden: int = 512, head_dropout: float = 0.4,
                 ae_hidden: int = 2048, ae_layers: int = 3, ae_dropout: float = 0.5,
                 tail_frames: int = 10, frontend: str | dict = "codebook",
                 clip_seconds: float = 1.0, multi_label: bool = False, fit: str | None = "repeat"):
        super().__init__(num_classes, frontend, clip_seconds, multi_label)
        c = self.frontend.config
        if c.n_mels != BINS or abs(c.sample_rate / c.hop_length - FRAMES) > 1e-9:
            raise ValueError(f"the codebook model needs {BINS} mel bins at {FRAMES} frames per "
                             f"second; front end {c.name!r} gives {c.n_mels} at "
                             f"{c.sample_rate / c.hop_length:g}")
        if codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {codebook_size}")
        if compression < 1:
            raise ValueError(f"compression must be at least 1, got {compression}")
        if not 0.0 <= mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in [0, 1), got {mask_prob}")
        self.init_args = dict(
            codebook_size=codebook_size, compression=compression, mask_prob=mask_prob,
            hidden=hidden, head_dropout=head_dropout, ae_hidden=ae_hidden, ae_layers=ae_layers,
            ae_dropout=ae_dropout, tail_frames=tail_frames, frontend=c.to_dict(),
            clip_seconds=clip_seconds, multi_label=multi_label, fit=fit)
        self.fit = fit  # how the tagger fits inputs shorter than clip_seconds
        self.codebook_size = codebook_size
        self.compression = compression
        self.mask_prob = mask_prob
        self.tail_frames = tail_frames
        self.hidden, self.head_dropout = hidden, head_dropout
        self.slicer = Slicer()
        self.autoencoders = nn.ModuleDict({
            name: SliceAutoencoder(dim, max(1, round(dim / compression)), ae_hidden, ae_layers,
                                   ae_dropout)
            for name, (_, dim, _) in FAMILIES.items()})
        self.register_buffer("norm", torch.tensor([0.0, 1.0]))  # log-mel mean, std
        for name, ae in self.autoencoders.items():
            self.register_buffer(f"centroids_{name}", torch.zeros(codebook_size, ae.bottleneck))
        scale = torch.cat([torch.full((codebook_size,), 1.0 / n) for n, _, _ in FAMILIES.values()])
        self.register_buffer("head_scale", scale, persistent=False)
        self.head = self._new_head(num_classes)
        # the autoencoders train only in their own stage: elsewhere their dropout stays off
        self.autoencoders_trainable = False

    def _new_head(self, num_classes: int) -> nn.Sequential:
        return _mlp([len(FAMILIES) * self.codebook_size, self.hidden, self.hidden, num_classes],
                    self.head_dropout)

    def train(self, mode: bool = True) -> CodebookTagger:
        super().train(mode)
        if not self.autoencoders_trainable:
            self.autoencoders.eval()
        return self

    def centroids(self, family: str) -> torch.Tensor:
        return getattr(self, f"centroids_{family}")

    # ---- the chain, step by step -------------------------------------------------------------

    def chunk_spectrograms(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 96, T) log-mel -> (B, K, 96, 100): whole seconds from the start, plus the last
        second when the clip runs ``tail_frames`` or more past them; a clip shorter than a
        second is tiled to one."""
        t = spec.shape[-1]
        if t < FRAMES:
            spec = spec.repeat(1, 1, -(-FRAMES // t))[..., :FRAMES]
            t = FRAMES
        starts = list(range(0, t - FRAMES + 1, FRAMES))
        if t - (starts[-1] + FRAMES) >= max(1, self.tail_frames):
            starts.append(t - FRAMES)
        return torch.stack([spec[..., s:s + FRAMES] for s in starts], 1)

    def standardise(self, spec: torch.Tensor) -> torch.Tensor:
        return (spec - self.norm[0]) / self.norm[1]

    def slices(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 96, 100) log-mel -> {family: (N, slices, values)}, standardised."""
        return self.slicer(self.standardise(chunks))

    def bottlenecks(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 96, 100) log-mel -> {family: (N, slices, bottleneck)}."""
        return {name: self.autoencoders[name].encode(x) for name, x in self.slices(chunks).items()}

    def codes(self, chunks: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 96, 100) log-mel -> {family: (N, slices)} code indices in [0, codebook_size)."""
        return {name: nearest(z, self.centroids(name))
                for name, z in self.bottlenecks(chunks).items()}

    def histogram(self, chunks: torch.Tensor) -> torch.Tensor:
        """(N, 96, 100) log-mel -> (N, 4 * D) code counts (each row sums to 143)."""
        book = torch.arange(self.codebook_size, device=chunks.device)
        return torch.cat([(c.unsqueeze(-1) == book).sum(1) for c in self.codes(chunks).values()],
                         -1).float()

    def mask_counts(self, counts: torch.Tensor) -> torch.Tensor:
        """Zero each count with probability ``mask_prob`` (training only, section 3.3)."""
        if not self.training or self.mask_prob <= 0:
            return counts
        return counts * (torch.rand_like(counts) >= self.mask_prob)

    def head_logits(self, counts: torch.Tensor) -> torch.Tensor:
        """(N, 4 * D) counts -> (N, C) logits, masked in training."""
        return self.head(self.mask_counts(counts) * self.head_scale)

    def chunk_logits(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 96, T) log-mel -> (B, K, C) logits of the clip's 1 s chunks."""
        chunks = self.chunk_spectrograms(spec)
        b, k = chunks.shape[:2]
        return self.head_logits(self.histogram(chunks.flatten(0, 1))).view(b, k, -1)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        logits = self.chunk_logits(spec)
        if logits.shape[1] == 1:
            return logits[:, 0]
        return self.scores_to_logits(self.activation(logits).mean(1))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = self._new_head(num_classes)


def item_chunks(model: CodebookTagger, item, views: int = 1, gain_db: float = 0.0,
                rng: np.random.Generator | None = None,
                augment: AcousticAugment | None = None) -> torch.Tensor:
    """(K, 96, 100) log-mel chunks of one manifest item, as the model's forward pass cuts them.

    With ``views`` > 1, the chunks of ``views - 1`` shifted copies follow: a clip shorter
    than a chunk is tiled from a random point (or placed at a random point, as ``model.fit``
    says), a longer one starts up to a chunk later; each copy at a random gain within
    +-``gain_db`` and through ``augment`` (speed, rooms, microphones, noise). The file is read
    once."""
    wave = load_segment(item.path, model.sample_rate, item.onset, item.offset)
    n = round(model.clip_seconds * model.sample_rate)
    copies = []
    for v in range(views):
        r = rng if v else None
        x = wave
        if x.shape[-1] < n:
            x = fit_length(x, n, model.fit or "pad", r)
        elif r is not None:
            x = x[int(r.integers(min(n, x.shape[-1] - n) + 1)):]
        if r is not None and gain_db:
            x = x * 10 ** (r.uniform(-gain_db, gain_db) / 20)
        if r is not None and augment is not None:
            gen = torch.Generator().manual_seed(int(r.integers(2 ** 62)))
            x = augment(x.unsqueeze(0), gen)[0]
        with torch.no_grad():
            copies.append(model.chunk_spectrograms(model.frontend(x.unsqueeze(0)))[0])
    return torch.cat(copies)


@register_model("codebook")
def codebook(num_classes: int, **overrides) -> CodebookTagger:
    """Paper 001's bag-of-words tagger; ``codebook_size``, ``compression``, ``mask_prob``,
    head ``hidden``/``head_dropout`` and the autoencoders' ``ae_hidden`` as overrides."""
    return CodebookTagger(num_classes, **overrides)
