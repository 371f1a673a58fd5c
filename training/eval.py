"""`genie-pipeline eval`: does the world model do what a Genie is for — respond to actions?

    run_eval("runs/genie/genie.pt", i3d="i3d_pretrained_400.pt")
    # -> the report (dict); RUN/eval/eval.json, eval.html, atlas.png, rollout.gif

Everything is measured on held-out clips: one 16-frame window of each of up to `clips`
clips of the validation split (`val-*.tar` of the run's inputs, or of `data`), picked by
`seed`, at the model's frame size.

- tokenizer: reconstruction PSNR and SSIM of the first `frames` frames of each window (the
  window length it was trained on);
- dynamics: from each clip's first frame, 15 frames generated with the actions the LAM
  infers from the true clip; PSNR against the true frame at every step t = 1..15;
- ΔtPSNR (the Genie paper's controllability metric): PSNR(x_t, x̂_t with inferred actions)
  − PSNR(x_t, x̂_t with uniformly random actions), per clip, at every t with a 95 % bootstrap
  interval over clips; t = 4 is the paper's headline. Both rollouts draw the same sampling
  noise (same seed), so the difference is the actions' effect alone;
- FVD between the true windows and the inferred-action rollouts (16 frames each) with the
  standard Inception I3D (Kinetics-400 logits, frames resized to 224×224 in [-1, 1]; the
  network and preprocessing of the `cd-fvd` package), weights from a local file. Without
  weights FVD is reported as unavailable, never estimated with another network;
- the LAM's codebook usage and perplexity over every transition of the windows, and the
  action atlas: each latent action repeated 5 times from several start frames;
- latent against true actions, for clips whose data records them (`true_actions` of the
  loader's batches, -1 unknown): normalised mutual information against that of shuffled
  labels, and the accuracy of a majority-vote probe cross-validated over clips against its
  chance levels (eval_metrics.probe_scores); for action spaces whose ids include duplicates
  (`EFFECT_CLASSES`: procgen CoinRun) the same against classes of ids with one effect, labelled.

Bad input (a checkpoint that is not one, an I3D file that is not I3D, data without a
validation split, too few clips) raises `TrainingError` or `DataError` before anything is
written.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from genie_pipeline.models.genie import Genie
from genie_pipeline.models.lam import LatentActionModel
from genie_pipeline.shards.reader import DataError, resolve_inputs

from . import eval_metrics as em
from .bundle import load_genie
from .errors import TrainingError
from .loader import WindowDataset
from .metrics import save_gif, save_png, to_uint8_frames, video_rows_grid

FVD_FRAMES = 16  # FVD's clip length: the prompt frame and 15 generated ones
HEADLINE_T = 4  # the step the Genie paper reports ΔtPSNR at
ATLAS_STEPS = 5  # each latent action repeated this often in the atlas
ATLAS_STARTS = 4  # start frames (columns) of the atlas
GIF_CLIPS = 4  # clips shown in rollout.gif
BATCH = 8  # clips per model call
I3D_BATCH = 4

# (prompt_BCHW, actions_BA) -> video_BTCHW in [0, 1], T = A + 1: the prompt (as the model
# shows it) and one frame per action
Rollout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
             i3d: str | os.PathLike | None = None, clips: int = 32, seed: int = 0, device: str = "cpu") -> dict:
    """Evaluate a Genie (RUN dir, genie.pt or phase-2 checkpoint) on the validation windows of
    `data` (default: the inputs recorded in the run's run.json); write eval.json, eval.html,
    atlas.png and rollout.gif into `out_dir` (default RUN/eval) and return the report."""
    if clips < 2:
        raise TrainingError("eval.clips", f"needs at least 2 clips (bootstrap intervals, the probe's "
                                          f"cross-validation), got {clips}")
    run_dir = find_run_dir(checkpoint)
    shards = eval_shards(run_dir, data)
    genie = load_genie(checkpoint, device)
    i3d_net = load_i3d(i3d, device) if i3d else None
    windows = read_windows(shards, genie.cfg.image_height, genie.cfg.image_width, clips, seed)
    out = Path(out_dir) if out_dir else (run_dir or Path(checkpoint).parent) / "eval"

    with torch.no_grad():
        report, media = evaluate(genie, windows, i3d_net, seed)
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


def genie_rollout(genie: Genie, seed: int) -> Rollout:
    """A Genie as a `Rollout`: an `Episode` (`genie.start`) from the prompt frames, stepped
    through the actions at the model config's MaskGIT steps and temperature. Every call
    starts from `seed`, so two calls draw the same sampling noise."""
    device = next(genie.parameters()).device

    def rollout(prompt_BCHW: torch.Tensor, actions_BA: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, prompt_BCHW.shape[0], BATCH):
            episode = genie.start(prompt_BCHW[i : i + BATCH].to(device), seed=seed)
            for action_B in actions_BA[i : i + BATCH].T:
                episode.step(action_B.to(device))
            out.append(torch.stack(episode.frames, 1).float().cpu())
        return torch.cat(out)

    return rollout


def _batched(fn, video_BTCHW: torch.Tensor, device) -> torch.Tensor:
    return torch.cat([fn(video_BTCHW[i : i + BATCH].to(device)).cpu() for i in range(0, len(video_BTCHW), BATCH)])


# ============================================================================ measurements
def evaluate(genie: Genie, windows: Windows, i3d: nn.Module | None, seed: int) -> tuple[dict, dict]:
    """Every measurement on the windows: (report, media) where media holds the pictures."""
    cfg, device = genie.cfg, next(genie.parameters()).device
    video = windows.video_BTCHW
    target = genie.tokenizer.grid.target(video)
    frames = min(cfg.frames, video.shape[1])
    recon = _batched(lambda v: genie.tokenizer.decode(genie.tokenizer.encode(v)), video[:, :frames], device)
    actions = _batched(lambda v: infer_actions(genie.lam, v, cfg.frames), video, device)
    rollout = genie_rollout(genie, seed)
    dyn, pred, pred_random = controllability(video, target, rollout, actions, cfg.lam.num_actions, seed)
    report = {
        "clips": len(windows.keys), "frames": video.shape[1], "split": "val",
        "model": {"image_hw": [cfg.image_height, cfg.image_width], "frames": cfg.frames,
                  "num_actions": cfg.lam.num_actions, "maskgit_steps": cfg.dynamics.maskgit_steps,
                  "temperature": cfg.dynamics.temperature},
        "tokenizer": reconstruction_scores(recon, target[:, :frames]),
        "dynamics": dyn["dynamics"],
        "delta_psnr": dyn["delta_psnr"],
        "fvd": ({"available": True, "value": fvd(i3d, target, pred, device), "clips": len(windows.keys),
                 "frames": video.shape[1]} if i3d is not None
                else {"available": False, "reason": "no I3D weights given (--i3d PATH)"}),
        "lam": em.code_usage(actions, cfg.lam.num_actions) | {"num_actions": cfg.lam.num_actions,
                                                              "transitions": int(actions.numel())},
        "true_actions": latent_vs_true(actions, windows.true_actions_BA, windows.action_spaces),
    }
    media = {"atlas": action_atlas(rollout, video[:ATLAS_STARTS, 0], cfg.lam.num_actions),
             "rollout_frames": [video_rows_grid([torch.stack([target[i, t], pred[i, t], pred_random[i, t]])
                                                 for i in range(min(GIF_CLIPS, len(video)))])
                                for t in range(video.shape[1])]}
    return report, media


def reconstruction_scores(recon_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor) -> dict:
    """Tokenizer PSNR and SSIM: per clip over its frames, then the mean over clips."""
    B, T = target_BTCHW.shape[:2]
    psnr_B = em.psnr(recon_BTCHW, target_BTCHW, dims=(1, 2, 3, 4))
    ssim_B = em.ssim(recon_BTCHW.flatten(0, 1), target_BTCHW.flatten(0, 1)).view(B, T).mean(1)
    return {"psnr": float(psnr_B.mean()), "ssim": float(ssim_B.mean()), "frames": T}


def controllability(video_BTCHW: torch.Tensor, target_BTCHW: torch.Tensor, rollout: Rollout,
                    actions_BA: torch.Tensor, num_actions: int, seed: int, headline_t: int = HEADLINE_T):
    """Rollouts from each clip's first frame under `actions_BA` and under uniformly random
    actions, scored against `target_BTCHW`. Both draw the same sampling noise: a `rollout`
    that samples from the global torch RNG finds it seeded with `seed` each time (a Genie's
    rollout has its own generator, see `genie_rollout`).

    Returns (scores, prediction, random-action prediction); scores hold `dynamics`
    (`psnr_per_step`, `psnr_per_step_random`: means over clips at t = 1..A) and `delta_psnr`
    (`value` and `ci95` at `headline_t`, `per_step` for every t; ΔtPSNR per clip, the interval a
    bootstrap over clips)."""
    gen = torch.Generator().manual_seed(seed)
    random_BA = torch.randint(0, num_actions, actions_BA.shape, generator=gen)
    torch.manual_seed(seed)
    pred = rollout(video_BTCHW[:, 0], actions_BA)
    torch.manual_seed(seed)
    pred_random = rollout(video_BTCHW[:, 0], random_BA)
    steps = range(1, actions_BA.shape[1] + 1)
    psnr_BT = torch.stack([em.psnr(pred[:, t], target_BTCHW[:, t], dims=(1, 2, 3)) for t in steps], 1)
    psnr_random_BT = torch.stack([em.psnr(pred_random[:, t], target_BTCHW[:, t], dims=(1, 2, 3)) for t in steps], 1)
    delta_BT = (psnr_BT - psnr_random_BT).numpy()
    per_step = [{"t": t, "value": float(delta_BT[:, t - 1].mean()), "ci95": list(em.bootstrap_ci(delta_BT[:, t - 1], seed=seed))}
                for t in steps]
    headline = per_step[min(headline_t, len(per_step)) - 1]
    scores = {"dynamics": {"psnr_per_step": psnr_BT.mean(0).tolist(),
                           "psnr_per_step_random": psnr_random_BT.mean(0).tolist(),
                           "actions": "inferred by the LAM from the true clip"},
              "delta_psnr": {"t": headline["t"], "value": headline["value"], "ci95": headline["ci95"],
                             "per_step": per_step}}
    return scores, pred, pred_random


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
    `nmi_chance` (the NMI of the same labels shuffled) and `probe` (`em.probe_scores`: a
    majority-vote probe cross-validated over clips, with its chance levels).

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
        out["probe"] = em.probe_scores(latent_BA, true_BA)
    else:
        out["probe"] = {"available": False, "reason": "true actions in fewer than 2 clips"}
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


# ============================================================================ the report
def write_report(out: Path, report: dict, media: dict) -> dict:
    """eval.json, eval.html (self-contained: every picture inline), atlas.png, rollout.gif."""
    out.mkdir(parents=True, exist_ok=True)
    save_png(media["atlas"], out / "atlas.png")
    gif = [np.repeat(np.repeat(f, 2, 0), 2, 1) for f in media["rollout_frames"]]
    save_gif(gif, out / "rollout.gif", fps=4)
    report["files"] = {"json": "eval.json", "html": "eval.html", "atlas": "atlas.png", "rollout": "rollout.gif"}
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    (out / "eval.html").write_text(render_html(report, {"atlas": ("image/png", (out / "atlas.png").read_bytes()),
                                                        "rollout": ("image/gif", (out / "rollout.gif").read_bytes())}))
    report["out_dir"] = str(out)
    return report


def _data_uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _plot_png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    draw(ax)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _plots(report: dict) -> dict[str, bytes]:
    dyn, delta, lam = report["dynamics"], report["delta_psnr"], report["lam"]
    steps = [s["t"] for s in delta["per_step"]]

    def psnr_plot(ax):
        ax.plot(steps, dyn["psnr_per_step"], "o-", label="inferred actions")
        ax.plot(steps, dyn["psnr_per_step_random"], "s--", label="random actions")
        ax.set(xlabel="generated step t", ylabel="PSNR (dB)", title="Rollout PSNR per step")
        ax.legend()

    def delta_plot(ax):
        ax.fill_between(steps, [s["ci95"][0] for s in delta["per_step"]], [s["ci95"][1] for s in delta["per_step"]],
                        alpha=0.3, label="95 % bootstrap interval")
        ax.plot(steps, [s["value"] for s in delta["per_step"]], "o-", label="ΔtPSNR")
        ax.axhline(0, color="black", lw=0.8)
        ax.set(xlabel="generated step t", ylabel="dB", title="ΔtPSNR: inferred minus random actions")
        ax.legend()

    def usage_plot(ax):
        ax.bar(range(len(lam["counts"])), lam["counts"])
        ax.set(xlabel="latent action", ylabel="transitions", title="Latent action use on the validation windows")

    return {"psnr": _plot_png(psnr_plot), "delta": _plot_png(delta_plot), "usage": _plot_png(usage_plot)}


def _fmt(x, unit: str = "", digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}{unit}"


def _summary_rows(r: dict) -> list[tuple[str, str]]:
    d, fv, tr = r["delta_psnr"], r["fvd"], r["true_actions"]
    rows = [(f"ΔtPSNR at t = {d['t']}", f"{_fmt(d['value'], ' dB')} (95 % interval {_fmt(d['ci95'][0])} to "
                                       f"{_fmt(d['ci95'][1])})"),
            (f"dynamics PSNR at t = {d['t']}", _fmt(r["dynamics"]["psnr_per_step"][d["t"] - 1], " dB")),
            ("tokenizer reconstruction", f"PSNR {_fmt(r['tokenizer']['psnr'], ' dB')}, SSIM "
                                         f"{_fmt(r['tokenizer']['ssim'], '', 4)}"),
            ("FVD", _fmt(fv["value"], "", 1) + f" ({fv['clips']} clips of {fv['frames']} frames)"
             if fv.get("available") else f"unavailable: {fv['reason']}"),
            ("LAM codebook", f"{r['lam']['usage'] * 100:.0f} % of {r['lam']['num_actions']} actions used, "
                             f"perplexity {_fmt(r['lam']['perplexity'])}")]
    if tr["available"]:
        groups = [("true actions", tr)]
        if "effect_classes" in tr:
            groups.append((f"true effect classes ({', '.join(tr['effect_classes']['names'])})", tr["effect_classes"]))
        for label, g in groups:
            rows.append((f"latent vs {label}: NMI", f"{g['nmi']:.3f} over {g['transitions']} transitions "
                                                    f"(shuffled labels: {g['nmi_chance']:.3f})"))
            p = g["probe"]
            rows.append((f"probe of {label} from latent actions", (
                f"accuracy {p['accuracy']:.3f} (leave-one-clip-out over {p['clips']} clips); chance: the probe "
                f"with no latent information {p['constant']:.3f}, with shuffled latents {p['shuffled']:.3f}; "
                f"the most common label's share {p['best_constant']:.3f}")
                if "accuracy" in p else f"unavailable: {p['reason']}"))
    else:
        rows.append(("latent vs true actions", f"unavailable: {tr['reason']}"))
    return rows


def render_html(report: dict, images: dict[str, tuple[str, bytes]]) -> str:
    """The report as one HTML page with every picture inline (no external resource)."""
    e = html.escape
    plots = _plots(report)
    img = {k: _data_uri("image/png", v) for k, v in plots.items()} | {k: _data_uri(*v) for k, v in images.items()}
    table = "\n".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _summary_rows(report))
    sources = ", ".join(e(os.path.basename(s)) for s in report["data"][:6]) + (" …" if len(report["data"]) > 6 else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>genie-pipeline eval</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{text-align:left;padding:4px 10px;border-bottom:1px solid #ddd}}
img{{max-width:100%;image-rendering:pixelated}}figcaption{{color:#555;font-size:90%}}</style></head><body>
<h1>World model evaluation</h1>
<p>Checkpoint <code>{e(report["checkpoint"])}</code>; {report["clips"]} validation clips, one {report["frames"]}-frame
window each (seed {report["seed"]}), from {sources}.</p>
<table>{table}</table>
<h2>Dynamics</h2>
<p>From each clip's first frame the dynamics model generates {report["frames"] - 1} frames, once with the latent actions
the LAM infers from the true clip and once with uniformly random actions (same sampling noise). A model that responds to
actions scores higher with the inferred ones: ΔtPSNR above 0.</p>
<figure><img alt="PSNR per step" src="{img["psnr"]}"><img alt="delta PSNR per step" src="{img["delta"]}"></figure>
<figure><img alt="rollouts" src="{img["rollout"]}"><figcaption>Each row a clip: true frames, rollout with inferred
actions, rollout with random actions.</figcaption></figure>
<h2>Latent actions</h2>
<figure><img alt="action atlas" src="{img["atlas"]}"><figcaption>Action atlas: row k repeats latent action k
{ATLAS_STEPS} times from each start frame (start frame first).</figcaption></figure>
<figure><img alt="latent action use" src="{img["usage"]}"></figure>
</body></html>
"""
