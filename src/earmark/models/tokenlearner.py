"""TokenLearner transformer of paper 000 (Young et al., "Tokenizing audio: Pipelining
TokenLearner into Transformer Models") and the TokenLearner / TokenFuser modules of Ryoo et
al. 2021 ("TokenLearner: What can 8 learned tokens do for images and videos?").

The model (paper 000, section 4.2): a 64x64 magnitude spectrogram, a convolutional stem
(optionally with MobileNetV2 MBConv blocks) whose output map is cut into tokens, TokenLearner
down to ``tokens`` learned tokens (``tokens=0`` is the "NT" baseline that keeps them all), a
learnable positional encoding, pre-norm transformer blocks, mean pooling and a dense head.

    >>> import torch, earmark
    >>> model = earmark.create_model("tasr-4l-8t-8h", num_classes=8).eval()
    >>> model(torch.zeros(2, 16000)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import torch
from torch import nn

from earmark.models.base import AudioModel
from earmark.models.layers import Block, init_vit_weights
from earmark.models.registry import register_model

__all__ = ["MBConv", "TokenFuser", "TokenLearner", "TokenLearnerTransformer"]


class TokenLearner(nn.Module):
    """Learn ``num_tokens`` tokens from a grid of tokens by spatial attention (Ryoo et al.).

    Each output token is ``mean_n(sigmoid(a_s(x))_n * x_n)``: one attention map per token,
    computed from the layer-normalised inputs, weights the (unnormalised) inputs, which are
    then averaged over the grid. ``variant="v1"`` computes the maps with 3x3 convolutions
    over the grid (three with GELU, a fourth giving the maps; every conv has ``hidden``
    filters, ``num_tokens`` by default, as in the keras.io example "Learning to tokenize in
    Vision Transformers" that paper 000 uses); ``"v1.1"`` with a per-position MLP
    ``Dense(hidden) GELU Dense(num_tokens)`` (``hidden`` 64 by default, the official
    bottleneck). The last maps stay on ``last_maps`` (B, S, N), detached.

        >>> tl = TokenLearner(dim=32, num_tokens=8)
        >>> tl(torch.randn(2, 64, 32), grid=(8, 8)).shape
        torch.Size([2, 8, 32])
    """

    def __init__(self, dim: int, num_tokens: int, variant: str = "v1", hidden: int | None = None):
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be positive, got {num_tokens}")
        if variant not in ("v1", "v1.1"):
            raise ValueError(f"variant must be 'v1' or 'v1.1', got {variant!r}")
        self.num_tokens = num_tokens
        self.variant = variant
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        if variant == "v1":
            hidden = hidden or num_tokens
            convs: list[nn.Module] = []
            channels = dim
            for _ in range(3):
                convs += [nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.GELU()]
                channels = hidden
            convs.append(nn.Conv2d(channels, num_tokens, 3, padding=1, bias=False))
            self.attention = nn.Sequential(*convs)
        else:
            hidden = hidden or 64
            self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(),
                                           nn.Linear(hidden, num_tokens))
        self.last_maps: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, D) tokens on a ``grid`` (N = grid[0] * grid[1], row-major) -> (B, S, D)."""
        b, n, d = x.shape
        h, w = grid
        if h * w != n:
            raise ValueError(f"grid {tuple(grid)} has {h * w} positions but x has {n} tokens")
        y = self.norm(x)
        if self.variant == "v1":
            y = y.transpose(1, 2).reshape(b, d, h, w)
            logits = self.attention(y).flatten(2)  # (B, S, N)
        else:
            logits = self.attention(y).transpose(1, 2)  # (B, S, N)
        maps = logits.sigmoid()
        self.last_maps = maps.detach()
        # spatial mean of map * features: (B, S, N) @ (B, N, D) / N
        return torch.matmul(maps, x) / n


class TokenFuser(nn.Module):
    """Map ``num_tokens`` learned tokens back onto the full token grid (Ryoo et al.).

    The learned tokens are mixed by a linear layer over the token axis (with LayerNorms
    before and after); each original position then weights them by
    ``sigmoid(MLP(LayerNorm(original)))`` (a bottleneck of 64, as the official code) and
    the weighted sum is added to the original tokens.

        >>> fuser = TokenFuser(dim=32, num_tokens=8)
        >>> fuser(torch.randn(2, 8, 32), torch.randn(2, 64, 32)).shape
        torch.Size([2, 64, 32])
    """

    bottleneck = 64

    def __init__(self, dim: int, num_tokens: int):
        super().__init__()
        self.num_tokens = num_tokens
        self.norm_tokens = nn.LayerNorm(dim, eps=1e-6)
        self.mix = nn.Linear(num_tokens, num_tokens)
        self.norm_mixed = nn.LayerNorm(dim, eps=1e-6)
        self.norm_original = nn.LayerNorm(dim, eps=1e-6)
        self.select = nn.Sequential(nn.Linear(dim, self.bottleneck), nn.GELU(),
                                    nn.Linear(self.bottleneck, num_tokens))

    def forward(self, tokens: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        """(B, S, D) learned tokens and (B, N, D) original tokens -> (B, N, D)."""
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(f"expected {self.num_tokens} tokens, got {tokens.shape[1]}")
        t = self.norm_tokens(tokens)
        t = self.mix(t.transpose(1, 2)).transpose(1, 2)  # mixed over the token axis
        t = self.norm_mixed(t)
        weights = self.select(self.norm_original(original)).sigmoid()  # (B, N, S)
        return original + torch.matmul(weights, t)


class MBConv(nn.Module):
    """MobileNetV2 inverted residual (Sandler et al. 2018), stride 1: 1x1 expand, BN, ReLU6,
    depthwise 3x3, BN, ReLU6, 1x1 linear projection, BN, plus the input."""

    def __init__(self, channels: int, expand_ratio: int = 6):
        super().__init__()
        hidden = channels * expand_ratio
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class TokenLearnerTransformer(AudioModel):
    """The transformer of paper 000, section 4.2, on the ``tokenlearner`` front end.

    Spectrogram (B, 64, 64) -> BatchNorm (stands in for the keras ``Normalization`` layer of
    the TensorFlow audio tutorial the paper builds on) -> stem: a 3x3 stride-2 conv with
    ``stem_channels`` filters, BN, ReLU6 and ``mbconv`` MBConv blocks (``stem_channels=0``:
    no stem) -> a ``patch_size`` x ``patch_size`` strided conv to ``embed_dim`` (8x8 = 64
    tokens by default) -> TokenLearner to ``tokens`` tokens (0: all of them, the NT
    baseline) -> learnable positional encoding -> ``layers`` pre-norm blocks with ``heads``
    heads (MLP width ``mlp_ratio * embed_dim``) -> LayerNorm, mean over tokens, Linear.

    ``embed_dim`` is 192: the keras example the paper uses has width 128 with 128-wide
    heads; earmark's blocks split the width over the heads, so the width must divide by 8
    and by 12. ``mlp_ratio`` 2 is the keras example's ``[2 * D, D]`` MLP.
    """

    family = "tokenlearner"

    def __init__(self, num_classes: int, layers: int = 8, tokens: int = 8, heads: int = 8,
                 mbconv: int = 0, embed_dim: int = 192, mlp_ratio: float = 2.0,
                 stem_channels: int = 32, patch_size: int = 4, expand_ratio: int = 6,
                 learner: str = "v1", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 frontend: str | dict = "tokenlearner", clip_seconds: float = 1.0,
                 multi_label: bool = False, fit: str | None = None):
        super().__init__(num_classes, frontend, clip_seconds, multi_label)
        if mbconv not in (0, 1, 2):
            raise ValueError(f"mbconv must be 0, 1 or 2, got {mbconv}")
        if tokens < 0:
            raise ValueError(f"tokens must be 0 (no TokenLearner) or positive, got {tokens}")
        if mbconv and not stem_channels:
            raise ValueError("MBConv blocks need a stem: stem_channels must be positive")
        self.init_args = dict(
            layers=layers, tokens=tokens, heads=heads, mbconv=mbconv, embed_dim=embed_dim,
            mlp_ratio=mlp_ratio, stem_channels=stem_channels, patch_size=patch_size,
            expand_ratio=expand_ratio, learner=learner, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, frontend=self.frontend.config.to_dict(),
            clip_seconds=clip_seconds, multi_label=multi_label, fit=fit)
        self.fit = fit  # how the tagger fits shorter inputs to clip_seconds (None: as they are)
        self.embed_dim = embed_dim
        self.tokens = tokens

        size = self._input_size()  # (bins, frames) of the front end
        self.input_norm = nn.BatchNorm2d(1)
        if stem_channels:
            self.stem = nn.Sequential(
                nn.Conv2d(1, stem_channels, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(stem_channels), nn.ReLU6(),
                *[MBConv(stem_channels, expand_ratio) for _ in range(mbconv)])
            size = tuple((s - 1) // 2 + 1 for s in size)
        else:
            self.stem = nn.Identity()
        self.patch_embed = nn.Conv2d(stem_channels or 1, embed_dim, patch_size, patch_size)
        self.grid = tuple(s // patch_size for s in size)
        if min(self.grid) < 1:
            raise ValueError(f"patch_size {patch_size} is larger than the {size} stem output")
        n = self.grid[0] * self.grid[1]
        self.token_learner = TokenLearner(embed_dim, tokens, learner) if tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens or n, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.Sequential(*[
            Block(embed_dim, heads, mlp_ratio, True, drop_rate, attn_drop_rate)
            for _ in range(layers)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes)
        self.apply(init_vit_weights)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def _input_size(self) -> tuple[int, int]:
        c = self.frontend.config
        if c.resize is not None:
            return int(c.resize[0]), int(c.resize[1])
        frames = self.frontend.num_frames(int(round(self.clip_seconds * c.sample_rate)))
        return c.n_bins, frames

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, F, T) spectrogram -> (B, S, D) tokens after the final norm (S = N for NT)."""
        x = self.input_norm(spec.unsqueeze(1))  # (B, 1, F, T)
        x = self.patch_embed(self.stem(x))  # (B, D, h, w)
        grid = tuple(x.shape[-2:])
        if grid != self.grid:
            raise ValueError(f"spectrogram {tuple(spec.shape[-2:])} gives a {grid} token grid; "
                             f"the model expects {self.grid}")
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.token_learner is not None:
            x = self.token_learner(x, grid)  # (B, S, D)
        x = self.blocks(self.pos_drop(x + self.pos_embed))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, D) tokens -> (B, C) logits."""
        return self.head(x.mean(1))

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(spec))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes)
        init_vit_weights(self.head)


@register_model("tokenlearner")
def tokenlearner(num_classes: int, **overrides) -> TokenLearnerTransformer:
    """The generic model: ``layers``, ``tokens`` (0 = NT), ``heads``, ``mbconv`` as overrides."""
    return TokenLearnerTransformer(num_classes, **overrides)


# Rows of paper 000's tables 2 (TASR: Mini Speech Commands, 4/8/10/12 layers, NT/4/8
# tokens, 8/12 heads) and 3 (TESC: ESC-50, 4/8/10/12 layers, NT/8 tokens, 8/12 heads).
# TASR uses the MBConv model (section 4.2: speech was tested with one and two MBConv blocks;
# one here, override ``mbconv``). TESC uses the base model: its FLOP column implies 100 NT
# tokens, i.e. the keras example's 6x6 patches straight on the 64x64 input (10x10 grid).
_TASR = dict(mbconv=1)
_TESC = dict(mbconv=0, stem_channels=0, patch_size=6)
_TABLES = {"tasr": (_TASR, (0, 4, 8)), "tesc": (_TESC, (0, 8))}


def _register_preset(task: str, layers: int, tokens: int, heads: int) -> None:
    defaults = dict(_TABLES[task][0], layers=layers, tokens=tokens, heads=heads)
    name = f"{task}-{layers}l-{f'{tokens}t' if tokens else 'nt'}-{heads}h"

    def build(num_classes: int, **overrides) -> TokenLearnerTransformer:
        return TokenLearnerTransformer(num_classes, **{**defaults, **overrides})

    build.__doc__ = f"Paper 000, row {name.upper()}."
    register_model(name)(build)


for _task, (_, _token_counts) in _TABLES.items():
    for _layers in (4, 8, 10, 12):
        for _tokens in _token_counts:
            for _heads in (8, 12):
                _register_preset(_task, _layers, _tokens, _heads)
