"""The demo's training step: a short tiny-config run on the demo shards, then a rollout GIF."""
from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path

from .config import TrainConfig


def demo_train(pipeline_cfg, run_dir: str | os.PathLike, steps: int = 80) -> str:
    from .play import play
    from .trainer import train_main

    cfg = TrainConfig.model_validate({
        **pipeline_cfg.train.model_dump(),
        "model": "tiny", "batch_size": 4, "tokenizer_steps": steps, "dynamics_steps": steps,
        "warmup_steps": 5, "checkpoint_every": steps, "sample_every": steps, "log_every": 10,
        "num_workers": 0, "threads": 1,
    })
    run_dir = Path(run_dir)
    resume = (run_dir / "run.json").exists()
    summary = train_main(cfg, stage="all", inputs=[pipeline_cfg.output.dir], out_dir=run_dir, resume=resume)
    # prompt with a frame the model has not been trained to expect: the first val clip if any
    prompt = run_dir / "prompt.mp4"
    prompt.write_bytes(_first_clip(pipeline_cfg.output.dir))
    gif = play(summary["genie_checkpoint"], str(prompt), "random:24", run_dir / "rollout.gif")
    for name, phase in summary["phases"].items():
        m = phase.get("final_metrics", {})
        print(f"  {name}: {phase.get('steps')} steps, loss {phase.get('first_loss', float('nan')):.4f} → "
              f"{m.get('loss', float('nan')):.4f}")
    return f"{run_dir} (metrics.csv, tensorboard/, samples/, genie.pt; rollout: {gif})"


def _first_clip(ingest_dir: str) -> bytes:
    shards = sorted(glob.glob(os.path.join(ingest_dir, "shards", "val-*.tar"))) + \
        sorted(glob.glob(os.path.join(ingest_dir, "shards", "train-*.tar")))
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".mp4"):
                    return tar.extractfile(m).read()
    raise FileNotFoundError(f"no clip in {ingest_dir}/shards")
