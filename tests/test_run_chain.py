"""`genie-pipeline run`: ingest, then train on what was ingested (one command)."""
import json
import subprocess
import sys

import yaml

from tests.conftest import ROOT, make_video


def test_run_ingests_then_trains(tmp_path):
    for i in range(2):
        make_video(tmp_path / f"v{i}.mp4", 17, src=["testsrc2", "mandelbrot"][i] + "=size=320x180:rate=30")
    cfg = {
        "sources": [{"type": "files", "name": "f", "glob": str(tmp_path / "*.mp4"), "keywords": "none"}],
        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
        "shards": {"val_fraction": 0.0},
        "output": {"dir": str(tmp_path / "out")},
        "train": {"model": "tiny", "frames": 4, "resolution": [48, 80], "batch_size": 2, "tokenizer_steps": 2,
                  "dynamics_steps": 2, "warmup_steps": 1, "num_workers": 0, "threads": 1,
                  "out_dir": str(tmp_path / "run"), "checkpoint_every": 2, "sample_every": 2, "log_every": 1},
    }
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "run", "-c", str(p)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert any("train-000000.tar" in str(s) for s in run["shards"])  # trained on the fresh shards
    assert (tmp_path / "run" / "genie.pt").exists()
