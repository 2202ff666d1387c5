"""Streaming audio transformers (SAT) of paper 003 (Dinkel et al., "Streaming Audio
Transformers"): the audio ViT of :mod:`earmark.models.vit`, tagging chunk by chunk with a
cache of the previous chunk (:class:`ChunkCache`), registered as ``sat-tiny``, ``sat-small``
and ``sat-base``.

    >>> import torch, earmark
    >>> sat = earmark.create_model("sat-tiny", num_classes=10, chunk_seconds=1.0).eval()
    >>> logits, cache = sat.forward_chunk(torch.zeros(1, 16000), sat.prime_cache(1))
    >>> logits.shape, cache.tokens == sat.cache_tokens
    (torch.Size([1, 10]), True)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from earmark.audio.features import frontend_config
from earmark.errors import ModelError
from earmark.models.vit import AudioViT, _pair, _register_sizes
from earmark.steps import Steps


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

    @staticmethod
    def cat(caches: list[ChunkCache]) -> ChunkCache:
        """The caches of several streams as one batch (all with the same number of tokens)."""
        return ChunkCache(torch.cat([c.h0 for c in caches]),
                          torch.cat([c.keys for c in caches], 1),
                          torch.cat([c.values for c in caches], 1))

    def split(self) -> list[ChunkCache]:
        """The batch's caches one stream at a time (the inverse of :meth:`cat`)."""
        return [ChunkCache(self.h0[i:i + 1], self.keys[:, i:i + 1], self.values[:, i:i + 1])
                for i in range(self.h0.shape[0])]


class ChunkStep(nn.Module):
    """A streaming model's :meth:`~StreamingAudioViT.forward_chunk` with the cache as plain
    tensors: ``(wave, h0, keys, values) -> (logits, next_h0, next_keys, next_values)``. The
    one graph that tracing, ``torch.compile`` and ONNX export all take."""

    def __init__(self, model: StreamingAudioViT):
        super().__init__()
        self.model = model

    def forward(self, wave: torch.Tensor, h0: torch.Tensor, keys: torch.Tensor,
                values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, cache = self.model.forward_chunk(wave, ChunkCache(h0, keys, values))
        return logits, cache.h0, cache.keys, cache.values


class StreamingAudioViT(AudioViT):
    """SAT (paper 003, section 3): each block attends to the current chunk and to a cache of
    the previous chunk (Transformer-XL style, stop-gradient). ``chunk_seconds`` 1 or 2 gives
    96 or 192 frames per chunk, as the released models."""

    family = "vit"
    is_streaming = True

    def __init__(self, num_classes: int, chunk_seconds: float = 2.0, pad_last: bool = False,
                 target_length: int | None = None, cache_length: int | None = None,
                 **kwargs):
        if kwargs.get("token_learner"):
            raise ModelError("token_learner is not available for streaming models yet: the "
                             "blocks after it would cache learned tokens, which the official "
                             "SAT position handling does not define; use vit-* instead")
        stride = _pair(kwargs.get("patch_stride", 16))[1]
        fe = frontend_config(kwargs.get("frontend", "sat"))
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
        scores = []
        for piece in self._cached_pieces(x):
            feats, cache = self.forward_features_cached(piece, cache)
            scores.append(self.activation(self.forward_head(feats)))
        return self.scores_to_logits(torch.stack(scores).mean(0)), cache

    def spectrogram_steps(self, spec: torch.Tensor) -> Steps[torch.Tensor]:
        """:meth:`forward_spectrogram` yielding after each piece through the cache."""
        x = self.normalize(spec)
        cache = self.empty_cache(x.shape[0], x.device)
        if x.shape[-1] <= self.target_length:
            logits = self.forward_head(self.forward_features_cached(x, cache)[0])
            yield
            return logits
        scores = []
        for piece in self._cached_pieces(x):
            feats, cache = self.forward_features_cached(piece, cache)
            scores.append(self.activation(self.forward_head(feats)))
            yield
        return self.scores_to_logits(torch.stack(scores).mean(0))

    def _cached_pieces(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Pieces of ``target_length`` frames; a shorter tail dropped, or padded to whole
        patches when ``pad_last``."""
        stride = self.patch_embed.patch_stride[1]
        for piece in x.split(self.target_length, -1):
            n = piece.shape[-1]
            if n != self.target_length:
                if not self.pad_last:
                    continue
                piece = nn.functional.pad(piece, (0, -(-n // stride) * stride - n))
            yield piece

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.forward_spectrogram_cached(spec)[0]

    def forward_chunk(self, wave: torch.Tensor, cache: ChunkCache | None = None
                      ) -> tuple[torch.Tensor, ChunkCache]:
        """One chunk of waveform (B, N), with its own front end pass -> (logits, cache)."""
        return self.forward_spectrogram_cached(self.frontend(wave), cache)

    def traced_chunk_step(self, wave: torch.Tensor, cache: ChunkCache, compile: bool = False):
        """A TorchScript-traced and frozen :meth:`forward_chunk` for inputs shaped like
        ``wave`` and ``cache`` (a full cache): the same numbers with less per-op overhead,
        for streaming on a CPU. Returns ``step(wave, cache) -> (logits, cache)``. On a CPU
        the frozen graph is also passed through ``torch.jit.optimize_for_inference``
        (oneDNN with pre-packed weights: the 2 s sat-tiny step 1.76x the official step at
        one thread, against 1.43x frozen only) when its outputs agree with the frozen
        graph's on the example within 1e-4; otherwise the frozen graph is used.

        ``compile=True`` uses ``torch.compile`` (inductor, with frozen, pre-packed weights)
        instead: about half the per-chunk time of eager mode on a 2-core CPU, after a
        one-time compilation of about half a minute; scores within a few 1e-6."""
        was_training = self.training
        self.eval()
        if compile:
            with torch.no_grad(), warnings.catch_warnings():  # compile now, not mid-stream
                # inductor's first import defines classes with the deprecated
                # torch.jit.script_method, and it falls back to eager code for the complex
                # STFT: both are torch's own, nothing to act on here
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.filterwarnings("ignore", "Torchinductor does not support code "
                                        "generation for complex operators")
                # freezing folds the weights into the graph and pre-packs them for oneDNN;
                # as an option of this function it holds for each of its (re)compilations
                # and leaves inductor's process-wide config alone
                run = torch.compile(ChunkStep(self).eval(), dynamic=False,
                                    options={"freezing": True})
                run(wave, cache.h0, cache.keys, cache.values)
        else:
            with torch.no_grad(), warnings.catch_warnings():
                # the shape checks become constants in the trace: that is why it is keyed by
                # shape
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
                args = (wave, cache.h0, cache.keys, cache.values)
                traced = torch.jit.trace(ChunkStep(self).eval(), args, check_trace=False)
                run = _optimized(traced, args)
        self.train(was_training)

        def step(w: torch.Tensor, c: ChunkCache) -> tuple[torch.Tensor, ChunkCache]:
            if w.shape != wave.shape or c.h0.shape != cache.h0.shape:
                return self.forward_chunk(w, c)  # other shapes: the eager path
            with torch.no_grad():
                logits, h0, keys, values = run(w, c.h0, c.keys, c.values)
            return logits, ChunkCache(h0, keys, values)

        return step

    def prime_cache(self, batch: int = 1) -> ChunkCache:
        """A cache primed with silence, as the official inference script starts a stream."""
        n = self.cache_length * self.frontend.config.hop_length  # cache_length frames
        with torch.no_grad():
            return self.forward_chunk(self.time_pos_embed.new_zeros(batch, n))[1]


def _optimized(traced: torch.jit.ScriptModule, args: tuple) -> torch.jit.ScriptModule:
    """``traced`` frozen, and on a CPU also optimised for inference when that agrees."""
    frozen = torch.jit.freeze(traced)
    if args[0].device.type != "cpu":
        return frozen
    try:
        fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        want, got = frozen(*args), fast(*args)
    except RuntimeError:  # a build without oneDNN, or an operator it does not take
        return frozen
    same = all(a.shape == b.shape and bool(torch.allclose(a, b, rtol=0, atol=1e-4))
               for a, b in zip(want, got))
    return fast if same else frozen


_register_sizes("sat", StreamingAudioViT, "Streaming SAT (chunk_seconds 1 or 2)")
