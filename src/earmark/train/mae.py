"""Masked-autoencoder pretraining of an audio ViT: stage 1 of paper 003 (section 4.3).

75 % of the patches of each clip are removed at random; the encoder (an ordinary
:class:`~earmark.models.vit.AudioViT`, or a SAT, with its time and frequency position
embeddings) sees only the visible ones; a light ViT decoder gets the encoded tokens back in
place, a shared mask token at every removed position, and reconstructs the removed patches
of the log-mel. The loss is the mean squared error on the removed patches only, each target
patch normalised to zero mean and unit variance (MAE's normalised-pixel target, as in the
official SAT code). After pretraining the decoder is dropped: the run's ``model/`` holds the
encoder with a one-output placeholder head, ready for ``--init`` of the next stage.

Paper schedule: batch 64, lr 2e-4 with 3 warm-up epochs, half-cycle cosine to 2e-5, 50
epochs for ViT-T/S and 40 for ViT-B::

    earmark train --stage mae --data audioset:segments.csv --model vit-tiny --out runs/mae-t \\
        --batch-size 64 --lr 2e-4 --min-lr-ratio 0.1 --warmup-epochs 3 --epochs 50

    >>> import torch, earmark
    >>> encoder = earmark.create_model("vit-tiny", 1, depth=1, embed_dim=48, num_heads=3)
    >>> decoder = MAEDecoder.for_encoder(encoder, dim=32, depth=1, num_heads=2)
    >>> out = masked_reconstruction(encoder, decoder, torch.randn(2, 16000))
    >>> out.mask.shape, int(out.mask[0].sum())  # 4 x 6 patches of a 1 s clip, 18 removed
    (torch.Size([2, 24]), 18)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from earmark.models.layers import Block, init_vit_weights
from earmark.models.vit import AudioViT
from earmark.train.config import TrainConfig
from earmark.train.module import TaggingModule

# The single output of an exported MAE encoder: it has learnt no classes.
PLACEHOLDER_LABEL = "mae-placeholder"


def random_masking(batch: int, tokens: int, ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip, a random set of visible patches: ``(keep (B, K), removed (B, N) bool)``.

    ``K = int(N * (1 - ratio))`` (at least 1); ``keep`` lists the visible patch indices in
    increasing order, ``removed`` is True at the masked positions.

    >>> keep, removed = random_masking(2, 8, 0.75, torch.Generator().manual_seed(0))
    >>> keep.shape, removed.sum(1).tolist()
    (torch.Size([2, 2]), [6, 6])
    """
    n_keep = max(1, int(tokens * (1 - ratio)))
    noise = torch.rand(batch, tokens, generator=generator, device=device)
    keep = noise.argsort(dim=1)[:, :n_keep].sort(dim=1).values
    removed = torch.ones(batch, tokens, dtype=torch.bool, device=keep.device)
    removed.scatter_(1, keep, False)
    return keep, removed


def patchify(spec: torch.Tensor, patch_size: tuple[int, int], patch_stride: tuple[int, int]
             ) -> torch.Tensor:
    """(B, F, T) log-mel -> (B, N, pf*pt) patches, in the token order of the ViT (frequency-major).

    >>> patchify(torch.zeros(1, 64, 101), (16, 16), (16, 16)).shape
    torch.Size([1, 24, 256])
    """
    cols = F.unfold(spec.unsqueeze(1), kernel_size=patch_size, stride=patch_stride)  # (B, P, N)
    return cols.transpose(1, 2)


def normalise_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch (last axis) to zero mean and unit variance: MAE's reconstruction target."""
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


class MAEDecoder(nn.Module):
    """The light ViT that fills the removed patches back in: encoded visible tokens projected to
    ``dim``, a learnt mask token everywhere else, time and frequency position embeddings over
    the encoder's patch grid, ``depth`` pre-norm blocks, and a linear map to patch values."""

    def __init__(self, encoder_dim: int, patch_dim: int, grid: tuple[int, int], dim: int = 512,
                 depth: int = 8, num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        grid_f, grid_t = grid
        self.input_proj = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.time_pos_embed = nn.Parameter(torch.randn(1, dim, 1, grid_t) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, dim, grid_f, 1) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_dim)
        self.apply(init_vit_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @classmethod
    def for_encoder(cls, encoder: AudioViT, dim: int = 512, depth: int | None = None,
                    num_heads: int = 8) -> MAEDecoder:
        """A decoder matching ``encoder``'s width, patch size and grid. ``depth`` None: 4 behind
        a ViT-T sized encoder (width <= 192), else 8, as the official SAT code."""
        if depth is None:
            depth = 4 if encoder.embed_dim <= 192 else 8
        pf, pt = encoder.patch_embed.patch_size
        grid = (encoder.freq_pos_embed.shape[2], encoder.time_pos_embed.shape[3])
        return cls(encoder.embed_dim, pf * pt, grid, dim, depth, num_heads)

    def forward(self, latent: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]
                ) -> torch.Tensor:
        """(B, K, D_enc) visible tokens at positions ``keep`` (B, K) of an (F', T') grid ->
        (B, F'*T', patch_dim) predicted patches."""
        f, t = grid
        x = self.input_proj(latent)  # (B, K, dim)
        b, _, dim = x.shape
        full = self.mask_token.expand(b, f * t, dim).scatter(
            1, keep.unsqueeze(-1).expand(-1, -1, dim), x)  # (B, N, dim)
        pos = self.time_pos_embed[..., :t] + self.freq_pos_embed[:, :, :f]  # (1, dim, F', T')
        x = self.blocks(full + pos.flatten(2).transpose(1, 2))
        return self.pred(self.norm(x))


@dataclass
class MAEOutput:
    loss: torch.Tensor  # () mean squared error over the removed patches
    pred: torch.Tensor  # (B, N, P) predicted patches
    target: torch.Tensor  # (B, N, P) normalised log-mel patches
    mask: torch.Tensor  # (B, N) True where a patch was removed
    visible_tokens: int  # tokens the encoder saw per clip (without a class token)


def encode_visible(encoder: AudioViT, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, 1, F, T) normalised log-mel, visible patch indices (B, K) -> (B, K, D) encoded
    tokens: the encoder's own patch and position embeddings, blocks and final norm, on the
    visible patches only (a class token, if the encoder pools by one, is dropped after)."""
    tokens = encoder.patch_embed(x)  # (B, D, F', T')
    f, t = tokens.shape[-2:]
    tokens = tokens + encoder.time_pos_embed[..., :t] + encoder.freq_pos_embed[:, :, :f]
    tokens = tokens.flatten(2).transpose(1, 2)  # (B, N, D), frequency-major
    tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
    token_pool = encoder.pooling == "token"
    if token_pool:
        cls = (encoder.cls_token + encoder.token_pos_embed).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1)
    out = encoder.norm(encoder.blocks(encoder.pos_drop(tokens)))
    return out[:, 1:] if token_pool else out


def max_seconds(encoder: AudioViT) -> float:
    """The longest clip whose patches the encoder's time position embeddings cover."""
    pt, st = encoder.patch_embed.patch_size[1], encoder.patch_embed.patch_stride[1]
    frames = (encoder.time_pos_embed.shape[-1] - 1) * st + pt
    hop = encoder.frontend.config.hop_length
    return (frames - 1) * hop / encoder.sample_rate  # a centred STFT has N // hop + 1 frames


def masked_reconstruction(encoder: AudioViT, decoder: MAEDecoder, wave: torch.Tensor,
                          mask_ratio: float = 0.75, generator: torch.Generator | None = None
                          ) -> MAEOutput:
    """One MAE pass on a batch of waveforms (B, N): mask, encode, decode, masked-patch MSE."""
    spec = encoder.frontend(wave)  # (B, F, T) log-mel
    grid = encoder.patch_embed.grid(spec.shape[1], spec.shape[2])
    if grid[1] > encoder.time_pos_embed.shape[-1]:
        raise ValueError(f"{spec.shape[2]} frames need {grid[1]} time positions; the encoder "
                         f"has {encoder.time_pos_embed.shape[-1]} (clips up to "
                         f"{max_seconds(encoder):.2f} s)")
    b, n = spec.shape[0], grid[0] * grid[1]
    keep, removed = random_masking(b, n, mask_ratio, generator, spec.device)
    latent = encode_visible(encoder, encoder.normalize(spec), keep)
    pred = decoder(latent, keep, grid)
    target = normalise_patches(patchify(spec, encoder.patch_embed.patch_size,
                                        encoder.patch_embed.patch_stride))
    per_patch = (pred.float() - target.float()).pow(2).mean(-1)  # (B, N)
    loss = (per_patch * removed).sum() / removed.sum()
    return MAEOutput(loss, pred, target, removed, keep.shape[1])


class MAEModule(TaggingModule):
    """Trains ``model`` (the encoder, exported after) and ``decoder`` on unlabelled clips.

    The validation score is minus the validation loss, with the same masks every epoch (a
    generator seeded from the config seed and the batch index), so epochs compare fairly.
    Waveform augmentation (gain, shift, polarity) applies; SpecAugment and mixup do not.
    """

    def __init__(self, encoder: AudioViT, config: TrainConfig, steps_per_epoch: int):
        super().__init__(encoder, config, [PLACEHOLDER_LABEL], steps_per_epoch)
        self.decoder = MAEDecoder.for_encoder(encoder, config.decoder_dim, config.decoder_depth,
                                              config.decoder_heads)
        self._val_sums: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        wave = self.wave_augment(batch[0])
        out = masked_reconstruction(self.model, self.decoder, wave, self.config.mask_ratio)
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=wave.shape[0])
        return out.loss

    def validation_step(self, batch, batch_idx):
        wave = batch[0]
        gen = torch.Generator(device=wave.device).manual_seed(self.config.seed * 1_000_003
                                                                + batch_idx)
        out = masked_reconstruction(self.model, self.decoder, wave, self.config.mask_ratio, gen)
        n = wave.shape[0]
        self._val_sums.append(torch.stack((out.loss.detach().float() * n,
                                           out.loss.new_tensor(float(n)))))

    def on_validation_epoch_end(self):
        if not self._val_sums:
            return
        total = torch.stack(self._val_sums).sum(0)  # (loss * items, items)
        self._val_sums = []
        if self.trainer.world_size > 1:
            total = self.all_gather(total).sum(0)
        loss = float(total[0] / total[1])
        self.log("val/loss", loss, prog_bar=True)
        self.log("val_score", -loss)  # higher is better, as for the tagging stages
