"""`make demo`: the whole job on the embedded sample corpus, offline.

sample corpus → serve it on 127.0.0.1 → ingest through a yt-dlp search (same code path as
YouTube) plus a LeRobot dataset → verify → quality classifier → training → rollout (MP4 + GIF)
→ eval (eval.html, the action atlas).
The demo's settings are pipeline.yaml with the overlay demo.yaml.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from genie_pipeline.cli import quiet_start
from genie_pipeline.config import PipelineConfig, load_config
from genie_pipeline.ingest.config import LeRobotSource

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--config", default=str(ROOT / "pipeline.yaml"))
    ap.add_argument("--size", choices=["small", "full"], default="full")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    quiet_start()
    out = Path(args.out).resolve()
    t0 = time.time()

    from genie_pipeline.corpus.generate import generate_corpus

    corpus = out / "corpus"
    step(f"sample corpus → {corpus}")
    if _corpus_current(corpus):
        print("  (already rendered)")
    else:
        generate_corpus(corpus, seed=0, size=args.size)

    cfg = demo_config(args.config, out, corpus)
    if _ingest(cfg, corpus):
        return 1

    from genie_pipeline.corpus.reference import demo_quality

    step("quality classifier from the corpus's reference labels")
    quality = demo_quality(cfg, corpus)
    trained = None if args.skip_train else _train(cfg)

    step(f"done in {time.time() - t0:.0f} s")
    print(f"  corpus:      {corpus}  (catalog.jsonl)")
    print(f"  ingest:      {cfg.output.dir}  (shards/, tables manifest/ videos/ failures/ candidates/, stats.json)")
    print(f"  report:      {cfg.output.dir}/report.html  (open it in a browser)")
    print(f"  quality:     {quality}")
    if trained:
        for line in trained:
            print(line)
    return 0


def demo_config(config: str, out: Path, corpus: Path) -> PipelineConfig:
    """`config` with the demo's overlay, writing under `out`, plus the corpus's LeRobot
    dataset as a source where it has one."""
    cfg = load_config(config, sets=[f"train.out_dir={out / 'train'}"], output_dir=str(out / "ingest"),
                      overlay=HERE / "demo.yaml")
    if (corpus / "lerobot" / "meta" / "info.json").exists():
        cfg.sources.append(LeRobotSource(type="lerobot", name="robot", root=str(corpus / "lerobot")))
    return cfg


def _corpus_current(corpus: Path) -> bool:
    """A corpus rendered by this code (an older one lacks what newer steps read, e.g. the
    true-action sidecars eval scores against)."""
    import json

    from genie_pipeline.corpus.generate import code_version

    try:
        info = json.loads((corpus / "corpus.json").read_text())
    except (OSError, ValueError):
        return False
    return (corpus / "catalog.jsonl").exists() and info.get("code_version") == code_version()


def _ingest(cfg: PipelineConfig, corpus: Path) -> int:
    """Ingest the served corpus, then verify; the number of problems found."""
    from genie_pipeline.corpus.serve import CorpusServer
    from genie_pipeline.ingest.pipeline import run_ingest, summary_table
    from genie_pipeline.shards.verify import verify

    with CorpusServer(corpus) as server:
        os.environ["GENIE_CORPUS_URL"] = server.url
        step(f"ingest: search {server.url} through yt-dlp → {cfg.output.dir}")
        stats = run_ingest(cfg)
    print(summary_table(stats))

    step("verify shards and manifest")
    problems = verify(cfg.output.dir)
    for p in problems:
        print("  PROBLEM", p)
    print("  OK" if not problems else f"  {len(problems)} problem(s)")
    return len(problems)


def _train(cfg: PipelineConfig) -> list[str]:
    """A short tiny-config run on the demo shards, a rollout from a held-out clip, then eval;
    the lines that say where everything is."""
    from genie_pipeline.config import check_train
    from genie_pipeline.prompt import load_prompt
    from genie_pipeline.training.eval import run_eval
    from genie_pipeline.training.play import play
    from genie_pipeline.training.run import train_main

    step("train the Genie model (tiny config) on the demo shards")
    check_train(cfg)
    run_dir = Path(cfg.train.out_dir)
    summary = train_main(cfg.train, stage="all", inputs=[cfg.output.dir], resume=(run_dir / "run.json").exists())
    for name, phase in summary["phases"].items():
        m = phase.get("final_metrics", {})
        print(f"  {name}: {phase.get('steps')} steps, loss {phase.get('first_loss', float('nan')):.4f} → "
              f"{m.get('loss', float('nan')):.4f}")
    # prompt with a frame the model was not trained on: the first val clip if any
    prompt = run_dir / "prompt.mp4"
    prompt.write_bytes(_first_clip(cfg.output.dir))
    rollout = play(summary["genie_checkpoint"], load_prompt(prompt, cfg.clips, cfg.download.max_pixels),
                   "random:24", run_dir / "rollout.mp4")

    step("eval: reconstruction, rollouts, ΔtPSNR, latent actions against true actions")
    report = run_eval(run_dir, data=[cfg.output.dir], clips=16)
    print(eval_line(report))
    ev = Path(report["out_dir"])
    return [f"  training:    {run_dir}  (metrics.csv, tensorboard/, samples/, genie.pt)",
            f"  rollout:     {rollout.with_suffix('.mp4')}  (+ .gif)",
            f"  eval:        {ev / report['files']['html']}  (eval.json; open the .html in a browser)",
            f"  atlas:       {ev / report['files']['atlas']}"]


def eval_line(report: dict) -> str:
    """The demo's eval summary: ΔtPSNR with its interval, and how many latent actions the LAM
    uses (a short run often uses one or two, and then no action can change a rollout)."""
    d, lam = report["delta_psnr"], report["lam"]
    used = sum(c > 0 for c in lam["counts"])
    return (f"  ΔtPSNR@{d['t']} {d['value']:.2f} dB (95 % interval {d['ci95'][0]:.2f} to {d['ci95'][1]:.2f}) "
            f"on {report['clips']} clips; the latent action model uses {used} of {lam['num_actions']} actions "
            f"(perplexity {lam['perplexity']:.1f}){': few actions, little to control' if used <= 2 else ''}. "
            "The demo's run is minutes on a CPU; benchmarks/results/world_model.json is a longer one")


def _first_clip(out_dir: str) -> bytes:
    from genie_pipeline.shards.reader import DataError, iter_tar_clips, resolve_inputs

    for split in ("val", "train"):
        try:
            shards = resolve_inputs([out_dir], split).shards
        except DataError:
            continue
        for clip in iter_tar_clips(shards[0], {"bad_shards": 0, "bad_samples": 0}):
            return clip.data
    raise DataError(f"no clip in {out_dir}/shards")


if __name__ == "__main__":
    sys.exit(main())
