"""Latent action model: discovers a small set of discrete actions from unlabelled video.

Encoder: an ST transformer over the pixel patches (`cfg.lam.patch`, 16 in the paper) with
one extra learned "action query" token in every frame; the query's output for frame t+1 is
quantised to one of `num_actions` (8) codes: one action per transition, T-1 per clip.

Decoder: an ST transformer that sees the pixels of x_t with the embedding of action a_t
added to every token, and predicts x_{t+1}. The action is the only route for information
about the future, and with 8 codes it must carry what changed.

Three settings (`LAMConfig`) keep the action about the change x_t -> x_{t+1}; with each
one off the model has a way to lower its loss without it (benchmarks/lam.py measures them):

- `encode_pairs`: the encoder sees only the pair (x_t, x_{t+1}), so every action query
  sits at the same time position. Read causally over x_1..x_{t+1} (the paper's layout) the
  query of frame t+1 carries the sinusoidal time embedding of t+1, and the codes can name
  the frame index instead of the move.
- `decoder_past`: off, the decoder sees x_t alone. Seeing x_1..x_t it can extrapolate
  motion that persists from the past, so the action need carry nothing.
- `predict_delta`: the decoder predicts x_{t+1} - x_t from a zero-initialised head and adds
  x_t back, so it starts at the copy baseline. A small decoder that must redraw the whole
  frame from coarse patch tokens stays worse than copying x_t, and a 3-pixel move is lost
  in its blur.

Either way changing frame t+1 cannot change the actions of transitions before t, and the
prediction of x_{t+1} uses frames <= t only. The actions are quantised by `lam.quantizer`:
a VQ codebook (models/vq.py, the paper's) or an FSQ grid (models/fsq.py). The VQ codebook
collapsed to one code before the small decoder learned to use it; FSQ has no codebook to
collapse onto, so the encoder keeps several codes while the decoder learns. Only the ids
matter at play time; the dynamics model has its own action embedding table indexed by them.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import nn

from .config import GenieConfig, resolved_decoder_st
from .patches import PatchGrid
from .pixels import PatchEmbed, PatchHead, reconstruction_output
from .st_transformer import STTransformer
from .fsq import FiniteScalarQuantizer
from .vq import VectorQuantizer


class LatentActionModel(nn.Module):
    def __init__(self, cfg: GenieConfig):
        super().__init__()
        lam = cfg.lam
        decoder_st = resolved_decoder_st(lam)
        self.grid = PatchGrid(cfg.image_height, cfg.image_width, lam.patch, cfg.pad_mode)
        self.num_actions = lam.num_actions
        self.encode_pairs = lam.encode_pairs
        self.decoder_past = lam.decoder_past
        self.predict_delta = lam.predict_delta

        self.encoder_embed = PatchEmbed(self.grid, lam.st.dim)
        self.action_query_C = nn.Parameter(0.02 * torch.randn(lam.st.dim))
        self.encoder = STTransformer(lam.st, causal_time=True)
        if lam.quantizer == "fsq":
            self.quantizer = FiniteScalarQuantizer(lam.fsq_levels, input_dim=lam.st.dim, output_dim=decoder_st.dim)
        else:
            self.quantizer = VectorQuantizer(
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
        if self.predict_delta:
            # Start as "copy x_t": a randomly initialised head adds noise ~100x the size of
            # a real frame-to-frame change, and the decoder spends its first hundreds of
            # steps unlearning it before the action can matter.
            nn.init.zeros_(self.head.proj.weight)
            nn.init.zeros_(self.head.proj.bias)

    def _action_latents(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """video (B, T, ...) -> one continuous latent per transition, (B, T-1, C)."""
        B, T = video_BTCHW.shape[:2]
        if T < 2:
            raise ValueError(f"the LAM needs at least 2 frames, got {T}")
        patches_BTNC = self.encoder_embed(video_BTCHW)
        if self.encode_pairs:
            # Transition t alone: frames (t, t+1) as a 2-frame clip of its own.
            patches_BTNC = torch.stack([patches_BTNC[:, :-1], patches_BTNC[:, 1:]], dim=2)
            patches_BTNC = rearrange(patches_BTNC, "b t two n c -> (b t) two n c")
        query_BT1C = repeat(self.action_query_C, "c -> b t 1 c", b=patches_BTNC.shape[0], t=patches_BTNC.shape[1])
        encoded_BTNC = self.encoder(torch.cat([query_BT1C, patches_BTNC], dim=2))
        # The query of the later frame summarises the transition into it; frame 1 has none.
        if self.encode_pairs:
            return rearrange(encoded_BTNC[:, 1, 0], "(b t) c -> b t c", b=B)
        return encoded_BTNC[:, 1:, 0]

    def _predict(self, video_BTCHW: torch.Tensor, action_emb_BTC: torch.Tensor) -> torch.Tensor:
        """Frames 2..T (unclamped) from the frames before them and the action embeddings."""
        B = video_BTCHW.shape[0]
        past_BTCHW = video_BTCHW[:, :-1]
        past_BTNC = self.decoder_embed(past_BTCHW) + action_emb_BTC[:, :, None, :]
        if self.decoder_past:
            out_BTNC = self.decoder(past_BTNC)
        else:
            # Each frame is a one-frame clip: no temporal attention to earlier frames.
            out_BTNC = self.decoder(rearrange(past_BTNC, "b t n c -> (b t) 1 n c"))
            out_BTNC = rearrange(out_BTNC, "(b t) 1 n c -> b t n c", b=B)
        pred_BTCHW = self.head(out_BTNC)
        if self.predict_delta:
            pred_BTCHW = pred_BTCHW + self.grid.target(past_BTCHW)
        return pred_BTCHW

    def forward(self, video_BTCHW: torch.Tensor) -> dict:
        """Infer actions and predict frames 2..T from the frames before them.

        Returns `recon` (B, T-1, C, H, W) clamped to [0, 1], `loss`, `actions_BT` (B, T-1)
        long and `metrics` of detached scalars: recon_mse, vq_loss, perplexity, usage, psnr,
        codes_used (distinct actions in the batch) and action_effect (the decoder's error
        with the batch's actions shuffled minus with its own: about 0 when the decoder
        ignores its actions, the collapse this model is watched for).
        """
        latents_BTC = self._action_latents(video_BTCHW)
        action_emb_BTC, actions_BT, vq_loss, vq_metrics = self.quantizer(latents_BTC)
        pred_BTCHW = self._predict(video_BTCHW, action_emb_BTC)
        target_BTCHW = self.grid.target(video_BTCHW[:, 1:])
        with torch.no_grad():
            shuffled_BT = actions_BT.flatten()[torch.randperm(actions_BT.numel(), device=actions_BT.device)]
            shuffled_mse = ((self.predict(video_BTCHW, shuffled_BT.view_as(actions_BT)) - target_BTCHW) ** 2).mean()
            own_mse = ((pred_BTCHW.detach().clamp(0, 1) - target_BTCHW) ** 2).mean()
        metrics = {**vq_metrics, "codes_used": vq_metrics["usage"] * self.num_actions,
                   "action_effect": shuffled_mse - own_mse}
        return reconstruction_output(pred_BTCHW, target_BTCHW, vq_loss, metrics, actions_BT=actions_BT)

    def predict(self, video_BTCHW: torch.Tensor, actions_BT: torch.Tensor) -> torch.Tensor:
        """Frames 2..T in [0, 1] predicted from the frames before them under the given
        actions (B, T-1): how the decoder answers actions other than the inferred ones."""
        return self._predict(video_BTCHW, self.quantizer.lookup(actions_BT)).clamp(0, 1)

    def infer_actions(self, video_BTCHW: torch.Tensor) -> torch.Tensor:
        """video_BTCHW -> actions (B, T-1) long; actions[:, t] is the step x_t -> x_{t+1}."""
        return self.quantizer.encode(self._action_latents(video_BTCHW))
