"""HTS-AT (Chen et al., ICASSP 2022): a hierarchical token-semantic audio transformer.

The 10 s log-mel (1001 frames at 32 kHz, hop 320) is interpolated to 1024 frames and
folded into a 256x256 image (four 256-frame patch windows stacked along frequency), cut
into 4x4 patches, and passed through four groups of Swin blocks (8x8 attention windows,
shifted every other block, relative position bias) with patch merging between groups. The
token-semantic module, a convolution over the last group's frequency tokens, maps 8D
channels to C classes per time token: an event-presence map whose mean gives the clip
logits and whose sigmoid, repeated to the input frames, gives frame scores.

Parameter names follow the official implementation (``patch_embed``, ``layers.i.blocks.j``,
``layers.i.downsample``, ``norm``, ``tscam_conv``, ``bn0``) so its checkpoints convert
key by key (:mod:`earmark.models.convert`).

    >>> import torch, earmark
    >>> model = earmark.create_model("htsat-tiny", num_classes=5).eval()
    >>> clip, frames = model.forward_frames(torch.zeros(1, 32000))
    >>> clip.shape, frames.shape
    (torch.Size([1, 5]), torch.Size([1, 101, 5]))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from earmark.models.base import AudioModel
from earmark.models.layers import DropPath, Mlp, init_vit_weights
from earmark.models.registry import register_model


def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in row-major order."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, c)


def window_reverse(windows: torch.Tensor, w: int, h: int, wd: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, w*w, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // w, wd // w, w, w, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, wd, c)


def window_order(h: int, wd: int, w: int, shift: int) -> torch.Tensor:
    """(H*W,) row-major token indices in window order: the tokens :func:`window_partition`
    yields after a cyclic shift by ``-shift``, so ``x[:, window_order(...)]`` is the same
    as rolling and partitioning a (B, H*W, C) map in one gather."""
    idx = torch.arange(h * wd).view(1, h, wd, 1)
    if shift:
        idx = torch.roll(idx, (-shift, -shift), dims=(1, 2))
    return window_partition(idx, w).reshape(-1)


def merge_order(h: int, wd: int) -> torch.Tensor:
    """(H*W,) row-major token indices in the order :class:`PatchMerge` concatenates them:
    for each 2x2 neighbourhood, (even, even), (odd, even), (even, odd), (odd, odd)."""
    idx = torch.arange(h * wd).view(h, wd)
    parts = [idx[0::2, 0::2], idx[1::2, 0::2], idx[0::2, 1::2], idx[1::2, 1::2]]
    return torch.stack(parts, -1).reshape(-1)


def relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 table of relative offsets (Swin's layout)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # (N, N, 2)
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def shifted_window_mask(h: int, wd: int, w: int, shift: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask: -100 between tokens that the cyclic shift made neighbours."""
    region = torch.zeros(1, h, wd, 1)
    cuts = (slice(0, -w), slice(-w, -shift), slice(-shift, None))
    for n, (hs, ws) in enumerate((hs, ws) for hs in cuts for ws in cuts):
        region[:, hs, ws, :] = n
    ids = window_partition(region, w).squeeze(-1)  # (nW, w*w)
    diff = ids.unsqueeze(1) - ids.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, num_heads: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window),
                             persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def bias(self) -> torch.Tensor:
        n = self.window * self.window
        table = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return table.view(n, n, -1).permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, batch: int) -> torch.Tensor:
        """x: (B * nW, N, C); mask: (nW, N, N) or None."""
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B * nW, heads, N, head_dim)
        bias = self.bias().unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            # (B * nW, heads, N, N): repeated over the batch so the fused 4-D kernel applies
            bias = (bias + mask.unsqueeze(1)).repeat(batch, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype),
                                             dropout_p=self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SwinBlock(nn.Module):
    """(Shifted-)window attention block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int,
                 shift: int, mlp_ratio: float = 4.0, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # the whole map fits in one window: nothing to shift
            window, shift = min(resolution), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shifted_window_mask(*resolution, window, shift) if shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, n, c = x.shape
        y = self.norm1(x).view(b, h, w, c)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(window_partition(y, self.window), self.attn_mask, b)
        y = window_reverse(y, self.window, h, w)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, n, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    window_tokens = 2048  # tokens per step of forward_windows_ (fits a 2 MB L2 at C <= 192)

    def forward_windows_(self, x: torch.Tensor) -> torch.Tensor:
        """Inference on ``x`` (B, H*W, C) already in this block's window order, updated in
        place and returned: the same sums as :meth:`forward`, without autograd.

        Windows are processed a few at a time (about ``window_tokens`` tokens), so each
        step's attention, residual, layer norms and MLP hidden layer stay in the CPU's cache
        instead of streaming the whole map through memory once per operation. Measured on
        the paper-size model, batch 4, 2 cores: the first group's blocks took 28-36 ms
        instead of 39-49 ms. With the rolls and partitions folded into one gather per block
        (:class:`SwinGroup`), this is what brings the small-channel first groups near the
        machine's matmul rate."""
        b, length, c = x.shape
        attn, n = self.attn, self.window * self.window
        heads = attn.num_heads
        per_clip = length // n  # windows per clip
        windows = x.view(b * per_clip, n, c)
        bias = attn.bias().unsqueeze(0)  # (1, heads, N, N)
        if self.attn_mask is not None:
            bias = bias + self.attn_mask.unsqueeze(1)  # (nW, heads, N, N)
        step = min(max(1, self.window_tokens // n), windows.shape[0])  # no more than there are
        if step < per_clip:  # a divisor of the windows per clip, so mask slices line up
            while per_clip % step:
                step -= 1
        else:  # whole clips at a time
            step = step // per_clip * per_clip
            if bias.shape[0] > 1:
                bias = bias.repeat(step // per_clip, 1, 1, 1)
        for start in range(0, windows.shape[0], step):
            part = windows[start:start + step]
            k = part.shape[0]
            if bias.shape[0] == 1:
                mask = bias
            elif step < per_clip:
                mask = bias[start % per_clip:start % per_clip + k]
            else:
                mask = bias[:k]
            y = F.layer_norm(part, (c,), self.norm1.weight, self.norm1.bias, self.norm1.eps)
            qkv = attn.qkv(y).view(k, n, 3, heads, c // heads)
            q, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            y = F.scaled_dot_product_attention(q, key, value, attn_mask=mask.to(q.dtype))
            _add_linear_(part, y.transpose(1, 2).reshape(k, n, c), attn.proj)
            y = F.layer_norm(part, (c,), self.norm2.weight, self.norm2.bias, self.norm2.eps)
            _add_linear_(part, torch.ops.aten.gelu_(self.mlp.fc1(y)), self.mlp.fc2)
        return x


def _add_linear_(x: torch.Tensor, y: torch.Tensor, linear: nn.Linear) -> None:
    """``x += linear(y)`` in place: the product accumulates into ``x`` (no output buffer)."""
    x2, y2 = x.view(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if x2.dtype == y2.dtype == linear.weight.dtype:
        torch.addmm(x2, y2, linear.weight.t(), out=x2)
        if linear.bias is not None:
            x2.add_(linear.bias)
    else:  # mixed precision (autocast): let the layer choose its dtype
        x2.add_(linear(y2))


class PatchMerge(nn.Module):
    """(B, H*W, C) -> (B, H/2*W/2, 2C): concatenate each 2x2 neighbourhood, norm, project."""

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        # the official order: (even, even), (odd, even), (even, odd), (odd, odd)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.merge(x.view(b, -1, 4 * c))

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H/2*W/2, 4C) neighbourhoods already concatenated -> (B, H/2*W/2, 2C)."""
        return self.reduction(self.norm(x))


class SwinGroup(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int,
                 window: int, mlp_ratio: float, drop: float, attn_drop: float,
                 drop_path: list[float], merge: bool):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2,
                      mlp_ratio, drop, attn_drop, drop_path[i]) for i in range(depth)])
        self.downsample = PatchMerge(resolution, dim) if merge else None
        # Gathers for inference (forward_windows): token order from one block's windows to
        # the next block's, and from the last block's to the merge order (or row-major)
        orders = [window_order(*resolution, blk.window, blk.shift) for blk in self.blocks]
        inverse = [torch.argsort(o) for o in orders]
        out = merge_order(*resolution) if merge else torch.arange(resolution[0] * resolution[1])
        steps = [orders[0]] + [inverse[i - 1][orders[i]] for i in range(1, depth)]
        for i, step in enumerate(steps):
            self.register_buffer(f"order_{i}", step, persistent=False)
        self.register_buffer("order_out", inverse[-1][out], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training or torch.is_grad_enabled()):
            return self.forward_windows(x)
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x

    def forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Inference path of :meth:`forward` (no autograd): each block gathers the tokens
        into its shifted window order once and works in place, and the last gather puts
        them in patch-merge order. Same scores as the eager path, within float rounding."""
        for i, blk in enumerate(self.blocks):
            x = blk.forward_windows_(x.index_select(1, getattr(self, f"order_{i}")))
        x = x.index_select(1, self.order_out)
        if self.downsample is None:
            return x
        b, n, c = x.shape
        return self.downsample.merge(x.view(b, n // 4, 4 * c))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, H'*W', D)


class HTSAT(AudioModel):
    family = "htsat"

    def __init__(self, num_classes: int, embed_dim: int = 96, depths=(2, 2, 6, 2),
                 num_heads=(4, 8, 16, 32), window_size: int = 8, patch_size: int = 4,
                 spec_size: int = 256, mlp_ratio: float = 4.0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 target_frames: int = 1001, frontend: str | dict = "htsat",
                 clip_seconds: float = 10.0, multi_label: bool = True, fit: str | None = None):
        super().__init__(num_classes, frontend, clip_seconds, multi_label)
        depths, num_heads = list(depths), list(num_heads)
        self.init_args = dict(
            embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
            patch_size=patch_size, spec_size=spec_size, mlp_ratio=mlp_ratio,
            drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
            target_frames=target_frames, frontend=self.frontend.config.to_dict(),
            clip_seconds=clip_seconds, multi_label=multi_label, fit=fit)
        self.fit = fit
        n_mels = self.frontend.config.n_mels
        if spec_size % n_mels:
            raise ValueError(f"spec_size {spec_size} is not a multiple of {n_mels} mel bins")
        self.spec_size = spec_size
        self.freq_ratio = spec_size // n_mels  # patch windows stacked along frequency
        self.target_frames = target_frames  # frames of one window of audio (10 s: 1001)
        self.embed_dim = embed_dim
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        grid = spec_size // patch_size
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(depths, num_heads)):
            res = (grid // 2 ** i, grid // 2 ** i)
            self.layers.append(SwinGroup(
                embed_dim * 2 ** i, res, depth, heads, window_size, mlp_ratio, drop_rate,
                attn_drop_rate, rates[sum(depths[:i]):sum(depths[:i + 1])],
                merge=i < len(depths) - 1))
        self.norm = nn.LayerNorm(self.num_features)
        final = grid // 2 ** (len(depths) - 1)  # tokens per side after the last group
        self.token_freq = final // self.freq_ratio  # frequency tokens per patch window
        # token-semantic module: kernel (F/8P, 3) over (frequency, time), padding (0, 1)
        self.tscam_conv = nn.Conv2d(self.num_features, num_classes, (self.token_freq, 3),
                                    padding=(0, 1))
        self.apply(init_vit_weights)

    # ---- input handling (official inference rules) -------------------------------------------

    @property
    def image_frames(self) -> int:
        return self.spec_size * self.freq_ratio  # 1024

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, T, F) with T <= 1024 -> (B, 1, 256, 256): interpolate time, fold windows."""
        b, _, t, f = x.shape
        if t < self.image_frames:
            x = F.interpolate(x, (self.image_frames, f), mode="bicubic", align_corners=True)
        x = x.permute(0, 1, 3, 2)  # (B, 1, F, T)
        x = x.reshape(b, 1, f, self.freq_ratio, self.spec_size).permute(0, 1, 3, 2, 4)
        return x.reshape(b, 1, self.freq_ratio * f, self.spec_size)

    def forward_features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) -> (B, C, T') event-presence logits, T' = 32 time tokens."""
        x = self.pos_drop(self.patch_embed(img))
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # (B, S*S, 8D), frequency-major
        b, n, c = x.shape
        side = int(math.isqrt(n))
        x = x.transpose(1, 2).reshape(b, c, self.freq_ratio, self.token_freq, side)
        # un-fold the patch windows back into time: (B, 8D, F', windows * T')
        x = x.permute(0, 1, 3, 2, 4).reshape(b, c, self.token_freq, self.freq_ratio * side)
        return self.tscam_conv(x).flatten(2)

    def _window_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, T, F) normalised, T <= 1024 -> clip logits (B, C), frame probs (B, T, C)."""
        t = x.shape[2]
        reps = max(1, self.image_frames // t)  # short clips repeated (1 s x10, 5 s x2)
        if reps > 1:
            x = x.repeat(1, 1, reps, 1)
        presence = self.forward_features(self.to_image(x))  # (B, C, T')
        clip = presence.mean(-1)
        # frame scores on the 1024-frame grid, as the official code, then back to input frames
        grid = presence.sigmoid().repeat_interleave(self.image_frames // presence.shape[-1], -1)
        frames = F.interpolate(grid, size=t * reps, mode="linear", align_corners=True)
        frames = frames.view(*frames.shape[:2], reps, t).mean(2)  # average the repetitions
        return clip, frames.transpose(1, 2)

    def normalize(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, F, T) log-mel -> (B, 1, T, F), each mel bin batch-normalised."""
        return self.bn0(spec.unsqueeze(-1)).squeeze(-1).transpose(1, 2).unsqueeze(1)

    def forward_spectrogram_frames(self, spec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, F, T) -> clip logits (B, C) and frame scores (B, T, C) (probabilities)."""
        x = self.normalize(spec)
        t = x.shape[2]
        if self.training and t > self.image_frames:  # random 1024-frame crop, as the official
            start = int(torch.randint(0, t - self.image_frames + 1, (1,)))
            return self._window_outputs(x[:, :, start:start + self.image_frames])
        if t <= self.image_frames:
            return self._window_outputs(x)
        # longer than 10 s: windows of target_frames, the last one ending at the end; clip
        # scores are the mean of the windows' scores, frame scores the mean where they overlap
        win = self.target_frames
        starts = list(range(0, t - win + 1, win))
        if starts[-1] + win < t:
            starts.append(t - win)
        clips = []
        frames = x.new_zeros(x.shape[0], t, self.num_classes)
        count = x.new_zeros(1, t, 1)
        for s in starts:
            c, f = self._window_outputs(x[:, :, s:s + win])
            clips.append(self.activation(c))
            frames[:, s:s + win] += f
            count[:, s:s + win] += 1
        return self.scores_to_logits(torch.stack(clips).mean(0)), frames / count

    def forward_spectrogram(self, spec: torch.Tensor) -> torch.Tensor:
        return self.forward_spectrogram_frames(spec)[0]

    def forward_frames(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N) waveform -> clip logits (B, C), frame scores (B, T, C), one per hop."""
        spec = self.frontend(wave)
        if self.training and self.spec_augment is not None:
            spec = self.spec_augment(spec)
        return self.forward_spectrogram_frames(spec)

    @property
    def frame_seconds(self) -> float:
        return self.frontend.config.hop_length / self.sample_rate

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        old = self.tscam_conv
        self.tscam_conv = nn.Conv2d(old.in_channels, num_classes, old.kernel_size,
                                    padding=old.padding)


@register_model("htsat")
def htsat(num_classes: int, **overrides) -> HTSAT:
    """The paper's HTS-AT: D=96, groups of 2-2-6-2 blocks, 4-8-16-32 heads, window 8, patch 4."""
    return HTSAT(num_classes, **overrides)


@register_model("htsat-tiny")
def htsat_tiny(num_classes: int, **overrides) -> HTSAT:
    """A CPU-sized HTS-AT: D=32, 1-1-2-1 blocks, 1-2-4-8 heads; trains in minutes on 2 cores."""
    defaults = dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8))
    return HTSAT(num_classes, **{**defaults, **overrides})
