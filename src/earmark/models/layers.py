"""Blocks shared by two or more model families: pre-norm transformer block, attention, MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (the layout of ViT checkpoints)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_cached(x)[0]

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``x`` (B, N, D), each (B, heads, N, head_dim)."""
        b, n, d = x.shape
        w, bias = self.qkv.weight[d:], None if self.qkv.bias is None else self.qkv.bias[d:]
        kv = F.linear(x, w, bias).reshape(b, n, 2, self.num_heads, d // self.num_heads)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward_cached(self, x: torch.Tensor, past_k: torch.Tensor | None = None,
                       past_v: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attention of ``x`` over ``past`` keys/values and its own: (out, k, v of ``x``).

        Streaming models cache a chunk's keys and values instead of its hidden states, so the
        next chunk does not project them again (Transformer-XL memory, paper 003 eq. 3)."""
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        keys = k if past_k is None else torch.cat((past_k, k), dim=2)
        values = v if past_v is None else torch.cat((past_v, v), dim=2)
        # the fused kernel computes softmax(q k^T / sqrt(head_dim)) v without materialising copies
        out = F.scaled_dot_product_attention(q, keys, values,
                                             dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, d))), k, v


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))

    def forward_cached(self, x: torch.Tensor, past_k: torch.Tensor | None,
                       past_v: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`forward`, attending also to cached keys/values; returns this chunk's."""
        y, k, v = self.attn.forward_cached(self.norm1(x), past_k, past_v)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x))), k, v


def init_vit_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights (std 0.02), zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def resize_pos_embed(value: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """A (1, D, F, T) position embedding cropped to ``size`` along ``dim`` (2: frequency,
    3: time), or interpolated bilinearly when it is shorter, as the SAT repository's loader
    fits released embeddings to a model of another length.

        >>> resize_pos_embed(torch.zeros(1, 8, 1, 63), 25, 3).shape
        torch.Size([1, 8, 1, 25])
        >>> resize_pos_embed(torch.zeros(1, 8, 4, 1), 6, 2).shape
        torch.Size([1, 8, 6, 1])
    """
    if value.shape[dim] >= size:
        return value.narrow(dim, 0, size)
    target = (1, size) if dim == 3 else (size, 1)
    return F.interpolate(value, size=target, mode="bilinear", align_corners=False)
