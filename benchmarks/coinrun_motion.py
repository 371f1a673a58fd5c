"""Controllability by motion on CoinRun: does the latent action of "left" make the world move
the way CoinRun moves it when the agent goes left, from the same state?

1. Each effect class (left, right, jump, none) is mapped to its majority latent code: the LAM's
   code most often inferred, over the *training* episodes, on transitions whose true action
   falls in the class (`class_codes`).
2. From held-out prompts (a state of a validation episode, replayed exactly: the agent and the
   level are seeded), the real environment is stepped `steps` times with a representative id
   of each class, and the model rolls out `steps` frames from the same frame with that class's
   code (same sampling noise for every class). Each side's motion is the summed `camera_shift`
   (CoinRun's camera follows the agent, so the picture's shift is the agent's motion).
3. An action's *effect* is its motion minus the motion under `none` from the same state: in
   CoinRun gravity and momentum dominate a few steps' motion whatever the action (measured:
   from mid-air states all four classes gave nearly the same 4-step shift), so raw motion
   would score a model that only continues the fall. The effect of left, right and jump is
   read as one direction: left, right, up, down or still (`direction`).
4. The confusion matrix counts (true effect direction, generated effect direction) pairs over
   prompts × {left, right, jump}; accuracy is their agreement. The control rolls out the
   codes rotated among the classes by a random nonzero amount per prompt (no class keeps its
   own): what agreement a model scores whose codes do not match the classes.

The sprite is always at the centre (the camera follows it), so a separate player tracker
measures nothing the camera shift does not; enemies and coins are not tracked.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = {"left": 1, "right": 7, "jump": 5, "none": 4}  # a procgen id of each class (LEFT, RIGHT, UP, no-op)
CLASS_IDS = {"left": (0, 1), "right": (6, 7), "jump": (5,), "none": (3, 4, 9, 10, 11, 12, 13, 14)}
DIRECTIONS = ("left", "right", "up", "down", "still")
MIN_SHIFT = 2  # pixels of summed shift that count as motion


def direction(shift_2) -> str:
    """A summed (dy, dx) camera shift as one direction, horizontal motion first."""
    dy, dx = int(shift_2[0]), int(shift_2[1])
    if abs(dx) >= MIN_SHIFT and abs(dx) >= abs(dy) / 2:
        return "right" if dx < 0 else "left"  # the picture moves against the agent
    if abs(dy) >= MIN_SHIFT:
        return "up" if dy > 0 else "down"
    return "still"


def class_codes(genie, data: Path, episodes: int, frames: int, seed: int) -> dict[str, dict]:
    """Each class's majority latent code over the training episodes' transitions, with how
    many transitions it rests on and the code's share of them."""
    import torch

    from genie_pipeline.shards.reader import resolve_inputs
    from genie_pipeline.training.eval import infer_actions, read_windows

    w = read_windows(resolve_inputs([str(data)], "train").shards, genie.cfg.image_height, genie.cfg.image_width,
                     clips=episodes, seed=seed, frames=frames)
    with torch.no_grad():
        latent = torch.cat([infer_actions(genie.lam, w.video_BTCHW[i:i + 8], genie.cfg.frames)
                            for i in range(0, len(w.keys), 8)]).numpy().ravel()
    true = w.true_actions_BA.numpy().ravel()
    out = {}
    for name, ids in CLASS_IDS.items():
        codes = latent[np.isin(true, ids)]
        counts = np.bincount(codes, minlength=genie.cfg.lam.num_actions)
        out[name] = {"code": int(counts.argmax()), "transitions": int(codes.size),
                     "share": float(counts.max() / max(codes.size, 1))}
    return out


def replayed_state(seed: int, steps: int):
    """The CoinRun agent of an episode seeded `seed`, replayed `steps` steps: (env, frame)."""
    from genie_pipeline.corpus.render import CoinRunAgent, quiet_fds

    with quiet_fds():
        agent = CoinRunAgent(seed, level=seed)
    for _ in range(steps):
        agent.step()
    return agent.env, np.asarray(agent.env.observe()[1]["rgb"][0], dtype=np.uint8)


def true_motion(env, state, action: int, steps: int) -> np.ndarray:
    """Frames (steps + 1, 64, 64, 3) of the real environment from `state` under `action`."""
    env.set_state(state)
    frames = [np.asarray(env.observe()[1]["rgb"][0], dtype=np.uint8)]
    for _ in range(steps):
        env.act(np.array([action]))
        frames.append(np.asarray(env.observe()[1]["rgb"][0], dtype=np.uint8))
    return np.stack(frames)


def motion_confusion(genie, codes: dict[str, dict], episode_seeds: list[int], frames: int, steps: int = 8,
                     seed: int = 0, sampler: dict | None = None) -> dict:
    """The confusion matrices of generated vs true effect direction (module docstring), for
    the class codes and for the shuffled-code control, from one prompt per episode seed."""
    import torch

    from benchmarks.world_model import camera_shift
    from genie_pipeline.training.controllability import genie_rollout

    rng = np.random.default_rng(seed)
    names = list(CLASSES)  # "none" last: the reference every effect is measured against
    prompts, true_shift, code_of, control_of = [], [], [], []
    for s in episode_seeds:
        env, frame = replayed_state(s, int(rng.integers(4, max(5, frames - steps))))
        state = env.get_state()
        r = int(rng.integers(1, len(names)))  # the classes rotated by r != 0: no class keeps its own code
        for ci, name in enumerate(names):
            other = names[(ci + r) % len(names)]
            real = torch.from_numpy(true_motion(env, state, CLASSES[name], steps)).permute(0, 3, 1, 2).float() / 255
            true_shift.append(camera_shift(real[None])[0].sum(0))
            prompts.append(torch.from_numpy(frame).permute(2, 0, 1).float() / 255)
            code_of.append(codes[name]["code"])
            control_of.append(codes[other]["code"])
    true_dirs = _effect_directions(torch.stack(true_shift), len(names))
    prompt_BCHW = torch.stack(prompts)
    rollout = genie_rollout(genie, seed, **(sampler or {}))
    out = {"prompts": len(episode_seeds), "steps": steps, "class_codes": codes, "sampler": sampler or "model config",
           "directions": list(DIRECTIONS), "effect_classes": names[:-1],
           "true_direction_counts": {d: true_dirs.count(d) for d in DIRECTIONS}}
    for label, code_list in (("model", code_of), ("shuffled_codes", control_of)):
        with torch.no_grad():
            video = rollout(prompt_BCHW, torch.tensor(code_list)[:, None].expand(-1, steps))
        gen_dirs = _effect_directions(camera_shift(video).sum(1), len(names))
        matrix = np.zeros((len(DIRECTIONS), len(DIRECTIONS)), dtype=int)
        for t, g in zip(true_dirs, gen_dirs):
            matrix[DIRECTIONS.index(t), DIRECTIONS.index(g)] += 1
        per_class = {name: float(np.mean([t == g for i, (t, g) in enumerate(zip(true_dirs, gen_dirs))
                                          if i % (len(names) - 1) == ci]))
                     for ci, name in enumerate(names[:-1])}
        out[label] = {"confusion_rows_true_cols_generated": matrix.tolist(),
                      "accuracy": float(np.mean([t == g for t, g in zip(true_dirs, gen_dirs)])),
                      "accuracy_per_class": per_class}
    return out


def _effect_directions(shift_P2, classes: int) -> list[str]:
    """Per prompt, each class's summed shift minus the last class's (none) as a direction:
    (prompts × (classes - 1)) directions, prompt-major."""
    shift_PK2 = shift_P2.view(-1, classes, 2)
    effect_PK2 = shift_PK2[:, :-1] - shift_PK2[:, -1:]
    return [direction(e) for e in effect_PK2.flatten(0, 1)]
