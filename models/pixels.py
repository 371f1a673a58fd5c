"""Pixel-space input and output layers shared by the two pixel models (tokenizer and LAM).

Videos enter as float frames in [0, 1]; they are centred to [-1, 1] before the patch
embedding so the linear layer sees zero-mean inputs. The head predicts in [0, 1] space
directly and is left unclamped in training so the loss keeps its gradient at the ends of
the range; `clamp(0, 1)` is applied to what is shown or scored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .patches import PatchGrid

CHANNELS = 3


class PatchEmbed(nn.Module):
    """video_BTCHW in [0, 1] -> x_BTNC."""

    def __init__(self, grid: PatchGrid, dim: int):
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(grid.patch_dim(CHANNELS), dim)

    def forward(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        return self.proj(self.grid.patchify(video_BTCHW * 2.0 - 1.0))


class PatchHead(nn.Module):
    """x_BTNC -> video_BTCHW (unclamped, at the grid's output size)."""

    def __init__(self, grid: PatchGrid, dim: int):
        super().__init__()
        self.grid = grid
        self.proj = nn.Linear(dim, grid.patch_dim(CHANNELS))

    def forward(self, x_BTNC: torch.Tensor) -> torch.Tensor:
        return self.grid.unpatchify(self.proj(x_BTNC))


def reconstruction_loss(pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE to train on, and the PSNR (dB) of the clamped prediction to report."""
    mse = F.mse_loss(pred_BTCHW, target_BTCHW)
    shown_mse = F.mse_loss(pred_BTCHW.detach().clamp(0, 1), target_BTCHW)
    psnr = -10.0 * torch.log10(shown_mse.clamp(min=1e-10))
    return mse, psnr


def reconstruction_output(pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, vq_loss: torch.Tensor,
                          vq_metrics: dict, **extra) -> dict:
    """The forward result shared by the VQ models that reconstruct pixels (tokenizer, LAM)."""
    recon_mse, psnr = reconstruction_loss(pred_BTCHW, target_BTCHW)
    return {
        "recon": pred_BTCHW.clamp(0, 1),
        "loss": recon_mse + vq_loss,
        **extra,
        "metrics": {"recon_mse": recon_mse.detach(), "vq_loss": vq_loss.detach(), "psnr": psnr, **vq_metrics},
    }
