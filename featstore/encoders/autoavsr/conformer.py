"""The relative-position Conformer encoder of Auto-AVSR (espnet's, PEERS.md "Auto-AVSR").

Per block (``normalize_before``, macaron style, Gulati et al. 2020)::

    x = x + 0.5 * FFN_macaron(LN(x))
    x = x + RelMHSA(LN(x), pos)            # Transformer-XL attention, espnet "latest"
    x = x + Conv(LN(x))                     # GLU -> depthwise conv -> BN -> swish -> 1x1
    x = x + 0.5 * FFN(LN(x))                # Linear -> ReLU -> Linear
    x = LN_final(x)

All LayerNorms use eps 1e-12. The input is scaled by ``sqrt(d_model)`` (espnet's
``RelPositionalEncoding``, which adds nothing to ``x``: positions enter only through
the attention's ``linear_pos`` projection of sinusoidal relative embeddings).
Attribute names follow espnet, so ``encoders.<i>.*`` / ``after_norm.*`` load as is.

Padding: attention masks padded keys (as espnet does), and the convolution module
zeroes padded steps before its depthwise convolution (espnet does not), so a clip's
rows never depend on the other clips of a batch; alone, a clip gets espnet's output.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-12


def rel_positions(length: int, d_model: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Sinusoidal embeddings of the relative positions ``length - 1, ..., -(length - 1)``.

    Returns ``[1, 2 * length - 1, d_model]``; entry ``j`` embeds offset ``r = length - 1 - j``
    (query index minus key index) as ``sin(r w_k), cos(r w_k)`` interleaved.
    """
    r = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
        * -(math.log(10000.0) / d_model)
    )
    pe = torch.zeros(2 * length - 1, d_model, device=device)
    pe[:, 0::2] = torch.sin(r * freq)
    pe[:, 1::2] = torch.cos(r * freq)
    return pe[None]


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, T, 2T - 1]`` scores by position index -> ``[B, H, T, T]`` by key.

    ``out[..., i, j] = x[..., i, T - 1 - i + j]``: the score of query ``i`` against
    relative offset ``i - j`` (Transformer-XL's pad-and-reshape trick, espnet "latest").
    """
    b, h, t, n = x.shape
    padded = torch.cat([x.new_zeros(b, h, t, 1), x], dim=-1)  # [B, H, T, 2T]
    padded = padded.view(b, h, n + 1, t)[:, :, 1:]  # drop the first (padding) row
    return padded.reshape(b, h, t, n)[..., : n // 2 + 1]


class RelPositionMultiHeadedAttention(nn.Module):
    """Multi-head self-attention with Transformer-XL relative positions (espnet names)."""

    def __init__(self, n_heads: int, d_model: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of {n_heads} heads")
        self.h, self.d_k = n_heads, d_model // n_heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(n_heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(n_heads, self.d_k))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], -1, self.h, self.d_k)  # [B, T, H, d_k]

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, key_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """``x [B, T, D]``, ``pos [1, 2T - 1, D]``, ``key_mask [B, T]`` (True = valid)."""
        q = self._heads(self.linear_q(x))
        k = self._heads(self.linear_k(x)).transpose(1, 2)  # [B, H, T, d_k]
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos)).transpose(1, 2)  # [1, H, 2T - 1, d_k]
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # [B, H, T, d_k]
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        bd = rel_shift(q_v @ p.transpose(-2, -1)) / math.sqrt(self.d_k)  # [B, H, T, T]
        if key_mask is not None:
            bd = bd.masked_fill(~key_mask[:, None, None, :], torch.finfo(bd.dtype).min)
        # softmax((q + u) k^T / sqrt(d_k) + bd) v: the content term goes through SDPA
        out = F.scaled_dot_product_attention(q_u, k, v, attn_mask=bd)  # [B, H, T, d_k]
        return self.linear_out(out.transpose(1, 2).reshape(x.shape))


class FeedForward(nn.Module):
    """``w_2(relu(w_1(x)))`` (espnet's PositionwiseFeedForward)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, hidden)
        self.w_2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, BatchNorm, swish, pointwise conv.

    The ``pointwise_cov1/2`` spelling is Auto-AVSR's (its checkpoint keys).
    """

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv module kernel must be odd, got {kernel_size}")
        self.pointwise_cov1 = nn.Conv1d(channels, 2 * channels, 1)
        self.depthwise_conv = nn.Conv1d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.norm = nn.BatchNorm1d(channels)
        self.pointwise_cov2 = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [B, T, D]``, ``mask [B, T]`` (True = valid) -> ``[B, T, D]``."""
        y = F.glu(self.pointwise_cov1(x.transpose(1, 2)), dim=1)  # [B, D, T]
        if mask is not None:
            y = y.masked_fill(~mask[:, None, :], 0.0)  # padded steps = the conv's zero padding
        y = F.silu(self.norm(self.depthwise_conv(y)))
        return self.pointwise_cov2(y).transpose(1, 2)


def layer_norm(d_model: int) -> nn.LayerNorm:
    return nn.LayerNorm(d_model, eps=LAYER_NORM_EPS)


class ConformerBlock(nn.Module):
    """One macaron Conformer block (espnet ``EncoderLayer`` names)."""

    def __init__(self, d_model: int, n_heads: int, ffn_dim: int, kernel_size: int) -> None:
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(n_heads, d_model)
        self.feed_forward = FeedForward(d_model, ffn_dim)
        self.feed_forward_macaron = FeedForward(d_model, ffn_dim)
        self.conv_module = ConvolutionModule(d_model, kernel_size)
        self.norm_ff = layer_norm(d_model)
        self.norm_mha = layer_norm(d_model)
        self.norm_ff_macaron = layer_norm(d_model)
        self.norm_conv = layer_norm(d_model)
        self.norm_final = layer_norm(d_model)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + 0.5 * self.feed_forward_macaron(self.norm_ff_macaron(x))
        x = x + self.self_attn(self.norm_mha(x), pos, mask)
        x = x + self.conv_module(self.norm_conv(x), mask)
        x = x + 0.5 * self.feed_forward(self.norm_ff(x))
        return self.norm_final(x)


class Conformer(nn.Module):
    """``encoders.0..n-1`` and ``after_norm``; :meth:`forward` returns every hidden state."""

    def __init__(
        self, *, d_model: int, n_heads: int, ffn_dim: int, n_blocks: int, kernel_size: int
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.encoders = nn.ModuleList(
            ConformerBlock(d_model, n_heads, ffn_dim, kernel_size) for _ in range(n_blocks)
        )
        self.after_norm = layer_norm(d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, upto: int | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """``x [B, T, D]`` (projected front-end output) -> (states, final).

        ``states[0]`` is the scaled input ``x * sqrt(D)`` that block 1 receives,
        ``states[i]`` the output of block ``i``; ``final`` = ``after_norm`` of the last
        block's output. ``upto``: stop after that many blocks (``final`` is then None).
        """
        x = x * math.sqrt(self.d_model)
        pos = rel_positions(x.shape[1], self.d_model, device=x.device).to(x.dtype)
        states = [x]
        n = len(self.encoders) if upto is None else upto
        for block in self.encoders[:n]:
            x = block(x, pos, mask)
            states.append(x)
        final = self.after_norm(x) if n == len(self.encoders) else None
        return states, final
