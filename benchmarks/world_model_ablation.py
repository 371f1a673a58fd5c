"""Ablations of the CoinRun world model (benchmarks/world_model.py's data and eval) on a fixed
CPU step budget: one tokenizer, then phase 2 (LAM + dynamics) once per variant on top of it,
then `eval` of each on the same held-out windows; and the sampler (greedy, temperature,
MaskGIT steps) swept on the default variant, which needs no training.

    python benchmarks/world_model_ablation.py --out /tmp/wm_ablate [--tokenizer-steps 1200]
        [--dynamics-steps 2000] [--variants add prepend lam_vq] [--eval-only]
    python benchmarks/world_model_ablation.py --run /tmp/wm/run --out /tmp/wm   # the sampler sweep only,
        on a model world_model.py trained (--out /tmp/wm): its data, its held-out windows
    python benchmarks/world_model_ablation.py --out /tmp/wm_ablate --variants lam_vq --add-to-results
        # one more variant (trained on the same tokenizer) into the committed table: its row
        replaces a row of that name, the other rows and the sampler sweep stay as they were
    python benchmarks/world_model_ablation.py --run /tmp/wm/run --out /tmp/wm --keep-bias 0 1 2 4 8
        # the sampler's keep bias (dynamics.keep_bias) chosen on 128 episodes of levels neither
        trained on nor in the table (rendered into --out/coinrun-tune), then the choice and 0
        measured on the table's windows; both go into the table under `keep_bias`
    python benchmarks/world_model_ablation.py --smoke --out /tmp/smoke --results /tmp/smoke   # every
        variant and sampler for a couple of steps on CPU (the test suite): checks the script

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

from benchmarks.world_model import (  # noqa: E402
    CPU_PRESET, RESULTS, episode_clip, summary_row, train_config, write_episodes)
from genie_pipeline.models.config import KEEP_BIAS_MAX  # noqa: E402
from genie_pipeline.training.controllability import sampler_label  # noqa: E402

# phase-2 variants: model overrides on top of CPU_PRESET (the tokenizer is shared)
VARIANTS = {
    "add": {},  # the preset: additive action embeddings, FSQ LAM, decoder sees x_t
    "prepend": {"dynamics.action_mode": "prepend"},  # Jasmine's choice on CoinRun
    "lam_vq": {"lam.quantizer": "vq"},  # the paper's VQ instead of FSQ
    "lam_decoder_past": {"lam.decoder_past": True},  # the LAM decoder sees x_1..x_t (the paper's view)
    "dyn_wide": {"dynamics.st.dim": 128},  # a wider dynamics model on the same tokenizer
}
# samplers swept on the default variant's model (eval keyword arguments, labelled as eval labels
# them): the temperature at the preset's 4 MaskGIT steps (greedy is T = 0), then more steps; all
# with prompt detail (the preset's), and the preset's temperature and greedy without it
SAMPLER_GRID = [(True, 0.0, 4, True), (False, 0.5, 4, True), (False, 1.0, 4, True), (False, 2.0, 4, True),
                (True, 0.0, 4, False), (False, 0.5, 4, False),
                (True, 0.0, 8, True), (False, 0.5, 8, True), (False, 1.0, 8, True),
                (True, 0.0, 16, True), (False, 0.5, 16, True), (False, 1.0, 16, True)]
SAMPLERS = {sampler_label(g, t, n, d): {**({"greedy": True} if g else {"temperature": t}), "steps": n,
                                        "prompt_detail": d}
            for g, t, n, d in SAMPLER_GRID}
# the keep bias is chosen on episodes of their own levels, after the training and table ones
TUNE_EPISODES = 128
KEEP_RULE = ("the bias whose worst step t = 1..4 of model minus copying the prompt is highest on the tuning "
             "episodes, among those whose ΔtPSNR@4 against another clip's actions has its 95 % interval above 0")
SMOKE = {"episodes": 4, "val_episodes": 2, "frames_per_clip": 16, "tokenizer_steps": 2, "dynamics_steps": 2,
         "eval_clips": 2}


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
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS), metavar="LABEL",
                    help=f"the samplers swept (default all: {', '.join(SAMPLERS)})")
    ap.add_argument("--run", default=None,
                    help="sweep the samplers only, on this trained run (world_model.py --out's run dir; "
                         "--out is that work dir, whose coinrun/ data it reads)")
    ap.add_argument("--eval-clips", type=int, default=256)
    ap.add_argument("--tune-episodes", type=int, default=TUNE_EPISODES,
                    help="with --keep-bias: episodes of new levels the bias is chosen on")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="every variant and sampler, a couple of steps of each on CPU: checks the script")
    ap.add_argument("--results", default=str(RESULTS), help="where world_model_ablation.json goes")
    ap.add_argument("--add-to-results", action="store_true",
                    help="evaluate --variants only and put their rows into the existing table (no sampler sweep)")
    ap.add_argument("--keep-bias", type=float, nargs="+", default=None, metavar="B",
                    help="with --run: choose dynamics.keep_bias among these on tuning episodes, then measure the "
                         "choice and 0 on the table's windows, at the model's temperature and MaskGIT steps")
    ap.add_argument("--resweep", action="store_true",
                    help="with --add-to-results: the sampler sweep again too, on the first of --variants "
                         "(e.g. after a change to how rollouts are scored), replacing the table's")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.variants = list(VARIANTS)
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.keep_bias and not args.run:
        ap.error("--keep-bias needs --run, the trained run to tune it on")
    if args.run and args.keep_bias:
        return tune_keep_bias(work, Path(args.run), args)
    if args.run:
        return evaluate_samplers_only(work, Path(args.run), args)
    if not args.eval_only:
        train_variants(work, args)
    if args.train_only:
        return 0
    return evaluate_variants(work, args)


def sweep_samplers(run: Path, work: Path, args) -> list[dict]:
    """Every sampler in one eval of the model in `run`: the same windows, the same noise per sampler."""
    from genie_pipeline.training.eval import run_eval

    t0 = time.perf_counter()
    r = run_eval(str(run), data=[str(work / "coinrun")], out_dir=str(work / "eval-samplers"), clips=args.eval_clips,
                 seed=args.seed, samplers={label: SAMPLERS[label] for label in args.samplers})
    rows = [summary_row(r, label) for label in args.samplers]
    for row in rows:
        print(f"[ablation] {row}", flush=True)
    print(f"[ablation] {len(rows)} samplers on {r['clips']} windows in {time.perf_counter() - t0:.0f} s", flush=True)
    return rows


def write_result(args, extra: dict) -> None:
    import torch

    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "smoke": bool(args.smoke),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "loadavg_end": list(os.getloadavg()),
                          "note": "a 2-core machine shared with other jobs: wall times are not comparable"},
              "preset": CPU_PRESET, **extra}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    old = out / "world_model_ablation.json"
    if old.exists() and "keep_bias" in (earlier := json.loads(old.read_text())):  # measured apart: keep it
        result.setdefault("keep_bias", earlier["keep_bias"])
    (out / "world_model_ablation.json").write_text(json.dumps(result, indent=2, default=float) + "\n")


def evaluate_samplers_only(work: Path, run: Path, args) -> int:
    """The sampler sweep on a model trained elsewhere (world_model.py's): no retraining, so the
    training-time variants are not in this table; the file says so."""
    tc = json.loads((run / "run.json").read_text()).get("train_config", {})
    trained = {"run": str(run), "from": "benchmarks/world_model.py (--out's run: world_model.json's model)",
               **{k: tc.get(k) for k in ("model", "tokenizer_steps", "dynamics_steps", "batch_size", "threads")}}
    write_result(args, {"model": trained, "variants": [],
                        "variants_not_run": "training-time variants need a retrain each (~30 CPU-minutes): "
                                            f"{', '.join(VARIANTS)} not run in this table",
                        "samplers": sweep_samplers(run, work, args)})
    return 0


def keep_samplers(cfg, biases: list[float], greedy: bool = False) -> dict[str, dict]:
    """Eval samplers (label -> Episode keywords) at the model's temperature (or greedy) and
    MaskGIT steps, with prompt detail, one per keep bias."""
    dyn = cfg.dynamics
    t = 0.0 if greedy else dyn.temperature
    return {sampler_label(greedy, t, dyn.maskgit_steps, True, b): {**({"greedy": True} if greedy else {"temperature": t}),
                                                                   "steps": dyn.maskgit_steps, "prompt_detail": True,
                                                                   "keep_bias": b}
            for b in biases}


def choose_keep_bias(rows: list[dict]) -> dict:
    """KEEP_RULE over summary rows that carry `keep_bias`; None when no bias passes."""
    def worst(row):
        return min(m["value"] for m in row["model_minus_copy_t1_4"])

    ok = [r for r in rows if r["delta_psnr_t4"]["shuffled"]["ci95"][0] > 0]
    return max(ok, key=worst) if ok else None


def tune_keep_bias(work: Path, run: Path, args) -> int:
    """Choose the keep bias on tuning episodes, measure the choice against 0 on the table's
    windows (work/coinrun, --eval-clips of them), greedy too; put it all under `keep_bias` in
    the table (the rest of the table stays as it was)."""
    from genie_pipeline.training.bundle import load_genie
    from genie_pipeline.training.eval import run_eval

    if any(not 0 <= b < KEEP_BIAS_MAX for b in args.keep_bias):
        raise SystemExit(f"--keep-bias: every value must be in [0, {KEEP_BIAS_MAX:g}), got {args.keep_bias}")
    if len({sampler_label(False, 1.0, 1, True, b) for b in args.keep_bias}) != len(set(args.keep_bias)):
        raise SystemExit(f"--keep-bias: values that print alike ({args.keep_bias}) would share a row")
    path = Path(args.results) / "world_model_ablation.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    # the table's windows: its clip count, whatever --eval-clips says
    clips = table["variants"][0]["clips"] if table.get("variants") else args.eval_clips
    # new levels: episode seeds after every one the data holds (train and held out)
    data_stats = json.loads((work / "coinrun" / "stats.json").read_text())
    first, frames = data_stats["clips"], data_stats["clip_spec"]["frames"]
    tune = work / "coinrun-tune"
    if not (tune / "stats.json").exists():
        rendered = [episode_clip((args.seed, first + i, frames)) for i in range(args.tune_episodes)]
        write_episodes(tune, 0, frames, args.seed, args.tune_episodes, clips=rendered)
    tune_stats = json.loads((tune / "stats.json").read_text())
    if (tune_stats["clips"], tune_stats["clip_spec"]["frames"]) != (args.tune_episodes, frames):
        raise SystemExit(f"{tune} holds {tune_stats['clips']} episodes of {tune_stats['clip_spec']['frames']} frames, "
                         f"not --tune-episodes {args.tune_episodes} of {frames}: remove it to render them again")
    cfg = load_genie(str(run), "cpu").cfg
    biases = sorted(set(args.keep_bias) | {0.0})

    def measure(data: Path, samplers: dict[str, dict], name: str) -> list[dict]:
        t0 = time.perf_counter()
        r = run_eval(str(run), data=[str(data)], out_dir=str(work / name), clips=clips, seed=args.seed,
                     samplers=samplers)
        rows = [{**summary_row(r, label), "keep_bias": kw["keep_bias"]} for label, kw in samplers.items()]
        for row in rows:
            print(f"[keep {name}] {row}", flush=True)
        print(f"[keep {name}] {len(rows)} samplers on {r['clips']} windows in {time.perf_counter() - t0:.0f} s",
              flush=True)
        return rows

    tuning = measure(tune, keep_samplers(cfg, biases), "eval-keep-tune")
    chosen = choose_keep_bias(tuning)
    test_biases = sorted({0.0, chosen["keep_bias"]} if chosen else {0.0})
    test = measure(work / "coinrun", {**keep_samplers(cfg, test_biases), **keep_samplers(cfg, test_biases, True)},
                   "eval-keep-test")
    table["keep_bias"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "run": str(run), "loadavg_end": list(os.getloadavg()),
        "tuning": {"episodes": f"{args.tune_episodes} CoinRun episodes after the {first} of the training and table "
                               f"data (episodes {first}..{first + args.tune_episodes - 1}): levels in neither",
                   "rows": tuning},
        "rule": KEEP_RULE, "chosen": chosen["keep_bias"] if chosen else None,
        "test": {"windows": "the table's (--out/coinrun's held-out episodes)", "rows": test}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(table, indent=2, default=float) + "\n")
    return 0


def evaluate_variants(work: Path, args) -> int:
    from genie_pipeline.training.eval import run_eval

    training = json.loads((work / "training.json").read_text()) if (work / "training.json").exists() else {}
    rows = []
    for name in args.variants:
        t0 = time.perf_counter()
        r = run_eval(str(work / name), data=[str(work / "coinrun")], out_dir=str(work / name / "eval"),
                     clips=args.eval_clips, seed=args.seed)
        plain = f"{r['default_sampler']}, decoded only"
        rows.append({"variant": name, "overrides": VARIANTS[name], "eval_seconds": round(time.perf_counter() - t0, 1),
                     **summary_row(r), **({"decoded_only": summary_row(r, plain)} if plain in r["samplers"] else {})})
        print(f"[ablation] {rows[-1]}", flush=True)
    if args.add_to_results:
        return add_to_results(args, rows, training, sweep_samplers(work / args.variants[0], work, args)
                              if args.resweep else None)
    samplers = sweep_samplers(work / args.variants[0], work, args)
    write_result(args, {"budget": {"tokenizer_steps": args.tokenizer_steps, "dynamics_steps": args.dynamics_steps,
                                   "note": "reduced budget: below the 30-minute CPU benchmark's step counts"},
                        "training": training, "variants": rows, "samplers": samplers})
    return 0


def add_to_results(args, rows: list[dict], training: dict, samplers: list[dict] | None = None) -> int:
    """Rows of variants trained and evaluated after the table was written, on its budget, data
    and windows (the caller's --dynamics-steps and --eval-clips must be the table's); with
    `samplers` (--resweep: the sweep run again on the first variant) the sweep's rows too."""
    path = Path(args.results) / "world_model_ablation.json"
    table = json.loads(path.read_text())
    budget, clips = table["budget"]["dynamics_steps"], {r["clips"] for r in table["variants"]}
    if args.dynamics_steps != budget or {r["clips"] for r in rows} != clips:
        raise SystemExit(f"--add-to-results: the table was measured with {budget} dynamics steps on {clips} "
                         f"windows; these rows: {args.dynamics_steps} steps, {sorted({r['clips'] for r in rows})}")
    names = {r["variant"] for r in rows}
    table["variants"] = [r for r in table["variants"] if r["variant"] not in names] + rows
    if samplers is not None:  # the sweep it replaces stays beside it, dated
        table["samplers_previous"] = {"date": table.get("date"), "rows": table["samplers"]}
        table["samplers"] = samplers
    table["training"].update({k: v for k, v in training.items() if k in names})
    not_run = table.get("variants_not_run")  # "a, b, c: why"
    if isinstance(not_run, str) and ":" in not_run:
        listed, why = not_run.split(":", 1)
        left = [n.strip() for n in listed.split(",") if n.strip() not in names]
        table["variants_not_run"] = f"{', '.join(left)}:{why}" if left else None
    table["variants_added"] = {**table.get("variants_added", {}),
                               **{n: {"date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_end": list(os.getloadavg())}
                                  for n in sorted(names)}}
    path.write_text(json.dumps(table, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
