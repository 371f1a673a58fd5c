"""Video tokenizer: an ST-ViViT VQ-VAE turning frames into discrete tokens and back.

Frames are cut into patches (`cfg.tokenizer.patch`, 4 in the paper), encoded by a
causal-in-time ST transformer, quantised to one of `codebook_size` codes per patch, and
decoded by a second causal ST transformer. Causality in time on both sides means the tokens
of frame t depend only on frames <= t, and frame t decodes from tokens of frames <= t: the
tokenizer can encode and decode a video as it is being generated, frame by frame.

The loss is pixel MSE (on the real pixels, see models/patches.py) plus the VQ loss. The
tokenizer is trained first and then frozen while the LAM and dynamics train.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GenieConfig, resolved_decoder_st
from .patches import PatchGrid
from .pixels import PatchEmbed, PatchHead, reconstruction_output
from .st_transformer import KVCache, STTransformer
from .vq import VectorQuantizer


class VideoTokenizer(nn.Module):
    def __init__(self, cfg: GenieConfig):
        super().__init__()
        tok = cfg.tokenizer
        decoder_st = resolved_decoder_st(tok)
        self.grid = PatchGrid(cfg.image_height, cfg.image_width, tok.patch, cfg.pad_mode)
        self.tokens_hw = self.grid.tokens_hw
        self.codebook_size = tok.codebook_size

        self.embed = PatchEmbed(self.grid, tok.st.dim)
        self.encoder = STTransformer(tok.st, causal_time=True)
        self.vq = VectorQuantizer(
            tok.codebook_size,
            tok.code_dim,
            input_dim=tok.st.dim,
            output_dim=decoder_st.dim,
            beta=tok.beta,
            dead_code_threshold=tok.dead_code_threshold,
        )
        self.decoder = STTransformer(decoder_st, causal_time=True)
        self.head = PatchHead(self.grid, decoder_st.dim)

    def forward(self, video_BTCHW: torch.Tensor) -> dict:
        """Reconstruct a clip.

        Returns `recon` (clamped to [0, 1], at `grid.out_hw`), `loss`, `tokens` (B, T, N)
        and `metrics` of detached scalars: recon_mse, vq_loss, perplexity, usage, psnr.
        """
        latents_BTNC = self.encoder(self.embed(video_BTCHW))
        quantized_BTNC, tokens_BTN, vq_loss, vq_metrics = self.vq(latents_BTNC)
        recon_BTCHW = self.head(self.decoder(quantized_BTNC))

        return reconstruction_output(recon_BTCHW, self.grid.target(video_BTCHW), vq_loss, vq_metrics,
                                     tokens=tokens_BTN)

    def encode(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """video_BTCHW in [0, 1] -> tokens_BTN (long), N = rows * cols of `tokens_hw`."""
        return self.vq.encode(self.encoder(self.embed(video_BTCHW)))

    def decode(self, tokens_BTN: torch.Tensor) -> torch.Tensor:
        """tokens_BTN -> video_BTCHW in [0, 1]."""
        return self.decode_frames(tokens_BTN)[0]

    def decode_frames(self, tokens_BTN: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache]:
        """Decode frames that follow the cached ones -> (video_BTCHW in [0, 1], longer cache).

        The decoder is causal in time, so decoding a video frame by frame through the cache
        gives the same pixels as decoding it at once, and past frames are never re-run.
        """
        x_BTNC, cache = self.decoder.extend(self.vq.lookup(tokens_BTN), cache)
        return self.head(x_BTNC).clamp(0, 1), cache
