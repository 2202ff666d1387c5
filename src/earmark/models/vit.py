"""Audio Vision Transformer of paper 003 (Dinkel et al., "Streaming Audio Transformers").

Full-context ViT-T/S/B: a per-mel-bin BatchNorm on the log-mel, 16x16 patches, separate
learnable time and frequency position embeddings, pre-norm transformer blocks, mean (or
class-token) pooling and a LayerNorm + Linear head. The parameter layout follows the
official SAT repository (``patch_embed.proj``, ``time_pos_embed``, ``freq_pos_embed``,
``blocks.i.attn.qkv``, ``outputlayer.0/1``) so its released checkpoints convert key by key.

    >>> import torch, earmark
    >>> model = earmark.create_model("vit-tiny", num_classes=10, clip_seconds=1.0).eval()
    >>> model(torch.zeros(2, 16000)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

from earmark.models.base import AudioModel
from earmark.models.layers import Block, init_vit_weights
from earmark.models.registry import register_model
from earmark.steps import Steps


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    """(B, 1, F, T) -> (B, D, F', T') by a strided convolution (equation 1 of paper 003)."""

    def __init__(self, patch_size, patch_stride, embed_dim: int):
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.patch_stride = _pair(patch_stride)
        self.proj = nn.Conv2d(1, embed_dim, self.patch_size, self.patch_stride)

    def grid(self, n_mels: int, frames: int) -> tuple[int, int]:
        (pf, pt), (sf, st) = self.patch_size, self.patch_stride
        return (n_mels - pf) // sf + 1, (frames - pt) // st + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def drop_patches(x: torch.Tensor, dim: int, frac: float) -> torch.Tensor:
    """Patch-out: keep a random, order-preserving subset of rows along ``dim``."""
    n = x.shape[dim]
    keep = torch.randperm(n, device=x.device)[: n - int(n * frac)].sort().values
    return x.index_select(dim, keep)


class AudioViT(AudioModel):
    family = "vit"

    def __init__(self, num_classes: int, embed_dim: int = 192, depth: int = 12,
                 num_heads: int = 3, mlp_ratio: float = 4.0, patch_size=16, patch_stride=16,
                 target_length: int = 1012, pooling: str = "mean", qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, time_patch_out: float | None = None,
                 freq_patch_out: float | None = None, pad_last: bool = True,
                 frontend: str | dict = "sat", clip_seconds: float = 10.0,
                 multi_label: bool = True, fit: str | None = None, token_learner: int = 0,
                 token_learner_at: float = 0.5, token_learner_variant: str = "v1"):
        super().__init__(num_classes, frontend, clip_seconds, multi_label)
        if pooling not in ("mean", "token"):
            raise ValueError(f"pooling must be 'mean' or 'token', got {pooling!r}")
        self.init_args = dict(
            embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
            patch_size=patch_size, patch_stride=patch_stride, target_length=target_length,
            pooling=pooling, qkv_bias=qkv_bias, drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            time_patch_out=time_patch_out, freq_patch_out=freq_patch_out, pad_last=pad_last,
            frontend=self.frontend.config.to_dict(), clip_seconds=clip_seconds,
            multi_label=multi_label, fit=fit)
        if token_learner:
            self.init_args.update(token_learner=token_learner, token_learner_at=token_learner_at,
                                  token_learner_variant=token_learner_variant)
        self.fit = fit  # how the tagger fits shorter inputs to clip_seconds (None: as they are)
        n_mels = self.frontend.config.n_mels
        self.embed_dim = embed_dim
        self.pooling = pooling
        self.target_length = target_length
        self.pad_last = pad_last
        self.time_patch_out = time_patch_out
        self.freq_patch_out = freq_patch_out

        # paper 003, 4.3: "an initial batch-norm to normalize each Mel-filterbank independently"
        self.init_bn = nn.BatchNorm2d(n_mels, momentum=0.01)
        self.patch_embed = PatchEmbed(patch_size, patch_stride, embed_dim)
        grid_f, grid_t = self.patch_embed.grid(n_mels, target_length)
        self.time_pos_embed = nn.Parameter(torch.randn(1, embed_dim, 1, grid_t) * 0.02)
        self.freq_pos_embed = nn.Parameter(torch.randn(1, embed_dim, grid_f, 1) * 0.02)
        if pooling == "token":
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.token_pos_embed = nn.Parameter(torch.randn(1, embed_dim) * 0.02)
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()  # stochastic depth grows
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, r)
            for r in rates])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.outputlayer = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes))
        # TokenLearner (Ryoo et al. 2021) between two blocks, as in their ViT: the blocks after
        # it see ``token_learner`` learned tokens instead of the whole patch grid
        self.token_learner = None
        self.token_learner_index = depth
        if token_learner:
            from earmark.models.tokenlearner import TokenLearner

            if not 0.0 <= token_learner_at <= 1.0:
                raise ValueError(f"token_learner_at must be in [0, 1], got {token_learner_at}")
            self.token_learner = TokenLearner(embed_dim, token_learner,
                                              variant=token_learner_variant)
            self.token_learner_index = int(round(depth * token_learner_at))
        self.apply(init_vit_weights)
        if pooling == "token":
            nn.init.normal_(self.cls_token, std=1e-6)

    @property
    def max_frames(self) -> int:
        """Longest log-mel processed in one pass; longer inputs are split (official rule:
        target_length + stride - 1), but never more frames than the time embeddings cover
        (the official code fails on 1024-1027 frames; earmark splits them)."""
        p, s = self.patch_embed.patch_size[1], self.patch_embed.patch_stride[1]
        covered = (self.time_pos_embed.shape[-1] - 1) * s + p + s - 1
        return min(self.target_length + s - 1, covered)

    @property
    def min_samples(self) -> int:
        """Shortest waveform that gives one patch of frames; taggers zero-pad shorter ones."""
        fe = self.frontend.config
        frames = self.patch_embed.patch_size[1]
        return (frames - 1) * fe.hop_length + (0 if fe.center else fe.n_fft)

    def normalize(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, F, T) log-mel -> (B, 1, F, T) with each mel bin batch-normalised."""
        return self.init_bn(spec.unsqueeze(2)).transpose(1, 2)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 1, F, T) normalised log-mel -> (B, N, D) input tokens (patches with their time
        and frequency embeddings, patch-out in training, the class token first when it pools)
        and the (F', T') patch grid."""
        x = self.patch_embed(x)  # (B, D, F', T')
        f, t = x.shape[-2:]
        x = x + self.time_pos_embed[..., :t] + self.freq_pos_embed[:, :, :f]
        if self.training and self.time_patch_out:
            x = drop_patches(x, -1, self.time_patch_out)
        if self.training and self.freq_patch_out:
            x = drop_patches(x, -2, self.freq_patch_out)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, F'*T', D), frequency-major as the official code
        if self.pooling == "token":
            cls = (self.cls_token + self.token_pos_embed).expand(x.shape[0], -1, -1)
            x = torch.cat((cls, x), dim=1)
        return self.pos_drop(x), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, F, T) normalised log-mel -> (B, N, D) tokens after the final norm."""
        x, grid = self.embed(x)
        if self.token_learner is None:
            return self.norm(self.blocks(x))
        for blk in self.blocks[:self.token_learner_index]:
            x = blk(x)
        n_cls = 1 if self.pooling == "token" else 0
        learned = self.token_learner(x[:, n_cls:], grid)  # (B, S, D)
        x = torch.cat((x[:, :n_cls], learned), dim=1)
        for blk in self.blocks[self.token_learner_index:]:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, C) logits."""
        x = x[:, 0] if self.pooling == "token" else x.mean(1)
        return self.outputlayer(x)

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.normalize(spec)
        if x.shape[-1] <= self.max_frames:
            return self.forward_head(self.forward_features(x))
        # Longer than the model: split into target_length pieces, score each, average scores.
        pieces = self._pieces(x)
        n = len(pieces)
        logits = self.forward_head(self.forward_features(torch.cat(pieces, 0)))  # (n*B, C)
        scores = self.activation(logits).unflatten(0, (n, -1)).mean(0)
        return self.scores_to_logits(scores)

    def spectrogram_steps(self, spec: torch.Tensor) -> Steps[torch.Tensor]:
        """:meth:`forward_spectrogram` one piece per model call (there: all in one batch)."""
        x = self.normalize(spec)
        if x.shape[-1] <= self.max_frames:
            logits = self.forward_head(self.forward_features(x))
            yield
            return logits
        scores = []
        for piece in self._pieces(x):
            scores.append(self.activation(self.forward_head(self.forward_features(piece))))
            yield
        return self.scores_to_logits(torch.stack(scores).mean(0))

    def _pieces(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 1, F, T) longer than the model -> pieces of target_length frames."""
        pieces = list(x.split(self.target_length, -1))
        if pieces[-1].shape[-1] < self.target_length and self.pad_last:
            pieces[-1] = nn.functional.pad(pieces[-1],
                                           (0, self.target_length - pieces[-1].shape[-1]))
        else:
            # The official code drops the last piece when it is not padded, also when it is
            # full length; kept so that converted checkpoints give the official scores.
            pieces = pieces[:-1]
        return pieces

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.outputlayer[1] = nn.Linear(self.embed_dim, num_classes)
        init_vit_weights(self.outputlayer[1])


# ViT-T/S/B of paper 003 (table 1: 5.6 M, 22 M and 86 M parameters). Pooling as the released
# checkpoints: mean for T and B, the class token for S.
SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, pooling="mean"),
    "small": dict(embed_dim=384, depth=12, num_heads=6, pooling="token"),
    "base": dict(embed_dim=768, depth=12, num_heads=12, pooling="mean"),
}


def _register_sizes(prefix: str, cls: type, what: str) -> None:
    for size, defaults in SIZES.items():
        def build(num_classes: int, _defaults=defaults, **overrides):
            return cls(num_classes, **{**_defaults, **overrides})

        build.__doc__ = f"{what}, {size}: width {defaults['embed_dim']}, " \
                        f"{defaults['num_heads']} heads, {defaults['pooling']} pooling."
        register_model(f"{prefix}-{size}")(build)


_register_sizes("vit", AudioViT, "Full-context audio ViT of paper 003")
