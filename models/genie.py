"""Genie: the three components together, and what play needs from them.

Training does not go through this class: the tokenizer trains alone (phase 1), then the
LAM on pixels and the dynamics model on frozen tokenizer tokens with LAM actions (phase 2).
`Genie` holds the three for checkpoints and play, and `count_params` sizes a config
without allocating it.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GenieConfig, validate
from .dynamics import DynamicsModel
from .episode import Episode
from .lam import LatentActionModel
from .tokenizer import VideoTokenizer


class Genie(nn.Module):
    def __init__(self, cfg: GenieConfig):
        super().__init__()
        validate(cfg)
        self.cfg = cfg
        self.tokenizer = VideoTokenizer(cfg)
        self.lam = LatentActionModel(cfg)
        self.dynamics = DynamicsModel(cfg)
        # what play shows for each latent action; loaders set the names a run gave them
        self.action_names = [f"action {i}" for i in range(cfg.lam.num_actions)]

    @classmethod
    def from_parts(cls, cfg: GenieConfig, tokenizer: VideoTokenizer, lam: LatentActionModel,
                   dynamics: DynamicsModel) -> "Genie":
        """A Genie over existing components (shared, not copied): what the trainer's samples
        roll out with, the weights it is training."""
        genie = cls.__new__(cls)
        nn.Module.__init__(genie)
        genie.cfg = cfg
        genie.tokenizer, genie.lam, genie.dynamics = tokenizer, lam, dynamics
        genie.action_names = [f"action {i}" for i in range(cfg.lam.num_actions)]
        return genie

    def start(self, prompt_BCHW: torch.Tensor, **kwargs) -> Episode:
        """An interactive rollout from `prompt_BCHW` (float in [0, 1] at the model's frame
        size); keyword arguments as `Episode` (steps, temperature, greedy, cache, seed)."""
        return Episode(self, prompt_BCHW, **kwargs)

    @torch.no_grad()
    def play_step(
        self,
        frames_context: torch.Tensor,
        action: int | torch.Tensor,
        past_actions: torch.Tensor | None = None,
        steps: int | None = None,
        temperature: float | None = None,
        greedy: bool = False,
    ) -> torch.Tensor:
        """Generate the frame that follows `frames_context` under `action`.

        frames_context: video_BTCHW in [0, 1]. Only the last `cfg.frames - 1` frames are
        used, the longest context the dynamics model saw in training.
        action: an action id in [0, num_actions), one for all samples or a (B,) tensor.
        past_actions: (B, T-1) actions between the context frames; inferred with the
        LAM when None (a single start frame needs none).
        Returns next_frame_BCHW in [0, 1] (at the tokenizer grid's output size).
        """
        context_BTCHW = frames_context[:, -(self.cfg.frames - 1) :]
        B, T = context_BTCHW.shape[:2]
        device = context_BTCHW.device
        if past_actions is None:
            past_BT = self.lam.infer_actions(context_BTCHW) if T > 1 else torch.zeros(B, 0, dtype=torch.long, device=device)
        else:
            past_BT = past_actions[:, -(T - 1) :] if T > 1 else past_actions[:, :0]
        action_B = torch.as_tensor(action, dtype=torch.long, device=device).expand(B)
        actions_BT = torch.cat([past_BT.to(device), action_B[:, None]], dim=1)

        tokens_BTN = self.tokenizer.encode(context_BTCHW)
        next_BN = self.dynamics.generate_next(tokens_BTN, actions_BT, steps, temperature, greedy)
        # The decoder is causal in time and reads the context tokens for temporal attention.
        video_BTCHW = self.tokenizer.decode(torch.cat([tokens_BTN, next_BN[:, None]], dim=1))
        return video_BTCHW[:, -1]


def count_params(cfg: GenieConfig) -> dict[str, int]:
    """Parameters per component (and `total`), counted on the meta device: no memory used."""
    with torch.device("meta"):
        genie = Genie(cfg)
    counts = {name: sum(p.numel() for p in getattr(genie, name).parameters()) for name in ("tokenizer", "lam", "dynamics")}
    counts["total"] = sum(counts.values())
    return counts
