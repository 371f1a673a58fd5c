"""Vector quantiser shared by the video tokenizer (1024 codes) and the LAM (8 actions).

Codebook collapse (a few codes take every input, the rest never train) is the classic VQ
failure and the known trouble of open Genie LAMs. Three defences, all on by default:

- Low-dimensional codes: inputs are projected from the model width down to `code_dim`
  (32 in the paper) before lookup and back up afterwards, so the codebook is small and
  every code lives in the same space as the inputs it competes for.
- l2-normalised codes and inputs: the lookup is by cosine similarity, so a code cannot
  win or lose by its norm alone (the "improved VQGAN" recipe).
- Dead-code restart: in training every code counts the steps since it was last chosen;
  a code unused for `dead_code_threshold` steps is re-initialised from a random encoder
  output of the current batch, so it restarts where the inputs are.

Gradients reach the encoder through the straight-through estimator; the codebook trains
by the codebook loss ||sg(z) - q||² and the encoder is held near its codes by the
commitment loss beta·||z - sg(q)||².

Under torch.distributed, usage counts are summed over ranks and restarted codes are
broadcast from rank 0, so every replica keeps the same codebook (DDP). A restart writes
the codebook in place, so FSDP must leave the codebook unsharded (training/distributed.py
does: it is replicated, its gradients averaged).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class VectorQuantizer(nn.Module):
    """Quantise (..., input_dim) vectors; indices have the leading shape.

    `forward(x) -> (quantized, indices, loss, metrics)` with `quantized` of shape
    (..., output_dim) (output_dim defaults to input_dim), `indices` long (...),
    `loss` the scalar codebook + commitment loss and `metrics` a dict of detached scalar
    tensors: `perplexity` (exp of the entropy of code use in the batch) and `usage`
    (fraction of codes used in the batch). The buffer `usage_ema` keeps a running per-code
    share of assignments, `steps_unused` the steps since each code was last chosen.
    """

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        input_dim: int,
        beta: float = 0.25,
        l2_normalize: bool = True,
        dead_code_threshold: int = 256,
        restart: bool = True,
        output_dim: int | None = None,
        usage_decay: float = 0.99,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.beta = beta
        self.l2_normalize = l2_normalize
        self.dead_code_threshold = dead_code_threshold
        self.restart = restart
        self.usage_decay = usage_decay
        self.project_in = nn.Linear(input_dim, code_dim)
        self.project_out = nn.Linear(code_dim, output_dim or input_dim)
        self.codebook = nn.Embedding(codebook_size, code_dim)
        self.register_buffer("usage_ema", torch.full((codebook_size,), 1.0 / codebook_size))
        self.register_buffer("steps_unused", torch.zeros(codebook_size, dtype=torch.long))

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.l2_normalize else x

    def _codes_KD(self) -> torch.Tensor:
        return self._normalize(self.codebook.weight)

    def _nearest(self, z_ZD: torch.Tensor, codes_KD: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:
            return (z_ZD @ codes_KD.t()).argmax(dim=-1)
        return torch.cdist(z_ZD, codes_KD).argmin(dim=-1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest code of each input vector; no bookkeeping, no loss."""
        z = self._normalize(self.project_in(x))
        z_ZD = rearrange(z, "... d -> (...) d")
        return self._nearest(z_ZD, self._codes_KD()).reshape(x.shape[:-1])

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (...) -> embeddings (..., output_dim)."""
        return self.project_out(self._codes_KD()[indices])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        z = self._normalize(self.project_in(x))
        z_ZD = rearrange(z, "... d -> (...) d")
        if self.training and self.restart:
            # Revive before lookup, so the codebook is not changed under a live graph.
            self._restart_dead_codes(z_ZD.detach())

        codes_KD = self._codes_KD()
        indices_Z = self._nearest(z_ZD.detach(), codes_KD)
        q_ZD = codes_KD[indices_Z]

        codebook_loss = F.mse_loss(q_ZD, z_ZD.detach())
        commitment_loss = F.mse_loss(z_ZD, q_ZD.detach())
        loss = codebook_loss + self.beta * commitment_loss

        # Straight-through: the forward pass uses q, the backward pass treats q as z.
        q_ZD = z_ZD + (q_ZD - z_ZD).detach()
        quantized = self.project_out(q_ZD).reshape(*x.shape[:-1], -1)
        indices = indices_Z.reshape(x.shape[:-1])

        counts_K = torch.bincount(indices_Z, minlength=self.codebook_size).float()
        if self.training:
            self._update_usage(counts_K)
        return quantized, indices, loss, code_use_metrics(counts_K)

    @torch.no_grad()
    def _update_usage(self, counts_K: torch.Tensor) -> None:
        counts_K = update_usage_ema(self.usage_ema, counts_K, self.usage_decay)
        used_K = counts_K > 0
        self.steps_unused.add_(1).masked_fill_(used_K, 0)

    @torch.no_grad()
    def _restart_dead_codes(self, z_ZD: torch.Tensor) -> None:
        dead_K = self.steps_unused >= self.dead_code_threshold
        num_dead = int(dead_K.sum())
        if num_dead == 0:
            return
        # Sample with replacement: a LAM batch can hold fewer vectors than dead codes.
        picks = torch.randint(0, z_ZD.shape[0], (num_dead,), device=z_ZD.device)
        # A little noise keeps codes revived from the same input from staying identical.
        new_codes = z_ZD[picks] + 0.01 * torch.randn_like(z_ZD[picks]) * z_ZD.std().clamp(min=1e-3)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(new_codes, src=0)
        self.codebook.weight[dead_K] = new_codes.to(self.codebook.weight.dtype)
        self.steps_unused[dead_K] = 0
        self.usage_ema[dead_K] = 1.0 / self.codebook_size


def code_use_metrics(counts_K: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached `perplexity` (exp of the entropy of code use) and `usage` (fraction of the
    codes used) of one batch's per-code counts."""
    share_K = counts_K / counts_K.sum().clamp(min=1)
    entropy = -(share_K * torch.log(share_K.clamp(min=1e-10))).sum()
    return {
        "perplexity": entropy.exp().detach(),
        "usage": (counts_K > 0).float().mean().detach(),
    }


@torch.no_grad()
def update_usage_ema(usage_ema_K: torch.Tensor, counts_K: torch.Tensor, decay: float) -> torch.Tensor:
    """Fold one batch's counts, summed over ranks, into the running per-code share in place;
    returns the summed counts."""
    counts_K = counts_K.clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts_K)
    share_K = counts_K / counts_K.sum().clamp(min=1)
    usage_ema_K.mul_(decay).add_(share_K, alpha=1 - decay)
    return counts_K
