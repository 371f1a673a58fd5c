"""Latent action model: discovers a small set of discrete actions from unlabelled video.

Encoder: a causal-in-time ST transformer over the pixel patches (`cfg.lam.patch`, 16 in
the paper) of frames x_1..x_T, with one extra learned "action query" token in every frame.
The query of frame t+1 has attended to frames x_1..x_{t+1} only, so it can summarise the
change x_t -> x_{t+1}; its output is quantised to one of `num_actions` (8) codes: one
action per transition, T-1 per clip. Because frame t+1's query is the one read for
transition t, changing frame t+1 cannot change the actions of transitions before t.

Decoder: a causal ST transformer that sees the pixels of x_1..x_t with the embedding of
action a_t added to every token of frame t, and predicts x_{t+1}. The action is the only
route for information about the future, and with 8 codes it must carry what changed.

Only the VQ (the action codebook) matters at play time; the dynamics model has its own
action embedding table indexed by these action ids.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import nn

from .config import GenieConfig, resolved_decoder_st
from .patches import PatchGrid
from .pixels import PatchEmbed, PatchHead, reconstruction_output
from .st_transformer import STTransformer
from .vq import VectorQuantizer


class LatentActionModel(nn.Module):
    def __init__(self, cfg: GenieConfig):
        super().__init__()
        lam = cfg.lam
        decoder_st = resolved_decoder_st(lam)
        self.grid = PatchGrid(cfg.image_height, cfg.image_width, lam.patch, cfg.pad_mode)
        self.num_actions = lam.num_actions

        self.encoder_embed = PatchEmbed(self.grid, lam.st.dim)
        self.action_query_C = nn.Parameter(0.02 * torch.randn(lam.st.dim))
        self.encoder = STTransformer(lam.st, causal_time=True)
        self.vq = VectorQuantizer(
            lam.num_actions,
            lam.code_dim,
            input_dim=lam.st.dim,
            output_dim=decoder_st.dim,
            beta=lam.beta,
            dead_code_threshold=lam.dead_code_threshold,
        )
        self.decoder_embed = PatchEmbed(self.grid, decoder_st.dim)
        self.decoder = STTransformer(decoder_st, causal_time=True)
        self.head = PatchHead(self.grid, decoder_st.dim)

    def _action_latents(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """video (B, T, ...) -> one continuous latent per transition, (B, T-1, C)."""
        B, T = video_BTCHW.shape[:2]
        if T < 2:
            raise ValueError(f"the LAM needs at least 2 frames, got {T}")
        patches_BTNC = self.encoder_embed(video_BTCHW)
        query_BT1C = repeat(self.action_query_C, "c -> b t 1 c", b=B, t=T)
        encoded_BTNC = self.encoder(torch.cat([query_BT1C, patches_BTNC], dim=2))
        # The query of frame t+1 summarises transition t -> t+1; frame 1 has no transition.
        return encoded_BTNC[:, 1:, 0]

    def forward(self, video_BTCHW: torch.Tensor) -> dict:
        """Infer actions and predict frames 2..T from the frames before them.

        Returns `recon` (B, T-1, C, H, W) clamped to [0, 1], `loss`, `actions_BT` (B, T-1)
        long and `metrics` of detached scalars: recon_mse, vq_loss, perplexity, usage, psnr.
        """
        latents_BTC = self._action_latents(video_BTCHW)
        action_emb_BTC, actions_BT, vq_loss, vq_metrics = self.vq(latents_BTC)

        past_BTNC = self.decoder_embed(video_BTCHW[:, :-1])
        pred_BTCHW = self.head(self.decoder(past_BTNC + action_emb_BTC[:, :, None, :]))

        return reconstruction_output(pred_BTCHW, self.grid.target(video_BTCHW[:, 1:]), vq_loss, vq_metrics,
                                     actions_BT=actions_BT)

    def infer_actions(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """video_BTCHW -> actions (B, T-1) long; actions[:, t] is the step x_t -> x_{t+1}."""
        return self.vq.encode(self._action_latents(video_BTCHW))
