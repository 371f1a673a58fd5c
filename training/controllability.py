"""Does the dynamics model answer its actions? ΔtPSNR against baselines that cannot flatter it,
and the copy-the-prompt baseline: the one code path of `eval` and of the trainer's samples.

ΔtPSNR (Genie) = PSNR(x_t, x̂_t under the actions the LAM inferred from the true clip) −
PSNR(x_t, x̂_t under baseline actions), per clip, with a bootstrap interval over clips. What the
baseline is decides what the number means, so every baseline is reported:

- `shuffled` (the headline): the inferred actions of *another* clip of the same set (a
  derangement of the clips). They are real action sequences with the codes' real frequencies
  and persistence, so only the match to this clip's motion is left to score;
- `uniform`: every code equally often, codes the model barely saw in training included (the
  paper's "random actions"; flatters a model that handles rare codes badly);
- `most_frequent`: the most frequent inferred code over the set, every step.

Every rollout of one sampler draws the same sampling noise (the rollout is seeded), so the
differences are the actions' effect alone. `copy_prompt` scores repeating the true prompt frame:
a world model that does not beat it at small t has learned nothing about motion.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from . import eval_metrics as em

HEADLINE_T = 4  # the step the Genie paper reports ΔtPSNR at
HEADLINE_BASELINE = "shuffled"
BASELINES = ("shuffled", "uniform", "most_frequent")
BATCH = 8  # clips per model call

# (prompt_BCHW, actions_BA) -> video_BTCHW in [0, 1], T = A + 1: the prompt (as the model
# shows it) and one frame per action
Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sampler_label(greedy: bool, temperature: float, steps: int, prompt_detail: bool = True,
                  keep_bias: float = 0.0) -> str:
    """How a sampler is named in reports: `greedy/4 steps`, `T=1/4 steps`; `…, keep 2` where
    the sampler favours each patch's previous token by that many nats (`dynamics.keep_bias`);
    `…, decoded only` where the frames shown are the decoder's alone (no prompt detail:
    models/episode.py)."""
    label = f"{'greedy' if greedy or temperature <= 0 else f'T={temperature:g}'}/{steps} steps"
    if keep_bias:
        label += f", keep {keep_bias:g}"
    return label if prompt_detail else f"{label}, decoded only"


def genie_rollout(genie, seed: int, *, steps: int | None = None, temperature: float | None = None,
                  greedy: bool = False, prompt_detail: bool | None = None, keep_bias: float | None = None,
                  batch: int = BATCH) -> Rollout:
    """A Genie as a `Rollout`: an `Episode` (`genie.start`) from the prompt frames, stepped
    through the actions with the given sampler, prompt detail and keep bias (the model
    config's where None), `batch` clips per episode. Every call starts from `seed`, so two
    calls draw the same sampling noise."""
    device = next(genie.parameters()).device

    def rollout(prompt_BCHW: torch.Tensor, actions_BA: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, prompt_BCHW.shape[0], batch):
            episode = genie.start(prompt_BCHW[i : i + batch].to(device), seed=seed, steps=steps,
                                  temperature=temperature, greedy=greedy, prompt_detail=prompt_detail,
                                  keep_bias=keep_bias)
            for action_B in actions_BA[i : i + batch].T:
                episode.step(action_B.to(device))
            out.append(torch.stack(episode.frames, 1).float().cpu())
        return torch.cat(out)

    return rollout


def baseline_actions(actions_BA: torch.Tensor, num_actions: int, seed: int) -> dict[str, torch.Tensor]:
    """The baselines' action sequences (module docstring), each (B, A), drawn from `seed`."""
    B = actions_BA.shape[0]
    if B < 2:
        raise ValueError("the shuffled-clip baseline needs at least 2 clips")
    rng = np.random.default_rng(seed)
    order = rng.permutation(B)
    other_B = np.empty(B, dtype=np.int64)
    other_B[order] = np.roll(order, -1)  # each clip takes the next one's actions in a random cycle: never its own
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(actions_BA.flatten(), minlength=num_actions)
    return {"shuffled": actions_BA[torch.from_numpy(other_B)],
            "uniform": torch.randint(0, num_actions, actions_BA.shape, generator=gen),
            "most_frequent": torch.full_like(actions_BA, int(counts.argmax()))}


def psnr_per_step(pred_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> torch.Tensor:
    """PSNR of each clip at every generated step t = 1..T-1, (B, T-1)."""
    return torch.stack([em.psnr(pred_BTCHW[:, t], target_BTCHW[:, t], dims=(1, 2, 3))
                        for t in range(1, pred_BTCHW.shape[1])], 1)


def mean_with_ci(values_BT: torch.Tensor, seed: int) -> list[dict]:
    """Per step t: the mean over clips and its 95 % bootstrap interval over clips."""
    v = values_BT.numpy()
    return [{"t": t + 1, "value": float(v[:, t].mean()), "ci95": list(em.bootstrap_ci(v[:, t], seed=seed))}
            for t in range(v.shape[1])]


def copy_prompt(target_BTCHW: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    """The copy-the-prompt baseline: PSNR of the true first frame against the true frame t,
    (B, T-1) per clip, and its means per step."""
    copy_BTCHW = target_BTCHW[:, :1].expand_as(target_BTCHW)
    psnr_BT = psnr_per_step(copy_BTCHW, target_BTCHW)
    return psnr_BT, {"psnr_per_step": psnr_BT.mean(0).tolist(),
                     "what": "the true prompt frame repeated: PSNR against the true frame t"}


def controllability(video_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, rollout: Rollout,
                    actions_BA: torch.Tensor, num_actions: int, seed: int, headline_t: int = HEADLINE_T):
    """Rollouts from each clip's first frame under `actions_BA` and under each baseline's
    actions, scored against `target_BTCHW`, beside copying the prompt. Every rollout finds the
    global torch RNG seeded with `seed` (a Genie's rollout has its own seeded generator, see
    `genie_rollout`), so all draw the same sampling noise.

    Returns (scores, prediction, {baseline: its prediction}); scores hold
    - `dynamics`: `psnr_per_step` (means over clips at t = 1..A), `baselines` {name: the same}
      and `copy_prompt`;
    - `delta_psnr`: the headline against `shuffled` (`value`, `ci95` at `headline_t`, `per_step`),
      and `against` {baseline: the same};
    - `model_minus_copy`: per step, the model's PSNR minus copying the prompt, with intervals."""
    baselines = baseline_actions(actions_BA, num_actions, seed)
    torch.manual_seed(seed)
    pred = rollout(video_BTCHW[:, 0], actions_BA)
    psnr_BT = psnr_per_step(pred, target_BTCHW)
    preds, against, base_psnr = {}, {}, {}
    for name, acts in baselines.items():
        torch.manual_seed(seed)
        preds[name] = rollout(video_BTCHW[:, 0], acts)
        b_BT = psnr_per_step(preds[name], target_BTCHW)
        base_psnr[name] = b_BT.mean(0).tolist()
        per_step = mean_with_ci(psnr_BT - b_BT, seed)
        head = per_step[min(headline_t, len(per_step)) - 1]
        against[name] = {"t": head["t"], "value": head["value"], "ci95": head["ci95"], "per_step": per_step}
    copy_BT, copy = copy_prompt(target_BTCHW, seed)
    scores = {"dynamics": {"psnr_per_step": psnr_BT.mean(0).tolist(), "baselines": base_psnr, "copy_prompt": copy,
                           "actions": "inferred by the LAM from the true clip"},
              "delta_psnr": {"baseline": HEADLINE_BASELINE, **against[HEADLINE_BASELINE], "against": against},
              "model_minus_copy": mean_with_ci(psnr_BT - copy_BT, seed)}
    return scores, pred, preds
