"""Prompt a trained Genie with any image and step latent actions: a GIF of the rollout.

    genie-pipeline play --checkpoint runs/genie/genie.pt --image start.png --actions 1,1,2,2,0,3 --out demo.gif
    genie-pipeline play --checkpoint runs/genie/genie.pt --image clip.mp4 --actions random:16

The image is resized (antialiased bilinear, as the loader) to the model's frame size. The
dynamics model generates one frame per action with MaskGIT (`models.dynamics.rollout`,
which keeps at most `frames` frames of context), and the tokenizer decodes each frame from
the last `frames` frames of tokens, the context length it was trained on.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genie_pipeline.models.config import get_config
from genie_pipeline.models.genie import Genie

from . import checkpoint as ckpt_lib
from .errors import TrainingError
from .loader import resize_video
from .metrics import save_gif, video_side_by_side_frames


def load_genie(path: str | os.PathLike, device: str | torch.device = "cpu") -> Genie:
    """A Genie from `genie.pt` (export of a finished run) or a phase-2 checkpoint."""
    ck = ckpt_lib.load(path)
    weights = ck["model"] if "model" in ck else ck
    if "dynamics" not in weights:
        raise TrainingError("checkpoint", f"{path} has no dynamics model (a tokenizer-only checkpoint?)")
    cfg = get_config(dict(ck["model_config"]))
    genie = Genie(cfg)
    genie.tokenizer.load_state_dict(weights["tokenizer"])
    genie.lam.load_state_dict(weights["lam"])
    genie.dynamics.load_state_dict(weights["dynamics"])
    return genie.to(device).eval()


def load_image(image, height: int, width: int) -> torch.Tensor:
    """Path (image file or video: first frame), PIL image, HWC uint8 array or CHW tensor →
    float (3, height, width) in [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        path = str(image)
        if path.lower().endswith((".mp4", ".mkv", ".webm", ".mov", ".avi")):
            import av

            with av.open(path) as c:
                frame = next(c.decode(video=0))
                image = frame.to_ndarray(format="rgb24")
        else:
            from PIL import Image

            image = np.asarray(Image.open(path).convert("RGB"))
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).copy())
        image = image.permute(2, 0, 1)
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    image = resize_video(image[:3][None], (height, width))[0]
    return image.float() / 255.0


def parse_actions(spec: str | Sequence[int], num_actions: int, seed: int = 0) -> list[int]:
    """`"0,1,2"`, `"random:16"` or a list of ints."""
    if isinstance(spec, str):
        if spec.startswith("random:"):
            n = int(spec.split(":", 1)[1])
            return [int(a) for a in np.random.default_rng(seed).integers(0, num_actions, n)]
        spec = [int(a) for a in spec.replace(" ", "").split(",") if a != ""]
    actions = [int(a) for a in spec]
    bad = [a for a in actions if not 0 <= a < num_actions]
    if bad or not actions:
        raise TrainingError("play.actions", f"must be 1+ ids in [0, {num_actions}), got {actions}")
    return actions


@torch.no_grad()
def rollout_frames(genie: Genie, image_CHW: torch.Tensor, actions: Sequence[int], steps: int | None = None,
                   temperature: float | None = None, greedy: bool = False, seed: int = 0) -> torch.Tensor:
    """(len(actions) + 1, 3, H, W) float in [0, 1]: the prompt frame, then one frame per action."""
    device = next(genie.parameters()).device
    cfg = genie.cfg
    torch.manual_seed(seed)
    prompt = image_CHW.to(device)[None, None]
    tokens = genie.tokenizer.encode(prompt)  # (1, 1, N)
    acts = torch.tensor([list(actions)], dtype=torch.long, device=device)
    new = genie.dynamics.rollout(tokens, acts, steps=steps, temperature=temperature, greedy=greedy)
    all_tokens = torch.cat([tokens, new], 1)
    T, window = all_tokens.shape[1], cfg.frames
    if T <= window:
        video = genie.tokenizer.decode(all_tokens)[0]
    else:
        first = genie.tokenizer.decode(all_tokens[:, :window])[0]
        rest = [genie.tokenizer.decode(all_tokens[:, t - window + 1 : t + 1])[0, -1] for t in range(window, T)]
        video = torch.cat([first, torch.stack(rest)], 0)
    return video.float().cpu()


def play(checkpoint: str | os.PathLike | Genie, image, actions: str | Sequence[int], out_gif: str | os.PathLike,
         steps: int | None = None, temperature: float | None = None, greedy: bool = False, seed: int = 0,
         fps: int = 5, scale: int = 2, device: str = "cpu") -> Path:
    """Roll a Genie out from `image` under `actions` and write a GIF (prompt + generated frames)."""
    genie = checkpoint if isinstance(checkpoint, Genie) else load_genie(checkpoint, device)
    cfg = genie.cfg
    acts = parse_actions(actions, cfg.lam.num_actions, seed)
    img = load_image(image, cfg.image_height, cfg.image_width)
    video = rollout_frames(genie, img, acts, steps, temperature, greedy, seed)
    out = Path(out_gif)
    save_gif(video_side_by_side_frames([video], scale=scale), out, fps=fps)
    return out
