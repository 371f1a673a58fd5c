"""Dynamics model: a MaskGIT ST transformer that predicts the next frame's tokens.

Conventions
- Actions are transitions: `actions[:, t]` is the latent action taken at frame t, the one
  that leads to frame t+1. Training takes (B, T-1) actions for T frames, or (B, T) whose
  last action (which would lead past the clip) is ignored.
- Action a_t conditions frame t+1: its embedding goes into frame t+1's tokens, so the
  masked tokens being predicted see the action directly, and causal time attention
  keeps it from leaking into earlier frames. The first frame of a clip has no preceding
  action and gets a reserved "no action" entry (the last row of the action table).
- `action_mode`: `add` (the paper's choice: better controllability) adds the action
  embedding to every token of the frame; `concat` concatenates it to each token embedding
  and projects back to the model width; `prepend` adds one extra action token to the
  frame, attended to by spatial attention and dropped from the output.

Training (`forward`): a mask rate r ~ U(mask_min, mask_max) is drawn per sample and every
token of frames 2..T is replaced by the mask token with probability r; cross-entropy is
taken on masked tokens only. The first frame is never masked: it is the context every
clip starts from, as at play time, where the model never has to invent frame 1.

Sampling (`generate_next`, `rollout`): MaskGIT. The new frame starts fully masked; at each
of `steps` iterations the model samples every masked token, keeps the most confident ones
and re-masks the rest, following the cosine schedule (masked count N·cos(π/2 · s/steps)).
`temperature` scales the token distribution (values are sampled from softmax(logits / T);
T = 0 is the argmax) and is also MaskGIT's choice temperature: Gumbel noise of scale
T·(1 - s/steps) is added to the log-confidence, so early steps commit tokens in a partly
random order and the last steps are by confidence alone. `greedy=True` takes the argmax
with no noise at all: deterministic. The paper's "25 steps, temperature 2" maps to
`steps=25, temperature=2.0`; the configs default to T = 0.5 (models/config.py says why).
`keep_bias` (the config's, or Episode's) tilts every step towards each patch's token in the
frame before: a prior that a patch stays as it was unless the model says otherwise.

Context frames are run once into a temporal KV cache (models/st_transformer.py); each
MaskGIT step then runs only the new frame. `sample_frame` takes the model as a function
from the partly masked frame to its logits, so the same MaskGIT loop runs against a cache
or over a whole window (models/episode.py uses both: the second is its uncached reference),
and draws its random numbers from a caller's `torch.Generator` when given one.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import GenieConfig
from .st_transformer import KVCache, STTransformer


class DynamicsModel(nn.Module):
    def __init__(self, cfg: GenieConfig):
        super().__init__()
        dyn = cfg.dynamics
        dim = dyn.st.dim
        self.cfg = dyn
        self.frames = cfg.frames
        self.codebook_size = cfg.tokenizer.codebook_size
        self.mask_token = self.codebook_size  # one extra row after the real codes
        self.no_action = cfg.lam.num_actions  # one extra row after the real actions
        self.action_mode = dyn.action_mode

        self.token_embed = nn.Embedding(self.codebook_size + 1, dim)
        self.action_embed = nn.Embedding(cfg.lam.num_actions + 1, dim)
        if self.action_mode == "concat":
            self.concat_proj = nn.Linear(2 * dim, dim)
        self.transformer = STTransformer(dyn.st, causal_time=True)
        self.head = nn.Linear(dim, self.codebook_size)

    # ------------------------------------------------------------------ shared pieces

    def frame_actions(self, actions_BA: torch.Tensor, T: int) -> torch.Tensor:
        """Transition actions -> the action leading into each of T frames, (B, T): the first
        frame takes `no_action`. The one place that builds it (training, prefill, `Episode`)."""
        if actions_BA.shape[1] not in (T - 1, T):
            raise ValueError(f"expected (B, {T - 1}) or (B, {T}) actions for {T} frames, got {tuple(actions_BA.shape)}")
        # sized from B, not sliced from the actions: one context frame comes with zero actions
        first_B1 = torch.full((actions_BA.shape[0], 1), self.no_action, dtype=torch.long, device=actions_BA.device)
        return torch.cat([first_B1, actions_BA[:, : T - 1].long()], dim=1)

    def _embed(self, tokens_BTN: torch.Tensor, frame_actions_BT: torch.Tensor) -> torch.Tensor:
        """Token ids and per-frame action ids -> transformer input x_BTNC (N+1 tokens with prepend)."""
        x_BTNC = self.token_embed(tokens_BTN)
        action_BT1C = self.action_embed(frame_actions_BT)[:, :, None, :]
        if self.action_mode == "add":
            return x_BTNC + action_BT1C
        if self.action_mode == "concat":
            return self.concat_proj(torch.cat([x_BTNC, action_BT1C.expand_as(x_BTNC)], dim=-1))
        return torch.cat([action_BT1C, x_BTNC], dim=2)

    def _logits(self, x_BTNC: torch.Tensor) -> torch.Tensor:
        if self.action_mode == "prepend":
            x_BTNC = x_BTNC[:, :, 1:]
        return self.head(x_BTNC)

    # ------------------------------------------------------------------ training

    def draw_mask(self, tokens_BTN: torch.Tensor) -> torch.Tensor:
        """Random training mask (True = masked), rate ~ U(mask_min, mask_max) per sample."""
        B = tokens_BTN.shape[0]
        rate_B = torch.empty(B, device=tokens_BTN.device).uniform_(self.cfg.mask_min, self.cfg.mask_max)
        mask_BTN = torch.rand(tokens_BTN.shape, device=tokens_BTN.device) < rate_B[:, None, None]
        mask_BTN[:, 0] = False
        return mask_BTN

    def forward(
        self, tokens_BTN: torch.Tensor, actions_BT: torch.Tensor, mask_BTN: torch.Tensor | None = None
    ) -> dict:
        """Masked-token training step.

        tokens_BTN: long token ids; actions_BT: (B, T-1) or (B, T) transition actions (see
        module docstring); mask_BTN: optional bool mask (True = masked), drawn by
        `draw_mask` when None. Returns `loss`, `logits_BTNK` over all positions, `mask_BTN`
        and `metrics` of detached scalars: acc (on masked tokens), mask_ratio (masked
        share of frames 2..T).
        """
        T = tokens_BTN.shape[1]
        if T < 2:
            raise ValueError(f"the dynamics model needs at least 2 frames, got {T}")
        if mask_BTN is None:
            mask_BTN = self.draw_mask(tokens_BTN)
        inputs_BTN = tokens_BTN.masked_fill(mask_BTN, self.mask_token)
        x_BTNC = self.transformer(self._embed(inputs_BTN, self.frame_actions(actions_BT, T)))
        logits_BTNK = self._logits(x_BTNC)

        ce_BTN = F.cross_entropy(rearrange(logits_BTNK, "b t n k -> b k t n"), tokens_BTN, reduction="none")
        weight_BTN = mask_BTN.float()
        num_masked = weight_BTN.sum().clamp(min=1)
        loss = (ce_BTN * weight_BTN).sum() / num_masked
        correct_BTN = (logits_BTNK.argmax(-1) == tokens_BTN).float()
        metrics = {
            "acc": ((correct_BTN * weight_BTN).sum() / num_masked).detach(),
            "mask_ratio": mask_BTN[:, 1:].float().mean().detach(),
        }
        return {"loss": loss, "logits_BTNK": logits_BTNK, "mask_BTN": mask_BTN, "metrics": metrics}

    # ------------------------------------------------------------------ sampling

    def prefill(self, tokens_BTN: torch.Tensor, actions_BA: torch.Tensor) -> KVCache:
        """Run context frames once; actions as in `forward`, (B, T-1) or (B, T)."""
        frame_actions_BT = self.frame_actions(actions_BA, tokens_BTN.shape[1])
        return self.extend_cache(tokens_BTN, frame_actions_BT)

    def extend_cache(
        self, tokens_BTN: torch.Tensor, frame_actions_BT: torch.Tensor, cache: KVCache | None = None
    ) -> KVCache:
        """The cache extended by frames whose leading actions are `frame_actions_BT` (B, T)."""
        return self.transformer.extend(self._embed(tokens_BTN, frame_actions_BT), cache)[1]

    def frame_logits(
        self, tokens_BTN: torch.Tensor, frame_actions_BT: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits of frames that follow `cache` (or start a window without one), -> logits_BTNK.

        frame_actions_BT holds the action leading into each frame; the first frame of a
        window takes `no_action`.
        """
        return self._logits(self.transformer(self._embed(tokens_BTN, frame_actions_BT), cache))

    def sample_frame(
        self,
        logits_fn: Callable[[torch.Tensor], torch.Tensor],
        batch: int,
        num_tokens: int,
        steps: int,
        temperature: float,
        greedy: bool,
        generator: torch.Generator | None = None,
        previous_BN: torch.Tensor | None = None,
        keep_bias: float = 0.0,
    ) -> torch.Tensor:
        """MaskGIT decoding of one frame, -> tokens_BN.

        logits_fn maps the partly masked frame tokens_BN to its logits_BNK; whether it reads
        a KV cache or re-runs the whole window is the caller's business. Random draws come
        from `generator` (the global RNG when None), in the same order whatever logits_fn
        does, so cached and uncached callers sample the same tokens. With `previous_BN` (the
        frame before) and `keep_bias` > 0, every step works on the model's distribution times
        exp(keep_bias) on each patch's previous token, renormalised (`dynamics.keep_bias`);
        the temperature then applies to that, so greedy changes a patch only where the model
        prefers another token by more than keep_bias nats, and T scales the tilt like the rest.
        """
        device = self.head.weight.device
        B, N = batch, num_tokens
        tokens_BN = torch.full((B, N), self.mask_token, dtype=torch.long, device=device)
        masked_BN = torch.ones(B, N, dtype=torch.bool, device=device)
        keep = bool(keep_bias) and previous_BN is not None
        if keep:  # the same bonus at every step: built once
            previous_BN1 = previous_BN[..., None]
            bonus_BN1 = torch.full(previous_BN1.shape, float(keep_bias), device=previous_BN.device)
        for step in range(steps):
            log_probs_BNK = logits_fn(tokens_BN).float().log_softmax(-1)
            if keep:
                log_probs_BNK = log_probs_BNK.scatter_add(-1, previous_BN1, bonus_BN1).log_softmax(-1)
            if greedy or temperature <= 0:
                sampled_BN = log_probs_BNK.argmax(-1)
            else:  # token values at the sampling temperature (sharper below 1, flatter above)
                probs_ZK = rearrange((log_probs_BNK / temperature).softmax(-1), "b n k -> (b n) k")
                sampled_BN = torch.multinomial(probs_ZK, 1, generator=generator).view(B, N)
            tokens_BN = torch.where(masked_BN, sampled_BN, tokens_BN)

            num_still_masked = math.floor(N * math.cos(math.pi / 2 * (step + 1) / steps))
            if num_still_masked == 0:
                break
            confidence_BN = log_probs_BNK.gather(-1, tokens_BN[..., None])[..., 0]
            # greedy decoding is deterministic: no noise in the unmasking order either
            noise_scale = 0.0 if greedy else temperature * (1 - (step + 1) / steps)
            if noise_scale > 0:
                uniform_BN = torch.rand(B, N, generator=generator, device=device)
                gumbel_BN = -torch.log(-torch.log(uniform_BN.clamp(1e-20, 1)))
                confidence_BN = confidence_BN + noise_scale * gumbel_BN
            # Tokens committed in earlier steps are never re-masked.
            confidence_BN = confidence_BN.masked_fill(~masked_BN, math.inf)
            remask_idx_BM = confidence_BN.argsort(dim=-1)[:, :num_still_masked]
            masked_BN = torch.zeros_like(masked_BN).scatter_(1, remask_idx_BM, True)
            tokens_BN = tokens_BN.masked_fill(masked_BN, self.mask_token)
        return tokens_BN

    def _sample_after(
        self, cache: KVCache, action_B: torch.Tensor, num_tokens: int, steps: int, temperature: float,
        greedy: bool, generator: torch.Generator | None, previous_BN: torch.Tensor,
    ) -> torch.Tensor:
        """MaskGIT decoding of the frame after the cached ones (the last of them
        `previous_BN`) under `action_B`, -> tokens_BN."""
        def logits_fn(tokens_BN: torch.Tensor) -> torch.Tensor:
            return self.frame_logits(tokens_BN[:, None], action_B[:, None], cache)[:, 0]

        return self.sample_frame(logits_fn, action_B.shape[0], num_tokens, steps, temperature, greedy, generator,
                                 previous_BN, self.cfg.keep_bias)

    @torch.no_grad()
    def generate_next(
        self,
        tokens_BTN: torch.Tensor,
        actions_BT: torch.Tensor,
        steps: int | None = None,
        temperature: float | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample the tokens of frame T+1 given frames 1..T, -> tokens_BN.

        actions_BT is (B, T): actions[:, t] leads from frame t to t+1, so the last one is
        the action taken now. The whole context is used; trim it to at most `cfg.frames - 1`
        frames to stay within the clip length seen in training (`rollout` does this).
        steps / temperature default to the config (`maskgit_steps`, `temperature`).
        """
        T = tokens_BTN.shape[1]
        if actions_BT.shape[1] != T:
            raise ValueError(f"expected (B, {T}) actions for {T} context frames, got {tuple(actions_BT.shape)}")
        cache = self.prefill(tokens_BTN, actions_BT[:, : T - 1])
        return self._sample_after(
            cache,
            actions_BT[:, -1],
            tokens_BTN.shape[2],
            steps or self.cfg.maskgit_steps,
            self.cfg.temperature if temperature is None else temperature,
            greedy,
            generator,
            tokens_BTN[:, -1],
        )

    @torch.no_grad()
    def rollout(
        self,
        tokens_BTN: torch.Tensor,
        actions_BA: torch.Tensor,
        steps: int | None = None,
        temperature: float | None = None,
        greedy: bool = False,
        max_context: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Generate F = A - T + 1 frames after T context frames, -> tokens_BFN.

        actions_BA holds every transition action from the first context frame on:
        actions[:, t] leads from frame t to t+1 (A = T - 1 + F). The model sees at most
        `max_context` frames (default `cfg.frames`, the training clip length) including
        the one being generated; older frames slide out of the window, and the window is
        re-run from scratch then, so its first frame sits at position 0 with no action, as
        in training.
        """
        B, T, N = tokens_BTN.shape
        num_new = actions_BA.shape[1] - T + 1
        if num_new < 1:
            raise ValueError(f"{T} context frames need more than {T - 1} actions, got {actions_BA.shape[1]}")
        window = (max_context or self.frames) - 1
        if window < 1:
            raise ValueError("max_context must be at least 2")
        steps = steps or self.cfg.maskgit_steps
        temperature = self.cfg.temperature if temperature is None else temperature

        frames_BTN = tokens_BTN
        cache = None
        for i in range(num_new):
            T = frames_BTN.shape[1]
            if cache is None or cache.frames > window:
                start = max(0, T - window)
                cache = self.prefill(frames_BTN[:, start:], actions_BA[:, start : T - 1])
            action_B = actions_BA[:, T - 1]
            new_BN = self._sample_after(cache, action_B, N, steps, temperature, greedy, generator, frames_BTN[:, -1])
            frames_BTN = torch.cat([frames_BTN, new_BN[:, None]], dim=1)
            if i < num_new - 1:
                cache = self.extend_cache(new_BN[:, None], action_B[:, None], cache)
        return frames_BTN[:, -num_new:]

