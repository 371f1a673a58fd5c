"""Prompt a trained Genie with a picture and step latent actions: the rollout as MP4 and GIF.

    genie-pipeline play --checkpoint RUN --prompt start.png --actions 1,1,2,2,0,3 --out demo.mp4
    genie-pipeline play --checkpoint bundle.pt --prompt clip.mp4 --random 16

The CLI fits the prompt to the clip size with ingest's aspect policy (genie_pipeline/prompt.py);
here it is resized to the model's frame size with the training loader's resizer, as every
training window was. The rollout is a `models.episode.Episode`: one frame per action, the
dynamics model and the tokenizer decoder each running only the new frame against their
temporal KV caches.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genie_pipeline.models.genie import Genie
from genie_pipeline.shards.clip import ClipFormatError, ClipSpec, encode_clip

from .bundle import load_genie
from .errors import TrainingError
from .loader import resize_video
from .metrics import save_gif, video_side_by_side_frames

OUTPUTS = (".mp4", ".gif")
MAX_PROMPT_PIXELS = 7680 * 4320  # a prompt video's frame, refused before decoding above this


def load_image(image, height: int, width: int) -> torch.Tensor:
    """Path (picture, or a video's first frame), PIL image, HWC uint8 array or CHW tensor ->
    float (3, height, width) in [0, 1], resized by the training loader's resizer."""
    if isinstance(image, (str, os.PathLike)):
        image = _read_first_frame(str(image))
    if not isinstance(image, torch.Tensor):
        image = torch.from_numpy(np.asarray(image.convert("RGB") if hasattr(image, "convert") else image).copy())
        image = image.permute(2, 0, 1)
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    image = resize_video(image[:3][None], (height, width))[0]
    return image.float() / 255.0


def parse_actions(spec: str | Sequence[int], num_actions: int, seed: int = 0) -> list[int]:
    """`"0,1,2"`, `"random:16"` or a list of ints -> action ids, each checked to be in
    [0, num_actions). Raises TrainingError (key `play.actions`)."""
    if isinstance(spec, str):
        if spec.startswith("random:"):
            count = spec.split(":", 1)[1]
            if not count.isdigit() or int(count) < 1:
                raise TrainingError("play.actions", f"random:N needs a count N >= 1, got {spec!r}")
            return [int(a) for a in np.random.default_rng(seed).integers(0, num_actions, int(count))]
        try:
            spec = [int(a) for a in spec.replace(" ", "").split(",") if a != ""]
        except ValueError:
            raise TrainingError("play.actions", f"must be comma-separated integers, got {spec!r}") from None
    actions = [int(a) for a in spec]
    bad = [a for a in actions if not 0 <= a < num_actions]
    if bad or not actions:
        raise TrainingError("play.actions", f"must be 1+ action ids in [0, {num_actions}), got {actions}")
    return actions


@torch.no_grad()
def rollout_frames(genie: Genie, image_CHW: torch.Tensor, actions: Sequence[int], steps: int | None = None,
                   temperature: float | None = None, greedy: bool = False, seed: int = 0,
                   cache: bool = True, prompt_detail: bool | None = None,
                   keep_bias: float | None = None) -> torch.Tensor:
    """(len(actions) + 1, 3, H, W) float in [0, 1]: the prompt as an episode shows it, then one
    generated frame per action (prompt detail and keep bias: the model config's where None)."""
    device = next(genie.parameters()).device
    episode = genie.start(image_CHW.to(device)[None], steps=steps, temperature=temperature, greedy=greedy,
                          cache=cache, seed=seed, prompt_detail=prompt_detail, keep_bias=keep_bias)
    for action in actions:
        episode.step(int(action))
    return torch.stack([frame[0] for frame in episode.frames]).float().cpu()


def play(checkpoint: str | os.PathLike | Genie, image, actions: str | Sequence[int], out: str | os.PathLike,
         steps: int | None = None, temperature: float | None = None, greedy: bool = False, seed: int = 0,
         fps: int = 5, scale: int = 2, device: str = "cpu", prompt_detail: bool | None = None,
         keep_bias: float | None = None) -> Path:
    """Roll a Genie out from `image` (see `load_image`) under `actions` and write the video as
    `out`'s stem + .mp4 and + .gif (`out` ends in one of them); returns `out`.
    Everything is checked before anything is written."""
    out = Path(out)
    if out.suffix.lower() not in OUTPUTS:
        raise TrainingError("play.out", f"must end in .mp4 or .gif, got {out.name!r}")
    genie = checkpoint if isinstance(checkpoint, Genie) else load_genie(checkpoint, device)
    cfg = genie.cfg
    acts = parse_actions(actions, cfg.lam.num_actions, seed)
    img = load_image(image, cfg.image_height, cfg.image_width)
    video = rollout_frames(genie, img, acts, steps, temperature, greedy, seed, prompt_detail=prompt_detail,
                           keep_bias=keep_bias)
    frames_HWC = [_even(f) for f in video_side_by_side_frames([video], scale=scale)]
    write_videos(frames_HWC, out.with_suffix(""), fps)
    return out


def write_videos(frames_HWC: Sequence[np.ndarray], stem: Path, fps: int) -> tuple[Path, Path]:
    """`stem`.mp4 (h264) and `stem`.gif of the same frames, each written atomically."""
    h, w, _ = frames_HWC[0].shape
    spec = ClipSpec(fps=fps, width=w, height=h, frames=len(frames_HWC), keyframe_interval=max(1, fps), crf=18)
    try:
        mp4 = encode_clip(np.stack(frames_HWC), spec)
    except ClipFormatError as e:
        raise TrainingError("play.out", f"cannot encode the MP4: {e}") from None
    stem.parent.mkdir(parents=True, exist_ok=True)
    mp4_path, gif_path = stem.with_suffix(".mp4"), stem.with_suffix(".gif")
    tmp = stem.with_name(f"{stem.name}.tmp.{os.getpid()}")
    tmp.write_bytes(mp4)
    os.replace(tmp, mp4_path)
    save_gif(frames_HWC, tmp.with_suffix(".gif"), fps=fps)
    os.replace(tmp.with_suffix(".gif"), gif_path)
    return mp4_path, gif_path


def _even(frame_HWC: np.ndarray) -> np.ndarray:
    """h264 in 4:2:0 needs even sides: repeat the last row / column when one is odd."""
    h, w, _ = frame_HWC.shape
    return np.pad(frame_HWC, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _read_first_frame(path: str) -> np.ndarray:
    """The first frame of a picture or video file, HWC uint8 (no resizing)."""
    if path.lower().endswith((".mp4", ".mkv", ".webm", ".mov", ".avi")):
        from genie_pipeline.shards.media import open_video

        with open_video(path, MAX_PROMPT_PIXELS) as container:  # a bomb is refused before decoding
            return next(container.decode(video=0)).to_ndarray(format="rgb24")
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
