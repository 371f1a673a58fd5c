"""`make demo`: the whole job on the embedded sample corpus, offline.

sample corpus → serve it on 127.0.0.1 → ingest through a yt-dlp search (same code path as
YouTube) plus a LeRobot dataset → verify → quality classifier → training → rollout GIF.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from genie_pipeline.ingest.config import LeRobotSource

from genie_pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent


def step(msg: str) -> None:
    print(f"\n=== {msg}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--config", default=str(ROOT / "pipeline.yaml"))
    ap.add_argument("--size", choices=["small", "full"], default="full")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    t0 = time.time()

    from genie_pipeline.corpus.generate import generate_corpus

    corpus = out / "corpus"
    step(f"sample corpus → {corpus}")
    if not (corpus / "catalog.jsonl").exists():
        generate_corpus(corpus, seed=0, size=args.size)
    else:
        print("  (already rendered)")

    from genie_pipeline.corpus.serve import CorpusServer
    from genie_pipeline.ingest.pipeline import run_ingest, summary_table
    from genie_pipeline.shards.verify import verify

    cfg = load_config(args.config, output_dir=str(out / "ingest"))
    if (corpus / "lerobot" / "meta" / "info.json").exists():
        cfg.sources.append(LeRobotSource(type="lerobot", name="robot", root=str(corpus / "lerobot")))
    with CorpusServer(corpus) as server:
        os.environ["GENIE_CORPUS_URL"] = server.url
        step(f"ingest: search {server.url} through yt-dlp → {cfg.output.dir}")
        stats = run_ingest(cfg)
    print(summary_table(stats))

    step("verify shards and manifest")
    problems = verify(cfg.output.dir)
    for p in problems:
        print("  PROBLEM", p)
    if problems:
        return 1
    print("  OK")

    quality = _quality(cfg, corpus)
    trained = None if args.skip_train else _train(cfg, out)

    step(f"done in {time.time() - t0:.0f} s")
    print(f"  corpus:      {corpus}  (catalog.jsonl)")
    print(f"  ingest:      {cfg.output.dir}  (shards/, manifest.parquet, videos.parquet, failures.parquet, stats.json)")
    if quality:
        print(f"  quality:     {quality}")
    if trained:
        print(f"  training:    {trained}")
    return 0


def _quality(cfg, corpus: Path):
    """Train the quality classifier from the corpus's reference labels and filter with it."""
    try:
        from genie_pipeline.filtering.quality_demo import demo_quality
    except ImportError:
        return None
    step("quality classifier from the corpus's reference labels")
    # a short schedule: the demo shows the loop on ~30 labelled clips in a couple of minutes;
    # real label sets train with the config's defaults
    quick = cfg.filters.quality.model_copy(update={"epochs": 6, "min_epochs": 3, "steps_per_epoch": 8})
    return demo_quality(cfg.model_copy(update={"filters": cfg.filters.model_copy(update={"quality": quick})}), corpus)


def _train(cfg, out: Path):
    try:
        from genie_pipeline.training.demo import demo_train
    except ImportError:
        return None
    step("train the Genie model (tiny config) on the demo shards")
    return demo_train(cfg, out / "train")


if __name__ == "__main__":
    sys.exit(main())
