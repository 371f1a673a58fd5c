"""The spatiotemporal (ST) transformer shared by the tokenizer, the LAM and the dynamics model.

Genie factorises attention over video tokens: each block attends over the N tokens of one
frame (spatial, never masked), then over the T frames at one token position (temporal,
causal so frame t never sees frame t+1), then applies a feed-forward layer. Attention cost
is O(T·N² + N·T²) instead of O((T·N)²), and memory is linear in T.

Layouts: x_BTNC is batch, frames, tokens per frame, channels. Inside a block the spatial
step works on x_FNC with F = B·T frames, the temporal step on x_STC with S = B·N streams
(one token position followed through time).

Position embeddings live here, not in the callers: fixed sinusoidal embeddings of the
frame index and of the token index within the frame are added to the input. Being fixed,
they extend to any clip length and grid, and need no size at construction. The spatial
embedding is over the flat token index (row-major), which distinguishes every position of
a grid whose width is fixed for a given model.

Causal models can run incrementally with a `KVCache` of every layer's temporal keys and
values: `extend()` runs new frames after the cached ones and returns the longer cache.
Past frames are never recomputed, which is what makes MaskGIT sampling frame by frame
cheap (see models/dynamics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import STConfig


def sincos_embedding(positions_L: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer sinusoidal embedding, (L,) positions -> (L, dim)."""
    half = dim // 2
    freqs_D = torch.exp(-math.log(10000.0) * torch.arange(half, device=positions_L.device) / half)
    angles_LD = positions_L.float()[:, None] * freqs_D[None, :]
    return torch.cat([angles_LD.sin(), angles_LD.cos()], dim=-1)


@dataclass
class KVCache:
    """Temporal keys and values of every block for the frames run so far.

    Each entry is (k, v) shaped (B·N, heads, frames, head_dim).
    """

    frames: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def truncated(self, frames: int) -> "KVCache":
        """The cache of the first `frames` frames only: exact, since time attention is causal."""
        return KVCache(frames, [(k[:, :, :frames], v[:, :, :frames]) for k, v in self.layers])


class Attention(nn.Module):
    """Multi-head self-attention within each of Z independent sequences, x_ZLC (length L)."""

    def __init__(self, cfg: STConfig):
        super().__init__()
        self.heads = cfg.heads
        self.dropout = cfg.dropout
        head_dim = cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        # QK-norm bounds the attention logits, which keeps large models stable in bf16.
        self.q_norm = nn.RMSNorm(head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim) if cfg.qk_norm else nn.Identity()
        self.out = nn.Linear(cfg.dim, cfg.dim)

    def forward(
        self,
        x_ZLC: torch.Tensor,
        causal: bool = False,
        past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns the output and the keys/values of past + current positions."""
        q_ZHLD, k_ZHLD, v_ZHLD = rearrange(
            self.qkv(x_ZLC), "z l (three h d) -> three z h l d", three=3, h=self.heads
        )
        q_ZHLD = self.q_norm(q_ZHLD)
        k_ZHLD = self.k_norm(k_ZHLD)
        if past_kv is not None:
            k_ZHLD = torch.cat([past_kv[0], k_ZHLD], dim=2)
            v_ZHLD = torch.cat([past_kv[1], v_ZHLD], dim=2)

        new_len, total_len = q_ZHLD.shape[2], k_ZHLD.shape[2]
        mask_LS = None
        is_causal = causal and new_len > 1
        if is_causal and total_len != new_len:
            # SDPA's is_causal aligns the mask top-left; with cached keys the new queries
            # sit at the end, so the diagonal must be shifted by the cache length.
            mask_LS = torch.ones(new_len, total_len, dtype=torch.bool, device=x_ZLC.device).tril(
                total_len - new_len
            )
            is_causal = False
        out_ZHLD = F.scaled_dot_product_attention(
            q_ZHLD,
            k_ZHLD,
            v_ZHLD,
            attn_mask=mask_LS,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out_ZLC = self.out(rearrange(out_ZHLD, "z h l d -> z l (h d)"))
        return out_ZLC, (k_ZHLD, v_ZHLD)


class FeedForward(nn.Module):
    def __init__(self, cfg: STConfig):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(cfg.dim, cfg.ff_mult * cfg.dim),
            nn.GELU(),
            nn.Linear(cfg.ff_mult * cfg.dim, cfg.dim),
            nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class STBlock(nn.Module):
    """Spatial attention, temporal attention, feed-forward; each pre-norm with a residual."""

    def __init__(self, cfg: STConfig, causal_time: bool = True):
        super().__init__()
        self.causal_time = causal_time
        self.spatial_norm = nn.LayerNorm(cfg.dim)
        self.spatial_attn = Attention(cfg)
        self.temporal_norm = nn.LayerNorm(cfg.dim)
        self.temporal_attn = Attention(cfg)
        self.ff_norm = nn.LayerNorm(cfg.dim)
        self.ff = FeedForward(cfg)

    def forward(
        self, x_BTNC: torch.Tensor, past_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, N, _ = x_BTNC.shape

        x_FNC = rearrange(x_BTNC, "b t n c -> (b t) n c")
        x_FNC = x_FNC + self.spatial_attn(self.spatial_norm(x_FNC))[0]

        x_STC = rearrange(x_FNC, "(b t) n c -> (b n) t c", b=B, t=T)
        attended_STC, kv = self.temporal_attn(self.temporal_norm(x_STC), causal=self.causal_time, past_kv=past_kv)
        x_STC = x_STC + attended_STC
        x_STC = x_STC + self.ff(self.ff_norm(x_STC))

        return rearrange(x_STC, "(b n) t c -> b t n c", b=B, n=N), kv


class STTransformer(nn.Module):
    """A stack of ST blocks with position embeddings in and a LayerNorm out.

    `forward(x_BTNC) -> x_BTNC` of the same shape. Set `gradient_checkpointing = True` to
    trade compute for activation memory in training.
    """

    def __init__(self, cfg: STConfig, causal_time: bool = True):
        super().__init__()
        self.dim = cfg.dim
        self.causal_time = causal_time
        self.blocks = nn.ModuleList([STBlock(cfg, causal_time) for _ in range(cfg.depth)])
        self.out_norm = nn.LayerNorm(cfg.dim)
        self.gradient_checkpointing = False

    def forward(self, x_BTNC: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Run frames; with a cache they are the frames following the cached ones."""
        return self._run(x_BTNC, cache)[0]

    def extend(self, x_BTNC: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Like forward, and also return the cache extended by these frames."""
        return self._run(x_BTNC, cache)

    def _run(self, x_BTNC: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, KVCache]:
        if cache is not None and not self.causal_time:
            raise ValueError("a KV cache needs a causal-in-time transformer")
        _, T, N, _ = x_BTNC.shape
        first_frame = cache.frames if cache is not None else 0
        time_TC = sincos_embedding(torch.arange(first_frame, first_frame + T, device=x_BTNC.device), self.dim)
        space_NC = sincos_embedding(torch.arange(N, device=x_BTNC.device), self.dim)
        x_BTNC = x_BTNC + time_TC[None, :, None, :].to(x_BTNC.dtype) + space_NC[None, None, :, :].to(x_BTNC.dtype)

        new_layers = []
        for i, block in enumerate(self.blocks):
            past_kv = cache.layers[i] if cache is not None else None
            if self.gradient_checkpointing and self.training and past_kv is None:
                x_BTNC, kv = checkpoint(block, x_BTNC, use_reentrant=False)
            else:
                x_BTNC, kv = block(x_BTNC, past_kv)
            new_layers.append(kv)
        return self.out_norm(x_BTNC), KVCache(first_frame + T, new_layers)
