"""Finite scalar quantisation (Mentzer et al., 2023): a codebook that cannot collapse.

The input is projected to one scalar per entry of `levels`, each scalar is squashed by tanh
into (0, L-1) and rounded to one of its L values, and the digits together are a mixed-radix
number: levels (2, 2, 2) give 8 codes, (5, 3) give 15. The grid is fixed, so there is no
codebook to learn, no codebook or commitment loss, no dead codes to restart and no single
code the others can collapse onto: which code an input takes is decided by the encoder alone.

Rounding passes gradients straight through (the backward pass treats round(u) as u). Digit
values are rescaled to [-1, 1] and projected to `output_dim` for whoever consumes the code
(the LAM decoder; the dynamics model keeps its own table indexed by the code ids).

The API matches `VectorQuantizer` where the LAM uses it: `forward(x) -> (quantized, indices,
loss, metrics)`, `encode(x) -> indices`, `lookup(indices) -> embeddings`, and the `usage_ema`
buffer. FSQ has no codebook parameter, so FSDP shards its two projections like any layer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .vq import code_use_metrics, update_usage_ema


class FiniteScalarQuantizer(nn.Module):
    """Quantise (..., input_dim) vectors to prod(levels) codes; indices have the leading shape.

    `forward(x) -> (quantized (..., output_dim), indices long (...), loss (a zero scalar),
    metrics {perplexity, usage})`, as `VectorQuantizer.forward`.
    """

    def __init__(self, levels: list[int] | tuple[int, ...], input_dim: int, output_dim: int | None = None,
                 usage_decay: float = 0.99):
        super().__init__()
        if not levels or any(not isinstance(n, int) or n < 2 for n in levels):
            raise ValueError(f"every FSQ level must be an integer >= 2, got {levels!r}")
        self.codebook_size = math.prod(levels)
        self.usage_decay = usage_decay
        self.project_in = nn.Linear(input_dim, len(levels))
        self.project_out = nn.Linear(len(levels), output_dim or input_dim)
        levels_D = torch.tensor(list(levels), dtype=torch.long)
        # Digit d of code k is (k // radix_D[d]) % levels_D[d]; the first level varies fastest.
        self.register_buffer("levels_D", levels_D, persistent=False)
        self.register_buffer("radix_D", torch.cumprod(torch.cat([levels_D.new_ones(1), levels_D[:-1]]), 0),
                             persistent=False)
        self.register_buffer("usage_ema", torch.full((self.codebook_size,), 1.0 / self.codebook_size))

    def _digits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> float digits (..., D) in {0..L-1}, straight-through rounded."""
        top_D = (self.levels_D - 1).to(x.dtype)
        u = (torch.tanh(self.project_in(x)) + 1) * top_D / 2  # in (0, L-1)
        return u + (torch.round(u) - u).detach()

    def _indices(self, digits: torch.Tensor) -> torch.Tensor:
        return (digits.detach().round().long() * self.radix_D).sum(-1)

    def _embed(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits -> values in [-1, 1] (so every level spans the same range) -> output_dim."""
        top_D = (self.levels_D - 1).to(digits.dtype)
        return self.project_out(2 * digits / top_D - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Code index of each input vector; no bookkeeping."""
        return self._indices(self._digits(x))

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (...) -> embeddings (..., output_dim)."""
        digits = (indices[..., None] // self.radix_D) % self.levels_D
        return self._embed(digits.to(self.project_out.weight.dtype))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        digits = self._digits(x)
        indices = self._indices(digits)
        counts_K = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()
        if self.training:
            update_usage_ema(self.usage_ema, counts_K, self.usage_decay)
        return self._embed(digits), indices, x.new_zeros(()), code_use_metrics(counts_K)
