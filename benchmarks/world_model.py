"""Controllability of a Genie trained on CPU: CoinRun episodes with true actions → our shards →
the smallest model that learns in a fixed CPU budget → `eval`.

    python benchmarks/world_model.py [--minutes 30] [--episodes 80] [--val-episodes 256] [--scale cpu|gpu] [--out DIR]

Data: procgen CoinRun (the paper's agent study, GenieRedux's benchmark) at its native 64×64
observation, one frame per environment step, the random agent of the sample corpus (biased
right/jump), episodes of `--frames-per-clip` steps written as clips at 10 FPS in our own format
(shards/ writer and commit, with each clip's `true_actions`, `action_space` procgen:coinrun:15).
`--val-episodes` more are held out, each on its own level. Training: `train_main` on those shards with the `--scale`
preset; the step counts are chosen from a timed probe so that both phases fit `--minutes` of
this machine. Then `run_eval` on the validation split: tokenizer PSNR/SSIM, rollout PSNR per
step, ΔtPSNR with its bootstrap interval, LAM usage, the action atlas and latent vs true actions
(NMI against shuffled labels, a per-code majority vote cross-validated over clips against its chance levels; also
against CoinRun's effect classes, true ids with the same effect, labelled as such). Then
`whole_val_episodes`: the LAM's actions against the true ones over every transition of the
validation episodes, beside the same scores for the camera's motion between the frames (the
CoinRun view follows the agent): how much of the true action is visible at all. FVD needs I3D
weights (`--i3d`), none ship here.

`--scale gpu` is benchmarks/world_model_gpu.py: the `small` preset on one GPU in ≤ 10 minutes
(bf16, torch.compile, tokens/s, MFU, peak memory, loss curves, eval) → world_model_gpu.json.

Writes benchmarks/results/world_model.json (+ world_model_atlas.png, world_model_rollout.gif).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = ROOT / "benchmarks" / "results"
ACTION_SPACE = "procgen:coinrun:15"

# the smallest configuration that learns in the CPU budget (tiny ST blocks, 64×64, 16-frame windows)
CPU_PRESET = {"model": "tiny", "batch_size": 8, "frames": 16, "resolution": [64, 64], "lr": 3e-4,
              "warmup_steps": 20, "overrides": {}}


def coinrun_episode(seed: int, frames: int) -> tuple[np.ndarray, list[int]]:
    """(frames, 64, 64, 3) uint8 observations and the action taken after each frame."""
    from genie_pipeline.corpus.render import CoinRunAgent, quiet_fds

    with quiet_fds():
        agent = CoinRunAgent(seed, level=seed)
    obs, acts = [], []
    for _ in range(frames):
        obs.append(np.asarray(agent.env.observe()[1]["rgb"][0], dtype=np.uint8))
        agent.step()
        acts.append(int(agent.last_action))
    return np.stack(obs), acts


def episode_seed(seed: int, i: int) -> int:
    """The environment seed (and level) of episode `i` of a benchmark run seeded `seed`."""
    return seed * 10_007 + i


def clip_spec(frames: int):
    from genie_pipeline.shards.config import ClipsConfig

    return ClipsConfig(width=64, height=64, fps=10, seconds=frames / 10)


def episode_clip(job: tuple[int, int, int]) -> tuple[bytes, list[int]]:
    """(seed, i, frames) -> episode i as an encoded clip and its actions (a process pool's job)."""
    from genie_pipeline.shards.clip import encode_clip

    seed, i, frames = job
    clips = clip_spec(frames)
    obs, acts = coinrun_episode(episode_seed(seed, i), clips.spec.frames)
    return encode_clip(obs, clips.spec), acts


def write_episodes(out: Path, episodes: int, frames: int, seed: int, val_episodes: int = 0,
                   clips: list[tuple[bytes, list[int]]] | None = None) -> dict:
    """Episodes as one committed ingest output (one clip per episode, 10 FPS, 64×64): the
    first `episodes` for training, then `val_episodes` held out (their own levels: each
    episode's level is its seed). With `val_episodes=0` every 6th episode is held out.
    `clips`: the episodes already rendered (`episode_clip`), else rendered here."""
    from genie_pipeline.shards.config import ShardsConfig
    from genie_pipeline.shards.records import Candidate, ClipRow, VideoResult, clip_key, video_key
    from tests.fixtures.output import write_output

    cfg = clip_spec(frames)
    spec = cfg.spec
    videos, candidates, counts = [], [], {}
    for i in range(episodes + val_episodes):
        data, acts = clips[i] if clips is not None else episode_clip((seed, i, frames))
        held_out = i >= episodes if val_episodes else i % 6 == 5
        vid, split = f"coinrun{i:04d}", ("val" if held_out else "train")
        vk = video_key("coinrun", vid)
        row = ClipRow(key=clip_key(vk, 0), video_key=vk, video_id=vid, source="coinrun", title=f"CoinRun {i}",
                      start_s=0.0, duration_s=cfg.seconds, n_frames=spec.frames, bytes=len(data), split=split,
                      true_actions=acts[:-1], action_space=ACTION_SPACE)
        videos.append((VideoResult(video_key=vk, video_id=vid, source="coinrun", title=row.title, status="done",
                                   clips=[row], split=split, seconds_in=cfg.seconds, seconds_out=cfg.seconds),
                       [(row.key, data)]))
        candidates.append(Candidate(source="coinrun", video_id=vid, title=row.title, duration_s=cfg.seconds,
                                    keyword_verdict="keep"))
        counts[split] = counts.get(split, 0) + 1
        for a in acts[:-1]:
            counts.setdefault("actions", {}).setdefault(a, 0)
            counts["actions"][a] += 1
    write_output(out, videos, candidates, spec, ShardsConfig(max_clips=8))
    return {"episodes": episodes, "frames_per_episode": spec.frames, "splits": {k: v for k, v in counts.items()
            if k != "actions"}, "true_action_histogram": dict(sorted(counts["actions"].items()))}


def train_config(data: Path, run: Path, preset: dict, tok_steps: int, dyn_steps: int, threads: int = 0):
    """The trainer's config for both phases; `threads` 0: the preset's, else every core."""
    from genie_pipeline.training.config import TrainConfig

    keys = {k: v for k, v in preset.items() if k not in ("tokenizer_steps", "dynamics_steps", "threads")}
    return TrainConfig(**keys, data=[str(data)], out_dir=str(run), tokenizer_steps=tok_steps,
                       dynamics_steps=dyn_steps, num_workers=0, checkpoint_every=max(tok_steps, dyn_steps, 1),
                       sample_every=max(tok_steps, dyn_steps, 1), log_every=25,
                       threads=threads or preset.get("threads") or os.cpu_count() or 1)


def probe_step_seconds(data: Path, tmp: Path, preset: dict, steps: int = 12, threads: int = 0) -> tuple[float, float]:
    """Seconds per optimizer step of each phase on this machine: the trainer's own steady-state
    step time (warm-up steps dropped) over a short run of both phases."""
    from genie_pipeline.training.run import train_main

    summary = train_main(train_config(data, tmp / "probe", preset, steps, steps, threads), stage="all",
                         inputs=[str(data)])
    return tuple(float(summary["phases"][p]["sec_per_step"]) for p in ("tokenizer", "dynamics"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="CPU budget for both training phases")
    ap.add_argument("--episodes", type=int, default=80, help="training episodes")
    ap.add_argument("--val-episodes", type=int, default=256, help="held-out episodes (eval reads one window each)")
    ap.add_argument("--frames-per-clip", type=int, default=64)
    ap.add_argument("--scale", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--tokenizer-share", type=float, default=0.35, help="share of the budget for phase 1")
    ap.add_argument("--steps", type=int, nargs=2, default=None, metavar=("TOKENIZER", "DYNAMICS"),
                    help="fixed step counts instead of the timed probe")
    ap.add_argument("--i3d", default=None, help="I3D weights for FVD (a local file)")
    ap.add_argument("--eval-clips", type=int, default=256)
    ap.add_argument("--out", default=None, help="work dir (default: a temporary one, removed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: every core); 1 on a machine other jobs share: threads that wait "
                         "for a descheduled sibling spin, and a step then costs many times its CPU")
    ap.add_argument("--keep-bias", type=float, default=None,
                    help="evaluate with this dynamics.keep_bias instead of the model's (e.g. --eval-only on a model "
                         "trained before the default changed)")
    ap.add_argument("--eval-only", action="store_true",
                    help="re-run only eval on the model trained in --out; the training numbers are that run's "
                         "(its run.json), the rest of the committed result is kept")
    argv = list(sys.argv[1:] if argv is None else argv)
    if ap.parse_known_args(argv)[0].scale == "gpu":  # the GPU run has its own script and flags
        from benchmarks.world_model_gpu import main as gpu_main

        return gpu_main([a for a in argv if a not in ("--scale", "gpu", "--scale=gpu")])
    args = ap.parse_args(argv)
    if args.eval_only:
        if not args.out:
            ap.error("--eval-only needs --out, the work dir of an earlier run")
        result = json.loads((RESULTS / "world_model.json").read_text())
        run_json = json.loads((Path(args.out) / "run" / "run.json").read_text())
        summary = run_json.get("summary", {})
        if summary.get("phases"):  # the run evaluated may not be the one committed: its own training
            phases = phases_of(summary)
            result["training"] = {"tokenizer_steps": phases["tokenizer"]["steps"],
                                  "dynamics_steps": phases["dynamics"]["steps"],
                                  "seconds": round(sum(p.get("seconds", 0) for p in summary["phases"].values()), 1),
                                  "phases": phases, "from": f"{args.out}/run/run.json (--eval-only)"}
            result["date"] = run_json.get("created", result.get("date"))
        return evaluate(Path(args.out), args, result)

    import torch

    from genie_pipeline.training.run import train_main

    work = Path(args.out or f"/tmp/world_model_{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    data, run = work / "coinrun", work / "run"
    t0 = time.perf_counter()
    data_info = write_episodes(data, args.episodes, args.frames_per_clip, args.seed, args.val_episodes)
    data_s = time.perf_counter() - t0
    print(f"[world_model] {args.episodes} CoinRun episodes in {data_s:.0f} s → {data}", flush=True)

    preset = CPU_PRESET
    if args.steps:
        (tok_steps, dyn_steps), probe = args.steps, None
    else:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        tok_s, dyn_s = probe_step_seconds(data, work / "probe", preset, threads=args.threads)
        budget = args.minutes * 60
        tok_steps = int(budget * args.tokenizer_share / tok_s)
        dyn_steps = int(budget * (1 - args.tokenizer_share) / dyn_s)
        probe = {"tokenizer_s_per_step": round(tok_s, 3), "dynamics_s_per_step": round(dyn_s, 3)}
        print(f"[world_model] probe {probe} → {tok_steps} tokenizer + {dyn_steps} dynamics steps", flush=True)
    t1 = time.perf_counter()
    summary = train_main(train_config(data, run, preset, tok_steps, dyn_steps, args.threads), stage="all",
                         inputs=[str(data)])
    train_s = time.perf_counter() - t1
    phases = phases_of(summary)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": {"cpus": os.cpu_count(), "threads": args.threads or os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "loadavg_end": list(os.getloadavg())},
        "scale": args.scale, "preset": preset, "budget_minutes": None if args.steps else args.minutes,
        "data": {**data_info, "action_space": ACTION_SPACE, "seconds_to_render": round(data_s, 1)},
        "probe": probe,
        "training": {"tokenizer_steps": tok_steps, "dynamics_steps": dyn_steps, "seconds": round(train_s, 1),
                     "phases": phases},
        "files": {"atlas": "world_model_atlas.png", "rollout": "world_model_rollout.gif"},
        "goals": {"delta_psnr_t4_ci_above_0": "ΔtPSNR@4 against another clip's actions with its 95 % interval "
                                              "above 0",
                  "beats_copying": "rollout PSNR above copying the prompt frame at every t = 1..4",
                  "nmi_well_above_chance": "latent-vs-true NMI well above nmi_chance (shuffled true actions)",
                  "motion_above_control": "motion agreement of the class codes above the shuffled-code control"},
    }
    evaluate(work, args, result)
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def camera_shift(video_BTCHW, reach: int = 8):
    """(dy, dx) in pixels that the picture moved by in each transition, (B, T-1, 2): the shift
    under which frame t+1 best matches the centre of frame t (least squared error over shifts
    up to `reach` pixels). CoinRun's camera follows the agent, so this is its visible motion."""
    import torch

    B, T, C, H, W = video_BTCHW.shape
    centre_BTCHW = video_BTCHW[:, :-1, :, reach:H - reach, reach:W - reach]
    shifts = [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)]
    err_SBT = torch.stack([((video_BTCHW[:, 1:, :, reach + dy:H - reach + dy, reach + dx:W - reach + dx]
                              - centre_BTCHW) ** 2).mean(dim=(2, 3, 4)) for dy, dx in shifts])
    return torch.tensor(shifts)[err_SBT.argmin(0)]


def whole_episodes(work: Path, args) -> dict:
    """Latent against true actions over every transition of the validation episodes (eval
    reads one 16-frame window per clip), and the same scores for a reference that needs no
    learning: the camera's motion between the frames (`camera_shift`) in as many k-means
    clusters as the LAM has actions: what a LAM that had learned the camera's motion and
    nothing else would score against the true actions."""
    import torch
    from sklearn.cluster import KMeans

    from genie_pipeline.training.bundle import load_genie
    from genie_pipeline.training.eval import eval_shards, infer_actions, latent_vs_true, read_windows

    genie = load_genie(str(work / "run"), "cpu")
    w = read_windows(eval_shards(None, [str(work / "coinrun")]), genie.cfg.image_height, genie.cfg.image_width,
                     clips=args.val_episodes, seed=args.seed, frames=args.frames_per_clip)
    with torch.no_grad():
        latent_BA = torch.cat([infer_actions(genie.lam, w.video_BTCHW[i:i + 8], genie.cfg.frames)
                               for i in range(0, len(w.keys), 8)])
    shift_BA2 = camera_shift(w.video_BTCHW)
    k = genie.cfg.lam.num_actions
    motion_BA = torch.from_numpy(KMeans(k, n_init=4, random_state=args.seed).fit(
        shift_BA2.flatten(0, 1).float().numpy()).labels_.astype("int64")).view(shift_BA2.shape[:2])
    return {"clips": len(w.keys), "frames": w.video_BTCHW.shape[1],
            "lam": latent_vs_true(latent_BA, w.true_actions_BA, w.action_spaces),
            "camera_motion_reference": {
                "what": f"{k} k-means clusters of the global (dy, dx) shift between consecutive frames, "
                        "scored as if they were latent actions",
                **latent_vs_true(motion_BA, w.true_actions_BA, w.action_spaces)}}


def summary_row(report: dict, sampler: str | None = None) -> dict:
    """The numbers an ablation compares, from one eval report and one of its samplers."""
    label = sampler or report["default_sampler"]
    s = report["samplers"][label]
    bound = report["tokenizer_bound"]
    detail = s["sampler"].get("prompt_detail", False)
    return {"sampler": label, "clips": report["clips"],
            "psnr_t1_4": [round(x, 2) for x in s["dynamics"]["psnr_per_step"][:4]],
            "copy_prompt_t1_4": [round(x, 2) for x in report["copy_prompt"]["psnr_per_step"][:4]],
            # the bound as this sampler's frames are shown: with prompt detail or the decoder's alone
            "tokenizer_bound_t1_4": [round(x, 2) for x in (bound["psnr_per_step"] if detail else bound.get(
                "decoded_only_psnr_per_step", bound["psnr_per_step"]))[:4]],
            "delta_psnr_t4": {k: {"value": round(v["value"], 2), "ci95": [round(c, 2) for c in v["ci95"]]}
                              for k, v in s["delta_psnr"]["against"].items()},
            "model_minus_copy_t1_4": [{"value": round(m["value"], 2), "ci95": [round(c, 2) for c in m["ci95"]]}
                                      for m in s["model_minus_copy"][:4]],
            "tokenizer_psnr": round(report["tokenizer"]["psnr"], 2)}


def motion(work: Path, args, prompts: int = 64) -> dict:
    """Controllability by motion (benchmarks/coinrun_motion.py) from the first `prompts`
    validation episodes, under the model config's sampler and greedy."""
    from benchmarks.coinrun_motion import class_codes, motion_confusion
    from genie_pipeline.training.bundle import load_genie

    genie = load_genie(str(work / "run"), "cpu", eval_sampler(args))
    codes = class_codes(genie, work / "coinrun", args.episodes, args.frames_per_clip, args.seed)
    seeds = [episode_seed(args.seed, args.episodes + i) for i in range(min(prompts, args.val_episodes))]
    return {"default_sampler": motion_confusion(genie, codes, seeds, args.frames_per_clip, seed=args.seed),
            "greedy": motion_confusion(genie, codes, seeds, args.frames_per_clip, seed=args.seed,
                                       sampler={"greedy": True})}


def phases_of(summary: dict) -> dict:
    """Each training phase's steps, first loss, seconds per step and final metrics, from the
    trainer's summary (train_main's return, or run.json's `summary`)."""
    return {name: {"steps": p.get("steps"), "first_loss": p.get("first_loss"), "sec_per_step": p.get("sec_per_step"),
                   "final": p.get("final_metrics", {})} for name, p in summary["phases"].items()}


def eval_sampler(args) -> dict | None:
    """The sampling settings --keep-bias puts over the model's stored ones (None: the model's)."""
    return None if getattr(args, "keep_bias", None) is None else {"keep_bias": args.keep_bias}


def evaluate(work: Path, args, result: dict) -> int:
    """`eval` on the model in `work`/run over the validation episodes; the report into `result`,
    written to benchmarks/results/world_model.json with the atlas and rollout beside it."""
    from genie_pipeline.training.eval import run_eval

    t0 = time.perf_counter()
    report = run_eval(str(work / "run"), data=[str(work / "coinrun")], out_dir=str(work / "eval"), i3d=args.i3d,
                      clips=args.eval_clips, seed=args.seed, sampler=eval_sampler(args))
    result.pop("eval_sampler", None)  # --eval-only starts from the committed result
    if eval_sampler(args):
        result["eval_sampler"] = {**eval_sampler(args), "note": "replaces the setting stored with the model"}
    result["eval_seconds"] = round(time.perf_counter() - t0, 1)
    result["eval_date"] = time.strftime("%Y-%m-%d %H:%M")
    result["eval"] = {k: v for k, v in report.items() if k not in ("files", "out_dir")}
    result["whole_val_episodes"] = whole_episodes(work, args)
    result["motion"] = motion(work, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name, dest in (("atlas.png", "world_model_atlas.png"), ("rollout.gif", "world_model_rollout.gif")):
        src = Path(report["out_dir"]) / name
        if src.exists():
            shutil.copyfile(src, RESULTS / dest)
    (RESULTS / "world_model.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    d, t = result["eval"]["delta_psnr"], result["eval"]["true_actions"]
    e = t.get("effect_classes", {})
    wl, wm = result["whole_val_episodes"]["lam"], result["whole_val_episodes"]["camera_motion_reference"]
    if wl.get("available", True) and "nmi" in wl:
        print(f"[world_model] whole val episodes ({wl['transitions']} transitions): NMI vs true ids LAM "
              f"{wl['nmi']:.3f}, camera motion {wm['nmi']:.3f}, shuffled {wl['nmi_chance']:.3f}")
    m = result["motion"]["default_sampler"]
    print(f"[world_model] ΔtPSNR@{d['t']} vs another clip's actions {d['value']:.2f} dB (95 % {d['ci95'][0]:.2f} to "
          f"{d['ci95'][1]:.2f}), sampler {result['eval']['default_sampler']}; NMI vs true ids "
          f"{t.get('nmi', float('nan')):.3f} (shuffled {t.get('nmi_chance', float('nan')):.3f}); vs effect classes "
          f"NMI {e.get('nmi', float('nan')):.3f} (shuffled {e.get('nmi_chance', float('nan')):.3f}); motion "
          f"agreement {m['model']['accuracy']:.2f} (shuffled codes {m['shuffled_codes']['accuracy']:.2f}) "
          f"→ {RESULTS / 'world_model.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
