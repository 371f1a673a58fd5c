"""The CoinRun world model on one GPU in one command, ready for a first short lease of a device.

    python benchmarks/world_model.py --scale gpu       # the same as: python benchmarks/world_model_gpu.py
    python benchmarks/world_model_gpu.py --smoke --results /tmp/smoke   # a few steps on CPU (the test suite)

On one H100/H200 the whole run takes at most ~10 minutes: CoinRun episodes rendered on every
CPU core (`--episodes` training + `--val-episodes` held-out ones, each its own level), a timed
probe of each phase, the `small` preset at 64×64 trained for `--minutes` (tokenizer, then
LAM + dynamics on it) with bf16 autocast, `torch.compile` (the probe falls back to eager if
compiling fails, and says so) and SDPA attention (flash kernels: bf16, no explicit mask),
then `eval` on 256 held-out windows. Writes benchmarks/results/world_model_gpu.json: tokens/s
and MFU per phase (FLOPs of one optimizer step counted by torch's FlopCounterMode, against the
card's dense bf16 peak), peak memory per phase, loss curves, and the eval's ΔtPSNR@4 against
another clip's actions (and uniform / most-frequent codes) and model vs copying the prompt per t.

`--smoke` runs the same code path on CPU with the `tiny` model, a handful of episodes and
steps, fp32 and no compile: it checks the script, not the numbers.

On this project's lent machines (Python 3.12 with torch, no registry) the packages it needs
beyond theirs travel as wheels (/work/.library/device/README.md): at least pydantic, av,
webdataset, procgen-mirror and gym3 (not checked on a device yet).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.world_model import RESULTS, episode_clip, summary_row, train_config, write_episodes  # noqa: E402

# the GPU run: GenieRedux/Jasmine's CoinRun scale at 64×64 and 16 frames, sized for minutes
GPU_RUN = {"model": "small", "batch_size": 32, "frames": 16, "resolution": [64, 64], "lr": 3e-4,
           "warmup_steps": 100, "overrides": {}, "precision": "bf16", "device": "cuda", "compile": True}
# the smoke run: the same path on CPU in seconds; one thread, since the test machine is shared and
# waiting threads spin (two threads made its eval of 2 clips take minutes under a load of ~13)
SMOKE_RUN = {"model": "tiny", "batch_size": 2, "frames": 4, "resolution": [64, 64], "lr": 3e-4,
             "warmup_steps": 1, "overrides": {}, "precision": "fp32", "device": "cpu", "compile": False,
             "threads": 1}
# dense bf16 peak of the cards this is meant for (NVIDIA data sheets, SXM): MFU's denominator
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
PHASES = ("tokenizer", "dynamics")


def peak_flops(device: str) -> tuple[str, float | None]:
    import torch

    if device != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def step_flops(run: dict, device: str) -> dict[str, float]:
    """FLOPs of one optimizer step of each phase at the run's batch (forward + backward, and
    phase 2's frozen tokenizer encode), counted by torch on freshly built models."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from genie_pipeline.models.tokenizer import VideoTokenizer
    from genie_pipeline.training.run import build_model_config
    from genie_pipeline.training.trainer import LamDynamics

    cfg = train_config(Path("."), Path("."), run, 0, 0)
    mcfg = build_model_config(cfg)
    h, w = run["resolution"]
    video = torch.rand(run["batch_size"], run["frames"], 3, h, w, device=device)
    dtype = torch.bfloat16 if run["precision"] == "bf16" else None
    tokenizer = VideoTokenizer(mcfg).to(device)
    pair = LamDynamics(mcfg).to(device)
    out = {}
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        with FlopCounterMode(display=False) as fc:
            tokenizer(video)["loss"].backward()
        out["tokenizer"] = float(fc.get_total_flops())
        with FlopCounterMode(display=False) as fc:
            with torch.no_grad():
                tokens = tokenizer.encode(video)
            pair(video, tokens)["loss"].backward()
        out["dynamics"] = float(fc.get_total_flops())
    del tokenizer, pair
    return out


def render(data: Path, args, workers: int) -> dict:
    """The episodes, rendered on `workers` processes, written as one committed output."""
    jobs = [(args.seed, i, args.frames_per_clip) for i in range(args.episodes + args.val_episodes)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            clips = list(pool.map(episode_clip, jobs, chunksize=8))
    else:
        clips = [episode_clip(j) for j in jobs]
    return write_episodes(data, args.episodes, args.frames_per_clip, args.seed, args.val_episodes, clips=clips)


def train_phase(data: Path, run_dir: Path, run: dict, phase: str, steps: int, tokenizer_ckpt: Path | None) -> dict:
    """One phase with `steps` steps; its summary, seconds and peak memory."""
    import torch

    from genie_pipeline.training.run import train_main

    cfg = train_config(data, run_dir, run, steps if phase == "tokenizer" else 0, steps if phase == "dynamics" else 0)
    # loader workers keep a GPU fed (decoding is CPU work); the smoke run decodes in-process
    workers = 0 if run["device"] == "cpu" else min(8, max(0, (os.cpu_count() or 1) - 2))
    cfg = cfg.model_copy(update={"log_every": max(1, min(25, steps // 4)), "num_workers": workers})
    if tokenizer_ckpt is not None:
        cfg = cfg.model_copy(update={"tokenizer_checkpoint": str(tokenizer_ckpt)})
    if run["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    summary = train_main(cfg, stage=phase, inputs=[str(data)])
    seconds = time.perf_counter() - t0
    p = summary["phases"][phase]
    peak = (torch.cuda.max_memory_allocated() if run["device"] == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"steps": p.get("steps"), "seconds": round(seconds, 1), "sec_per_step": p.get("sec_per_step"),
            "tokens_per_s": p.get("final_metrics", {}).get("tokens_per_s"), "first_loss": p.get("first_loss"),
            "final": p.get("final_metrics", {}),
            "peak_memory_bytes": int(peak), "peak_memory_what": ("torch.cuda.max_memory_allocated" if
                                                                 run["device"] == "cuda" else "process max RSS")}


def probe(data: Path, work: Path, run: dict, steps: int) -> tuple[dict, dict, str | None]:
    """Seconds per step of each phase at the run's settings; with compile on, a failure to
    compile falls back to eager (the returned run says which), with the error kept."""
    error = None
    for attempt in ([run, {**run, "compile": False}] if run["compile"] else [run]):
        try:
            tok = train_phase(data, work / "probe", attempt, "tokenizer", steps, None)
            dyn = train_phase(data, work / "probe", attempt, "dynamics", steps,
                              work / "probe" / "checkpoints" / "tokenizer" / "latest.pt")
            return {"tokenizer": tok["sec_per_step"], "dynamics": dyn["sec_per_step"]}, attempt, error
        except Exception as e:  # noqa: BLE001 — inductor raises many types; the run goes on eagerly
            if not attempt["compile"]:
                raise
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            print(f"[world_model_gpu] torch.compile failed, eager instead: {error}", flush=True)
            shutil.rmtree(work / "probe", ignore_errors=True)
    raise AssertionError("unreachable")


def loss_curves(run_dir: Path, points: int = 200) -> dict:
    """Each phase's training loss by step from the run's metrics.csv (at most `points` each)."""
    curves: dict[str, dict[str, list]] = {}
    with open(run_dir / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["name"] == "loss":
                c = curves.setdefault(row["phase"], {"step": [], "loss": []})
                c["step"].append(int(row["step"]))
                c["loss"].append(round(float(row["value"]), 5))
    for c in curves.values():
        stride = max(1, len(c["step"]) // points)
        c["step"], c["loss"] = c["step"][::stride], c["loss"][::stride]
    return curves


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="a few steps of the tiny model on CPU: checks the script")
    ap.add_argument("--minutes", type=float, default=None, help="training budget, both phases (GPU default 4)")
    ap.add_argument("--tokenizer-share", type=float, default=0.3)
    ap.add_argument("--episodes", type=int, default=None, help="training episodes (GPU default 2000)")
    ap.add_argument("--val-episodes", type=int, default=None, help="held-out episodes (GPU default 256)")
    ap.add_argument("--frames-per-clip", type=int, default=None)
    ap.add_argument("--eval-clips", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="work dir (default: a temporary one, removed)")
    ap.add_argument("--results", default=str(RESULTS), help="where world_model_gpu.json goes")
    args = ap.parse_args(argv)
    smoke = args.smoke
    defaults = ({"minutes": 0.02, "episodes": 4, "val_episodes": 2, "frames_per_clip": 16, "eval_clips": 2} if smoke
                else {"minutes": 4.0, "episodes": 2000, "val_episodes": 256, "frames_per_clip": 64, "eval_clips": 256})
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    import torch

    from genie_pipeline.training.eval import run_eval

    run = dict(SMOKE_RUN if smoke else GPU_RUN)
    if run["device"] == "cuda" and not torch.cuda.is_available():
        ap.error("--scale gpu needs a CUDA device (use --smoke to check the script on CPU)")
    t_start = time.perf_counter()
    work = Path(args.out or f"/tmp/world_model_gpu_{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    data = work / "coinrun"
    workers = 1 if smoke else max(1, (os.cpu_count() or 1) - 1)
    t0 = time.perf_counter()
    data_info = render(data, args, workers)
    data_info["seconds_to_render"] = round(time.perf_counter() - t0, 1)
    print(f"[world_model_gpu] {data_info['splits']} episodes in {data_info['seconds_to_render']} s", flush=True)

    probe_s, run, compile_error = probe(data, work, run, steps=3 if smoke else 20)
    budget = args.minutes * 60
    lo, hi = (2, 4) if smoke else (50, 10**6)
    steps = {"tokenizer": int(min(hi, max(lo, budget * args.tokenizer_share / probe_s["tokenizer"]))),
             "dynamics": int(min(hi, max(lo, budget * (1 - args.tokenizer_share) / probe_s["dynamics"])))}
    print(f"[world_model_gpu] probe {probe_s} s/step → {steps} steps", flush=True)
    flops = step_flops(run, run["device"])
    card, peak = peak_flops(run["device"])
    run_dir = work / "run"
    phases = {"tokenizer": train_phase(data, run_dir, run, "tokenizer", steps["tokenizer"], None)}
    phases["dynamics"] = train_phase(data, run_dir, run, "dynamics", steps["dynamics"],
                                     run_dir / "checkpoints" / "tokenizer" / "latest.pt")
    for name, p in phases.items():
        p["flops_per_step"] = flops[name]
        achieved = flops[name] / p["sec_per_step"] if p.get("sec_per_step") else None
        p["achieved_flops_per_s"] = achieved
        p["mfu"] = achieved / peak if achieved and peak else None
    t0 = time.perf_counter()
    report = run_eval(str(run_dir), data=[str(data)], out_dir=str(work / "eval"), clips=args.eval_clips,
                      seed=args.seed, device=run["device"], batch=2 if smoke else 128)
    eval_s = time.perf_counter() - t0
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "smoke": smoke,
        "machine": {"device": card, "peak_bf16_flops": peak, "cpus": os.cpu_count(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "run": run, "compile_error": compile_error, "budget_minutes": args.minutes,
        "data": data_info, "probe_sec_per_step": probe_s, "steps": steps,
        "phases": phases, "loss_curves": loss_curves(run_dir),
        "eval_seconds": round(eval_s, 1),
        "eval": {label: summary_row(report, label) for label in report["samplers"]},
        "wall_seconds": round(time.perf_counter() - t_start, 1),
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world_model_gpu.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)
    d = result["eval"][report["default_sampler"]]
    mfu = {k: (f"{v['mfu']:.1%}" if v["mfu"] else "n/a") for k, v in phases.items()}
    print(f"[world_model_gpu] {result['wall_seconds']:.0f} s; tokens/s "
          f"{ {k: round(v['tokens_per_s'] or 0) for k, v in phases.items()} }, MFU {mfu}; ΔtPSNR@4 vs another "
          f"clip's actions {d['delta_psnr_t4']['shuffled']['value']:.2f} dB ({d['sampler']}) "
          f"→ {out / 'world_model_gpu.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
