"""`genie-pipeline eval`: does the world model do what a Genie is for — respond to actions?

    run_eval("runs/genie/genie.pt", i3d="i3d_pretrained_400.pt")
    # -> the report (dict); RUN/eval/eval.json, eval.html, atlas.png, rollout.gif

Everything is measured on held-out clips: one 16-frame window of each of up to `clips`
clips of the validation split (`val-*.tar` of the run's inputs, or of `data`), picked by
`seed`, at the model's frame size. Intervals are 95 % bootstrap intervals over clips.

- tokenizer: reconstruction PSNR and SSIM of the first `frames` frames of each window (the
  window length it was trained on);
- dynamics, under each sampler (`samplers`: by default greedy and T = 1, and the model
  config's own sampler if it is neither; `default_sampler` names the config's): from each
  clip's first frame, 15 frames generated with the actions the LAM infers from the true clip;
  PSNR against the true frame at every step t = 1..15, beside `copy_prompt` (the true first
  frame repeated) and the model minus copying, per t. The frames scored are the frames shown:
  with the config's `dynamics.prompt_detail` (models/episode.py), and the default sampler also
  without it (`…, decoded only`);
- ΔtPSNR (the Genie paper's controllability metric) against three baselines
  (training/controllability.py): the headline against the actions inferred from *another*
  held-out clip (`shuffled`), beside uniformly random codes and the most frequent code; per
  clip, at every t; t = 4 is the paper's headline. All rollouts of a sampler draw the same
  sampling noise, so the differences are the actions' effect alone;
- FVD between the true windows and the inferred-action rollouts of the default sampler
  (16 frames each) with the standard Inception I3D (Kinetics-400 logits, frames resized to
  224×224 in [-1, 1]; the network and preprocessing of the `cd-fvd` package), weights from a
  local file. Without weights FVD is reported as unavailable, never estimated with another
  network;
- the LAM's codebook usage and perplexity over every transition of the windows, and the
  action atlas: each latent action repeated 5 times from several start frames;
- latent against true actions, for clips whose data records them (`true_actions` of the
  loader's batches, -1 unknown): normalised mutual information against that of shuffled
  labels, and a per-code majority-vote lookup (each latent code predicts the true action it
  most often came with in the other clips: a lookup table, not a learned probe), cross-
  validated over clips against its chance levels (eval_metrics.probe_scores); for action
  spaces whose ids include duplicates (`EFFECT_CLASSES`: procgen CoinRun) the same against
  classes of ids with one effect, labelled.

Bad input (a checkpoint that is not one, an I3D file that is not I3D, data without a
validation split, too few clips) raises `TrainingError` or `DataError` before anything is
written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from genie_pipeline.models.episode import with_prompt_detail
from genie_pipeline.models.genie import Genie
from genie_pipeline.models.lam import LatentActionModel
from genie_pipeline.shards.reader import DataError, resolve_inputs

from . import eval_metrics as em
from .bundle import load_genie
from .controllability import (BATCH, HEADLINE_T, Rollout, controllability, genie_rollout,  # noqa: F401 (the API)
                              sampler_label)
from .errors import TrainingError
from .eval_report import ATLAS_STEPS, write_report
from .loader import WindowDataset
from .metrics import to_uint8_frames, video_rows_grid

FVD_FRAMES = 16  # FVD's clip length: the prompt frame and 15 generated ones
ATLAS_STARTS = 4  # start frames (columns) of the atlas
GIF_CLIPS = 4  # clips shown in rollout.gif
I3D_BATCH = 4


@dataclass
class Windows:
    """Validation windows: float video in [0, 1], their clip keys, true actions or None, and
    each clip's action space (None where it records none)."""

    video_BTCHW: torch.Tensor
    keys: list[str]
    true_actions_BA: torch.Tensor | None
    action_spaces: list[str | None] | None = None


# True actions with the same effect on the screen, per action space: `latent_vs_true` also
# scores latent actions against these classes (labelled as such, beside the raw ids), since a
# latent action cannot tell apart true actions that do the same thing.
# procgen CoinRun's 15 ids are procgen's button combos: 0 LEFT+DOWN, 1 LEFT, 2 LEFT+UP, 3 DOWN,
# 4 none, 5 UP, 6 RIGHT+DOWN, 7 RIGHT, 8 RIGHT+UP, 9-14 the keys D A W S Q E. CoinRun reads
# id // 3 - 1 as the horizontal move and id % 3 == 2 as a jump, and ids >= 9 as none (procgen
# maps them to move 4); DOWN only drops the agent through a crate. Checked in procgen: from 40
# random states, 3 steps of ids 3 and 9-14 always gave the frames of id 4, and ids with the
# same class the same frames except on crates (LEFT+DOWN vs LEFT) and, in the air, jump vs no
# jump (a jump needs ground under the agent).
EFFECT_CLASSES: dict[str, tuple[list[str], list[int]]] = {
    "procgen:coinrun:15": (["left", "left+jump", "none", "jump", "right", "right+jump"],
                           [0, 0, 1, 2, 2, 3, 4, 4, 5, 2, 2, 2, 2, 2, 2]),
}


# ============================================================================ the command
def run_eval(checkpoint: str | os.PathLike, data: list[str] | None = None, out_dir: str | os.PathLike | None = None,
             i3d: str | os.PathLike | None = None, clips: int = 32, seed: int = 0, device: str = "cpu",
             samplers: dict[str, dict] | None = None, batch: int = BATCH, sampler: dict | None = None) -> dict:
    """Evaluate a Genie (RUN dir, genie.pt or phase-2 checkpoint) on the validation windows of
    `data` (default: the inputs recorded in the run's run.json); write eval.json, eval.html,
    atlas.png and rollout.gif into `out_dir` (default RUN/eval) and return the report.
    `samplers` ({label: Episode keywords steps/temperature/greedy}; the first is the default)
    replaces `eval_samplers`'s. `batch`: clips per model call (8 suits a CPU; a GPU wants more).
    `sampler` replaces the model config's sampling settings (`load_genie`), e.g.
    {"keep_bias": 2.0} for a model trained before that setting's default changed."""
    if clips < 2:
        raise TrainingError("eval.clips", f"needs at least 2 clips (bootstrap intervals, the shuffled-clip "
                                          f"baseline, the majority vote's cross-validation), got {clips}")
    run_dir = find_run_dir(checkpoint)
    shards = eval_shards(run_dir, data)
    genie = load_genie(checkpoint, device, sampler)
    i3d_net = load_i3d(i3d, device) if i3d else None
    windows = read_windows(shards, genie.cfg.image_height, genie.cfg.image_width, clips, seed)
    out = Path(out_dir) if out_dir else (run_dir or Path(checkpoint).parent) / "eval"

    with torch.no_grad():
        report, media = evaluate(genie, windows, i3d_net, seed, samplers, batch)
    report.update(checkpoint=str(checkpoint), data=shards, seed=seed)
    if i3d_net is not None:
        report["fvd"]["i3d"] = str(i3d)
    return write_report(out, report, media)


def find_run_dir(checkpoint: str | os.PathLike) -> Path | None:
    """The run directory behind a checkpoint: itself when a directory, else the nearest of
    the file's parents (RUN/genie.pt, RUN/checkpoints/dynamics/latest.pt) holding run.json."""
    p = Path(checkpoint)
    if p.is_dir():
        return p
    for parent in list(p.parents)[:3]:
        if (parent / "run.json").is_file():
            return parent
    return None


def eval_shards(run_dir: Path | None, data: list[str] | None) -> list[str]:
    """The shards to evaluate on: the validation shards of `data`, else of the run's inputs."""
    if data:
        return resolve_inputs(list(data), "val").shards
    run_json = run_dir / "run.json" if run_dir else None
    if run_json is None or not run_json.is_file():
        raise TrainingError("eval.data", "no run.json beside the checkpoint to read the run's inputs from: "
                                         "give --data OUT_OR_SHARDS")
    try:
        run = json.loads(run_json.read_text())
        inputs = run["inputs"]
    except (ValueError, KeyError, TypeError):
        raise TrainingError("eval.data", f"{run_json} records no inputs: give --data OUT_OR_SHARDS") from None
    pins = run.get("snapshots") or {}  # the snapshot the run trained on, not what the output holds now
    inputs = [f"{i}@{pins[i]}" if i in pins else i for i in inputs]
    shards = resolve_inputs(inputs, "val").shards
    not_val = [s for s in shards if not os.path.basename(s).startswith("val-")]
    if not_val:  # an input given as a tar or glob names its split itself
        raise TrainingError("eval.data", f"the run's inputs name shards that are not validation shards "
                                         f"({not_val[0]}): give --data OUT_OR_SHARDS")
    return shards


def load_i3d(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The Inception I3D of FVD with the weights in `path` (a weights-only state dict with
    exactly the network's keys and shapes, e.g. the `i3d_pretrained_400.pt` that cd-fvd uses).
    TrainingError (`eval.i3d`) for anything else."""
    try:
        from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d
    except ImportError:
        raise TrainingError("eval.i3d", "FVD needs the cd-fvd package: pip install 'genie-pipeline[eval]'") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError("eval.i3d", f"{path} does not exist") from None
    except Exception as e:  # noqa: BLE001 — torch raises many types for a bad or hostile file
        raise TrainingError("eval.i3d", f"{path} is not a weights-only I3D state dict "
                                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    net = InceptionI3d(400, in_channels=3)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TrainingError("eval.i3d", f"{path} is not an I3D state dict (a mapping of tensors)")
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise TrainingError("eval.i3d", f"{path} is not Inception I3D weights: {len(missing)} keys missing "
                                        f"(e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})")
    wrong = [k for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        raise TrainingError("eval.i3d", f"{path} is not Kinetics-400 Inception I3D weights: {wrong[0]} has shape "
                                        f"{tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]].shape)}")
    net.load_state_dict(state)
    return net.to(device).eval()


def read_windows(shards: list[str], height: int, width: int, clips: int, seed: int,
                 frames: int = FVD_FRAMES) -> Windows:
    """One `frames`-frame window from each of up to `clips` clips of `shards`, at
    height×width; which clips and windows is a function of `seed`."""
    ds = WindowDataset(shards, batch_size=clips, frames=frames, seed=seed, windows_per_clip=1,
                       clips_per_group=8, shuffle_buffer=4 * clips, resolution=(height, width), infinite=False)
    videos, keys, true, spaces = [], [], [], []
    for batch in ds:
        videos.append(batch["video"])
        keys += batch["keys"]
        true.append(batch.get("true_actions"))
        spaces += batch.get("action_spaces") or [None] * len(batch["keys"])
        if len(keys) >= clips:
            break
    if len(keys) < 2:
        raise DataError(f"{len(keys)} usable {frames}-frame windows in {shards[0]}…: eval needs at least 2")
    video = torch.cat(videos)[:clips].float().div_(255.0)
    true_actions = torch.cat(true)[:clips].long() if all(t is not None for t in true) else None
    return Windows(video, keys[:clips], true_actions, spaces[:clips])


# ============================================================================ the model's side
def infer_actions(lam: LatentActionModel, video_BTCHW: torch.Tensor, window: int) -> torch.Tensor:
    """The LAM's actions (B, T-1) of a video longer than the windows it was trained on: the
    action of transition t is read from the `window` frames ending at frame t+1 (the LAM reads
    transition t from frames <= t+1 only, so the first window takes one call)."""
    T = video_BTCHW.shape[1]
    first_BA = lam.infer_actions(video_BTCHW[:, : min(T, window)])
    later = [lam.infer_actions(video_BTCHW[:, t + 2 - window : t + 2])[:, -1] for t in range(window - 1, T - 1)]
    return torch.cat([first_BA, torch.stack(later, 1)], 1) if later else first_BA


def _batched(fn, video_BTCHW: torch.Tensor, device, batch: int = BATCH) -> torch.Tensor:
    return torch.cat([fn(video_BTCHW[i : i + batch].to(device)).cpu() for i in range(0, len(video_BTCHW), batch)])


# ============================================================================ measurements
def eval_samplers(cfg) -> tuple[dict[str, dict], str]:
    """The samplers eval reports every rollout number under ({label: Episode keywords}) and
    the label of the model config's own: greedy and T = 1 at the config's MaskGIT steps, the
    config's temperature where it is neither, all with the config's prompt detail and keep
    bias; where the detail is on, the config's sampler without it (the decoder's frames
    alone), and where the keep bias is on, the config's sampler without that, so the report
    shows what each adds."""
    dyn = cfg.dynamics
    steps, temperature, detail, keep = dyn.maskgit_steps, dyn.temperature, dyn.prompt_detail, dyn.keep_bias
    samplers = {sampler_label(True, 0.0, steps, detail, keep): {"greedy": True, "steps": steps},
                sampler_label(False, 1.0, steps, detail, keep): {"temperature": 1.0, "steps": steps}}
    default = sampler_label(False, temperature, steps, detail, keep)
    samplers.setdefault(default, {"temperature": temperature, "steps": steps})
    if detail:
        samplers[sampler_label(False, temperature, steps, False, keep)] = {"temperature": temperature, "steps": steps,
                                                                           "prompt_detail": False}
    if keep:
        samplers[sampler_label(False, temperature, steps, detail)] = {"temperature": temperature, "steps": steps,
                                                                      "keep_bias": 0.0}
    return samplers, default


def evaluate(genie: Genie, windows: Windows, i3d: nn.Module | None, seed: int,
             samplers: dict[str, dict] | None = None, batch: int = BATCH) -> tuple[dict, dict]:
    """Every measurement on the windows: (report, media) where media holds the pictures."""
    cfg, device = genie.cfg, next(genie.parameters()).device
    if samplers:
        default = next(iter(samplers))
    else:
        samplers, default = eval_samplers(cfg)
    video = windows.video_BTCHW
    target = genie.tokenizer.grid.target(video)
    frames = min(cfg.frames, video.shape[1])
    tokens = _batched(genie.tokenizer.encode, video[:, :frames], device, batch)
    recon = _batched(genie.tokenizer.decode, tokens, device, batch)
    actions = _batched(lambda v: infer_actions(genie.lam, v, cfg.frames), video, device, batch)
    by_sampler, preds = {}, {}
    for label, kw in samplers.items():
        rollout = genie_rollout(genie, seed, batch=batch, **kw)
        scores, pred, base_preds = controllability(video, target, rollout, actions, cfg.lam.num_actions, seed)
        resolved = {"greedy": bool(kw.get("greedy", False)), "steps": kw.get("steps") or cfg.dynamics.maskgit_steps,
                    "temperature": kw.get("temperature", cfg.dynamics.temperature),
                    "prompt_detail": kw.get("prompt_detail", cfg.dynamics.prompt_detail),
                    "keep_bias": kw.get("keep_bias", cfg.dynamics.keep_bias)}
        by_sampler[label] = {"sampler": resolved, **scores}
        preds[label] = (pred, base_preds)
    pred, base_preds = preds[default]
    main = by_sampler[default]
    report = {
        "clips": len(windows.keys), "frames": video.shape[1], "split": "val",
        "model": {"image_hw": [cfg.image_height, cfg.image_width], "frames": cfg.frames,
                  "num_actions": cfg.lam.num_actions, "maskgit_steps": cfg.dynamics.maskgit_steps,
                  "temperature": cfg.dynamics.temperature, "keep_bias": cfg.dynamics.keep_bias},
        "tokenizer": reconstruction_scores(recon, target[:, :frames]),
        "tokenizer_bound": tokenizer_bound(recon, target[:, :frames], main["dynamics"]["copy_prompt"],
                                           (genie.tokenizer.grid, tokens) if cfg.dynamics.prompt_detail else None),
        "default_sampler": default,
        "dynamics": main["dynamics"], "delta_psnr": main["delta_psnr"], "model_minus_copy": main["model_minus_copy"],
        "copy_prompt": main["dynamics"]["copy_prompt"],
        "samplers": by_sampler,
        "fvd": ({"available": True, "value": fvd(i3d, target, pred, device), "clips": len(windows.keys),
                 "frames": video.shape[1], "sampler": default} if i3d is not None
                else {"available": False, "reason": "no I3D weights given (--i3d PATH)"}),
        "lam": em.code_usage(actions, cfg.lam.num_actions) | {"num_actions": cfg.lam.num_actions,
                                                              "transitions": int(actions.numel())},
        "true_actions": latent_vs_true(actions, windows.true_actions_BA, windows.action_spaces),
    }
    atlas_rollout = genie_rollout(genie, seed, batch=batch, **samplers[default])
    shuffled = base_preds["shuffled"]
    media = {"atlas": action_atlas(atlas_rollout, video[:ATLAS_STARTS, 0], cfg.lam.num_actions),
             "rollout_frames": [video_rows_grid([torch.stack([target[i, t], pred[i, t], shuffled[i, t]])
                                                 for i in range(min(GIF_CLIPS, len(video)))])
                                for t in range(video.shape[1])]}
    return report, media


def reconstruction_scores(recon_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> dict:
    """Tokenizer PSNR and SSIM: per clip over its frames, then the mean over clips."""
    B, T = target_BTCHW.shape[:2]
    psnr_B = em.psnr(recon_BTCHW, target_BTCHW, dims=(1, 2, 3, 4))
    ssim_B = em.ssim(recon_BTCHW.flatten(0, 1), target_BTCHW.flatten(0, 1)).view(B, T).mean(1)
    return {"psnr": float(psnr_B.mean()), "ssim": float(ssim_B.mean()), "frames": T}


def tokenizer_bound(recon_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, copy: dict,
                    detail: tuple | None = None) -> dict:
    """PSNR per generated step t of the tokenizer's reconstruction of the true frame t: what a
    dynamics model that predicted every token of every frame as the encoder gives it would score
    (the decoder is causal, so frame t's decode reads only true tokens of frames <= t). Where
    copying the prompt scores above it, predicting the encoder's tokens cannot beat copying with
    this tokenizer (other tokens could decode closer, but that is not what training targets).
    `detail` (the grid and the encoder's tokens_BTN): the frames shown with prompt detail
    (models/episode.py), as the rollouts scored beside it show them; the decoder's alone too."""
    from .controllability import psnr_per_step

    def per_step(frames_BTCHW):
        return psnr_per_step(frames_BTCHW, target_BTCHW).mean(0).tolist()

    decoded = per_step(recon_BTCHW)
    bound = decoded
    if detail is not None:
        grid, tokens_BTN = detail
        lost_BCHW = target_BTCHW[:, 0] - recon_BTCHW[:, 0]
        bound = per_step(torch.stack([with_prompt_detail(grid, recon_BTCHW[:, t], tokens_BTN[:, t], tokens_BTN[:, 0],
                                                         lost_BCHW) for t in range(recon_BTCHW.shape[1])], 1))
    steps = [t + 1 for t, (b, c) in enumerate(zip(bound, copy["psnr_per_step"])) if c > b]
    return {"psnr_per_step": bound, "decoded_only_psnr_per_step": decoded, "prompt_detail": detail is not None,
            "copy_above_bound_at_t": steps,
            "what": "the tokenizer's reconstruction of the true frame t (perfect dynamics), shown as the rollouts "
                    "are (prompt_detail); copying the prompt is above it at the steps listed"}


def i3d_features(i3d: nn.Module, video_BTCHW: torch.Tensor, device) -> np.ndarray:
    """I3D logits (B, 400) of videos in [0, 1], preprocessed as cd-fvd does (224×224, [-1, 1])."""
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    feats = []
    for i in range(0, len(video_BTCHW), I3D_BATCH):
        uint8_BTHWC = np.stack([to_uint8_frames(v) for v in video_BTCHW[i : i + I3D_BATCH]])
        feats.append(i3d(preprocess_i3d(uint8_BTHWC).to(device)).float().cpu().numpy())
    return np.concatenate(feats)


def fvd(i3d: nn.Module, real_BTCHW: torch.Tensor, fake_BTCHW: torch.Tensor, device) -> float:
    """Fréchet distance between the I3D features of real and generated clips."""
    return em.frechet_distance(*em.feature_stats(i3d_features(i3d, real_BTCHW, device)),
                               *em.feature_stats(i3d_features(i3d, fake_BTCHW, device)))


def latent_vs_true(latent_BA: torch.Tensor, true_BA: torch.Tensor | None,
                   action_spaces: list[str | None] | None = None) -> dict:
    """Latent against true actions over the labelled transitions (true >= 0): `nmi` with
    `nmi_chance` (the NMI of the same labels shuffled) and `majority_vote` (`em.probe_scores`:
    each latent code predicts the true action it most often came with in the other clips, a
    lookup table cross-validated over clips, with its chance levels).

    Where every labelled clip has one action space of `EFFECT_CLASSES`, `effect_classes` holds
    the same scores against the classes of true actions with the same effect (their `names`);
    the raw-id scores stay the headline."""
    if true_BA is None or not bool((true_BA >= 0).any()):
        return {"available": False, "reason": "the data records no true actions"}
    out = {"available": True, **_scores_against(latent_BA.numpy(), true_BA.numpy())}
    labelled_spaces = {s for s, row in zip(action_spaces or [], true_BA) if bool((row >= 0).any())}
    space = labelled_spaces.pop() if len(labelled_spaces) == 1 else None
    if space in EFFECT_CLASSES and int(true_BA.max()) < len(EFFECT_CLASSES[space][1]):
        names, class_of = EFFECT_CLASSES[space]
        true_np = true_BA.numpy()
        classes_BA = np.where(true_np >= 0, np.asarray(class_of)[true_np.clip(min=0)], -1)
        out["effect_classes"] = {"action_space": space, "names": names, **_scores_against(latent_BA.numpy(), classes_BA)}
    return out


def _scores_against(latent_BA: np.ndarray, true_BA: np.ndarray) -> dict:
    labelled = true_BA >= 0
    true, latent = true_BA[labelled], latent_BA[labelled]
    out = {"transitions": int(labelled.sum()), "nmi": em.nmi(true, latent), "nmi_chance": em.nmi_chance(true, latent)}
    if int(labelled.any(axis=1).sum()) >= 2:
        out["majority_vote"] = em.probe_scores(latent_BA, true_BA)
    else:
        out["majority_vote"] = {"available": False, "reason": "true actions in fewer than 2 clips"}
    return out


def action_atlas(rollout: Rollout, starts_SCHW: torch.Tensor, num_actions: int, steps: int = ATLAS_STEPS) -> np.ndarray:
    """Rows = latent actions, columns = start frames × (start + `steps` frames repeating the
    action): a uint8 HWC picture with the action id left of each row."""
    S = starts_SCHW.shape[0]
    prompts = starts_SCHW.repeat(num_actions, 1, 1, 1)  # action-major: row k holds starts 0..S-1
    actions_BA = torch.arange(num_actions).repeat_interleave(S)[:, None].expand(-1, steps)
    video_BTCHW = rollout(prompts, actions_BA)
    gap = torch.ones_like(video_BTCHW[0, :1])  # a white frame between start frames
    rows = []
    for k in range(num_actions):
        parts = [video_BTCHW[k * S]]
        for s in range(1, S):
            parts += [gap, video_BTCHW[k * S + s]]
        rows.append(torch.cat(parts))
    return _label_rows(video_rows_grid(rows), [str(k) for k in range(num_actions)], video_BTCHW.shape[-2])


def _label_rows(grid_HWC: np.ndarray, labels: list[str], frame_h: int, pad: int = 2, margin: int = 16) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (grid_HWC.shape[1] + margin, grid_HWC.shape[0]), "white")
    img.paste(Image.fromarray(grid_HWC), (margin, 0))
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(labels):
        draw.text((3, pad + i * (frame_h + pad) + frame_h // 2 - 5), text, fill="black")
    return np.asarray(img)


