"""Ablations of the CoinRun world model (benchmarks/world_model.py's data and eval) on a fixed
CPU step budget: one tokenizer, then phase 2 (LAM + dynamics) once per variant on top of it,
then `eval` of each on the same held-out windows; and the sampler (greedy, temperature,
MaskGIT steps) swept on the default variant, which needs no training.

    python benchmarks/world_model_ablation.py --out /tmp/wm_ablate [--tokenizer-steps 1200]
        [--dynamics-steps 2000] [--variants add prepend lam_vq] [--eval-only]

Writes benchmarks/results/world_model_ablation.json. The budget is stated in the file: a
reduced one is a reduced one (the CPU is shared), and only differences measured on the same
budget, data and windows are compared.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.world_model import CPU_PRESET, RESULTS, summary_row, train_config, write_episodes  # noqa: E402

# phase-2 variants: model overrides on top of CPU_PRESET (the tokenizer is shared)
VARIANTS = {
    "add": {},  # the preset: additive action embeddings, FSQ LAM, decoder sees x_t
    "prepend": {"dynamics.action_mode": "prepend"},  # Jasmine's choice on CoinRun
    "lam_vq": {"lam.quantizer": "vq"},  # the paper's VQ instead of FSQ
    "lam_decoder_past": {"lam.decoder_past": True},  # the LAM decoder sees x_1..x_t (the paper's view)
    "dyn_wide": {"dynamics.st.dim": 128},  # a wider dynamics model on the same tokenizer
}
# samplers swept on the default variant's model: (label, eval keyword arguments)
SAMPLERS = {"greedy/4 steps": {"greedy": True, "steps": 4}, "T=0.5/4 steps": {"temperature": 0.5, "steps": 4},
            "T=1/4 steps": {"temperature": 1.0, "steps": 4}, "T=2/4 steps": {"temperature": 2.0, "steps": 4},
            "greedy/8 steps": {"greedy": True, "steps": 8}, "T=1/8 steps": {"temperature": 1.0, "steps": 8}}


def train_variants(work: Path, args) -> dict:
    from genie_pipeline.training.run import train_main

    data = work / "coinrun"
    info: dict = {}
    if not (data / "stats.json").exists():
        t0 = time.perf_counter()
        info["data"] = write_episodes(data, args.episodes, args.frames_per_clip, args.seed, args.val_episodes)
        info["data"]["seconds_to_render"] = round(time.perf_counter() - t0, 1)
    tok_run = work / "tokenizer"
    if not (tok_run / "checkpoints" / "tokenizer" / "latest.pt").exists():
        t0 = time.perf_counter()
        s = train_main(train_config(data, tok_run, CPU_PRESET, args.tokenizer_steps, 0), stage="tokenizer",
                       inputs=[str(data)])
        info["tokenizer"] = {"seconds": round(time.perf_counter() - t0, 1),
                             "final": s["phases"]["tokenizer"].get("final_metrics", {})}
    for name in args.variants:
        run = work / name
        if (run / "genie.pt").exists():
            continue
        preset = {**CPU_PRESET, "overrides": VARIANTS[name]}
        cfg = train_config(data, run, preset, 0, args.dynamics_steps).model_copy(
            update={"tokenizer_checkpoint": str(tok_run / "checkpoints" / "tokenizer" / "latest.pt")})
        t0 = time.perf_counter()
        s = train_main(cfg, stage="dynamics", inputs=[str(data)])
        info[name] = {"seconds": round(time.perf_counter() - t0, 1),
                      "sec_per_step": s["phases"]["dynamics"].get("sec_per_step"),
                      "final": s["phases"]["dynamics"].get("final_metrics", {})}
        print(f"[ablation] {name} trained in {info[name]['seconds']} s", flush=True)
    (work / "training.json").write_text(json.dumps(info, indent=2, default=float))
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="work dir (kept: later calls reuse its data and models)")
    ap.add_argument("--episodes", type=int, default=80)
    ap.add_argument("--val-episodes", type=int, default=256)
    ap.add_argument("--frames-per-clip", type=int, default=64)
    ap.add_argument("--tokenizer-steps", type=int, default=1200)
    ap.add_argument("--dynamics-steps", type=int, default=2000)
    ap.add_argument("--variants", nargs="+", default=["add", "prepend"], choices=sorted(VARIANTS))
    ap.add_argument("--eval-clips", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if not args.eval_only:
        train_variants(work, args)
    if args.train_only:
        return 0
    return evaluate_variants(work, args)


def evaluate_variants(work: Path, args) -> int:
    import torch

    from genie_pipeline.training.eval import run_eval

    training = json.loads((work / "training.json").read_text()) if (work / "training.json").exists() else {}
    rows = []
    for name in args.variants:
        t0 = time.perf_counter()
        r = run_eval(str(work / name), data=[str(work / "coinrun")], out_dir=str(work / name / "eval"),
                     clips=args.eval_clips, seed=args.seed)
        rows.append({"variant": name, "overrides": VARIANTS[name], "eval_seconds": round(time.perf_counter() - t0, 1),
                     **summary_row(r)})
        print(f"[ablation] {rows[-1]}", flush=True)
    # every sampler in one eval of the default variant: the same windows, the same noise per sampler
    r = run_eval(str(work / args.variants[0]), data=[str(work / "coinrun")],
                 out_dir=str(work / args.variants[0] / "eval-samplers"), clips=args.eval_clips, seed=args.seed,
                 samplers=SAMPLERS)
    samplers = [summary_row(r, label) for label in SAMPLERS]
    for row in samplers:
        print(f"[ablation] {row}", flush=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "loadavg_end": list(os.getloadavg()),
                          "note": "a 2-core machine shared with other jobs: wall times are not comparable"},
              "budget": {"tokenizer_steps": args.tokenizer_steps, "dynamics_steps": args.dynamics_steps,
                         "note": "reduced budget: below the 30-minute CPU benchmark's 2775 + 4923 steps"},
              "preset": CPU_PRESET, "training": training, "variants": rows, "samplers": samplers}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "world_model_ablation.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
