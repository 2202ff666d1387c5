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

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from earmark.audio.features import front_end
from earmark.errors import ModelError
from earmark.models.base import AudioModel
from earmark.models.layers import Block, init_vit_weights
from earmark.models.registry import register_model


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
        pieces = list(x.split(self.target_length, -1))
        if pieces[-1].shape[-1] < self.target_length and self.pad_last:
            pieces[-1] = nn.functional.pad(pieces[-1],
                                           (0, self.target_length - pieces[-1].shape[-1]))
        else:
            # The official code drops the last piece when it is not padded, also when it is
            # full length; kept so that converted checkpoints give the official scores.
            pieces = pieces[:-1]
        n = len(pieces)
        logits = self.forward_head(self.forward_features(torch.cat(pieces, 0)))  # (n*B, C)
        scores = self.activation(logits).unflatten(0, (n, -1)).mean(0)
        return self.scores_to_logits(scores)

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


# ---- streaming: SAT ---------------------------------------------------------------------------


@dataclass
class ChunkCache:
    """What a streaming transformer carries from one chunk to the next (explicit state).

    The first block keeps the input tokens of the last chunk (the official model adds the
    time embeddings of the last positions to them before re-using them); every other block
    keeps that chunk's keys and values, so a new chunk costs one chunk's work.
    """

    h0: torch.Tensor  # (B, M, D) first block's input tokens of the previous chunk
    keys: torch.Tensor  # (L-1, B, heads, M, head_dim) keys of blocks 1..L-1
    values: torch.Tensor  # (L-1, B, heads, M, head_dim)

    @property
    def tokens(self) -> int:
        return self.h0.shape[1]

    def detach(self) -> ChunkCache:
        return ChunkCache(self.h0.detach(), self.keys.detach(), self.values.detach())


class StreamingAudioViT(AudioViT):
    """SAT (paper 003, section 3): each block attends to the current chunk and to a cache of
    the previous chunk (Transformer-XL style, stop-gradient). ``chunk_seconds`` 1 or 2 gives
    96 or 192 frames per chunk, as the released models."""

    family = "vit"

    def __init__(self, num_classes: int, chunk_seconds: float = 2.0, pad_last: bool = False,
                 target_length: int | None = None, cache_length: int | None = None,
                 **kwargs):
        if kwargs.get("token_learner"):
            raise ModelError("token_learner is not available for streaming models yet: the "
                             "blocks after it would cache learned tokens, which the official "
                             "SAT position handling does not define; use vit-* instead")
        stride = _pair(kwargs.get("patch_stride", 16))[1]
        fe = front_end(kwargs.get("frontend", "sat")).config
        frames_per_second = fe.sample_rate / fe.hop_length  # 100 for the released models
        target = target_length or int(round(chunk_seconds * frames_per_second)) // stride * stride
        cache = target if cache_length is None else cache_length
        # position embeddings cover the chunk and its cache (the official max_length)
        super().__init__(num_classes, target_length=target + cache, pad_last=pad_last, **kwargs)
        self.init_args.update(chunk_seconds=chunk_seconds, target_length=target,
                              cache_length=cache)
        self.target_length = target
        self.cache_length = cache
        self.chunk_seconds = chunk_seconds
        grid_f = self.freq_pos_embed.shape[2]
        self.cache_tokens = grid_f * (cache // stride)

    @property
    def max_frames(self) -> int:
        return self.target_length

    def empty_cache(self, batch: int = 1, device=None) -> ChunkCache:
        d, blk = self.embed_dim, self.blocks[0].attn
        hd = d // blk.num_heads
        dev = device or self.time_pos_embed.device
        kv = torch.zeros(len(self.blocks) - 1, batch, blk.num_heads, 0, hd, device=dev)
        return ChunkCache(torch.zeros(batch, 0, d, device=dev), kv, kv.clone())

    def forward_features_cached(self, x: torch.Tensor, cache: ChunkCache
                                ) -> tuple[torch.Tensor, ChunkCache]:
        """(B, 1, F, T) normalised log-mel of one chunk -> (B, N, D) tokens, updated cache."""
        x, _ = self.embed(x)
        h0 = x
        past_k = past_v = None
        m = cache.tokens
        if m:
            # the cached first-block tokens get the last m time embeddings (official rule)
            grid_f = self.freq_pos_embed.shape[2]
            c = cache.h0.transpose(1, 2).unflatten(2, (grid_f, m // grid_f))  # (B, D, F', m')
            c = c + self.time_pos_embed[..., -(m // grid_f):] + self.freq_pos_embed
            blk = self.blocks[0]
            past_k, past_v = blk.attn.project_kv(blk.norm1(c.flatten(2).transpose(1, 2)))
        x, _, _ = self.blocks[0].forward_cached(x, past_k, past_v)
        keys, values = [], []
        for i, blk in enumerate(self.blocks[1:]):
            pk, pv = (cache.keys[i], cache.values[i]) if m else (None, None)
            x, k, v = blk.forward_cached(x, pk, pv)
            keys.append(k)
            values.append(v)
        n = self.cache_tokens
        if keys:
            keys, values = torch.stack(keys), torch.stack(values)
        else:  # a single block: nothing but the first block's tokens to keep
            keys = values = cache.keys.new_zeros(0, *cache.keys.shape[1:3], h0.shape[1],
                                                 cache.keys.shape[-1])
        if h0.shape[1] >= n:  # a whole chunk: the old cache drops out entirely
            new = ChunkCache(h0[:, -n:], keys[..., -n:, :], values[..., -n:, :])
        else:  # a short chunk: keep the newest n tokens of old and new, as the official code
            new = ChunkCache(torch.cat((cache.h0, h0), 1)[:, -n:],
                             torch.cat((cache.keys, keys), 3)[..., -n:, :],
                             torch.cat((cache.values, values), 3)[..., -n:, :])
        return self.norm(x), new.detach()  # stop-gradient into the past (paper 003, eq. 3)

    def forward_spectrogram_cached(self, spec: torch.Tensor, cache: ChunkCache | None = None
                                   ) -> tuple[torch.Tensor, ChunkCache]:
        """(B, F, T) -> (B, C) logits and the cache, by the official rules: pieces of
        ``target_length`` frames in turn through the cache, a shorter tail dropped (or padded
        to whole patches when ``pad_last``), scores averaged."""
        x = self.normalize(spec)
        cache = cache if cache is not None else self.empty_cache(x.shape[0], x.device)
        if x.shape[-1] <= self.target_length:
            feats, cache = self.forward_features_cached(x, cache)
            return self.forward_head(feats), cache
        stride = self.patch_embed.patch_stride[1]
        scores = []
        for piece in x.split(self.target_length, -1):
            n = piece.shape[-1]
            if n != self.target_length:
                if not self.pad_last:
                    continue
                piece = nn.functional.pad(piece, (0, -(-n // stride) * stride - n))
            feats, cache = self.forward_features_cached(piece, cache)
            scores.append(self.activation(self.forward_head(feats)))
        return self.scores_to_logits(torch.stack(scores).mean(0)), cache

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.forward_spectrogram_cached(spec)[0]

    def forward_chunk(self, wave: torch.Tensor, cache: ChunkCache | None = None
                      ) -> tuple[torch.Tensor, ChunkCache]:
        """One chunk of waveform (B, N), with its own front end pass -> (logits, cache)."""
        return self.forward_spectrogram_cached(self.frontend(wave), cache)

    def traced_chunk_step(self, wave: torch.Tensor, cache: ChunkCache, compile: bool = False):
        """A TorchScript-traced and frozen :meth:`forward_chunk` for inputs shaped like
        ``wave`` and ``cache`` (a full cache): the same numbers with less per-op overhead,
        for streaming on a CPU. Returns ``step(wave, cache) -> (logits, cache)``.

        ``compile=True`` uses ``torch.compile`` (inductor, with frozen, pre-packed weights)
        instead: about half the per-chunk time of eager mode on a 2-core CPU, after a
        one-time compilation of about half a minute; scores within a few 1e-6."""
        model = self

        class _Step(nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, w, h0, keys, values):
                logits, c = self.model.forward_chunk(w, ChunkCache(h0, keys, values))
                return logits, c.h0, c.keys, c.values

        was_training = self.training
        self.eval()
        if compile:
            import torch._inductor.config as inductor_config

            # freezing folds the weights into the graph and pre-packs them for oneDNN; inductor
            # reads it whenever it (re)compiles, so it stays on for the process
            inductor_config.freezing = True
            compiled = torch.compile(_Step().eval(), dynamic=False)
            with torch.no_grad():  # compile now, not in the middle of a stream
                compiled(wave, cache.h0, cache.keys, cache.values)
            self.train(was_training)

            def compiled_step(w, c):
                if w.shape != wave.shape or c.h0.shape != cache.h0.shape:
                    return self.forward_chunk(w, c)
                with torch.no_grad():
                    logits, h0, keys, values = compiled(w, c.h0, c.keys, c.values)
                return logits, ChunkCache(h0, keys, values)

            return compiled_step
        with torch.no_grad(), warnings.catch_warnings():
            # the shape checks become constants in the trace: that is why it is keyed by shape
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
            args = (wave, cache.h0, cache.keys, cache.values)
            frozen = torch.jit.freeze(torch.jit.trace(_Step().eval(), args, check_trace=False))
        self.train(was_training)

        def step(w: torch.Tensor, c: ChunkCache) -> tuple[torch.Tensor, ChunkCache]:
            if w.shape != wave.shape or c.h0.shape != cache.h0.shape:
                return self.forward_chunk(w, c)  # other shapes: the eager path
            with torch.no_grad():
                logits, h0, keys, values = frozen(w, c.h0, c.keys, c.values)
            return logits, ChunkCache(h0, keys, values)

        return step

    def prime_cache(self, batch: int = 1) -> ChunkCache:
        """A cache primed with silence, as the official inference script starts a stream."""
        n = self.cache_length * self.frontend.config.hop_length  # cache_length frames
        with torch.no_grad():
            return self.forward_chunk(self.time_pos_embed.new_zeros(batch, n))[1]


_register_sizes("sat", StreamingAudioViT, "Streaming SAT (chunk_seconds 1 or 2)")
