"""`genie-pipeline run`: ingest, then train on what was ingested (one command)."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genie_pipeline.shards.reader import read_rows, table_files
from genie_pipeline.training import checkpoint as ckpt_lib
from tests.conftest import ROOT, make_video


@pytest.mark.slow  # a whole ingest then a training; the demo and the e2e tests cover each half
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
    out, run_dir = tmp_path / "out", tmp_path / "run"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["inputs"] == [str(out)]  # train read what ingest wrote (output.dir)
    assert any("/shards/train-" in str(s) for s in run["shards"])  # trained on the fresh shards
    for shard in run["shards"]:
        assert shard["bytes"] == os.path.getsize(shard["path"])
    # the manifest ingest committed, as run.json records it
    manifest = out / "manifest"
    rows = read_rows(str(out), "manifest")
    (m,) = run["manifests"]
    assert m["path"] == str(manifest) and "error" not in m
    digest = hashlib.sha256()
    for part in table_files(str(out), "manifest"):
        digest.update(Path(part).read_bytes())
    assert m["sha256"] == digest.hexdigest()
    assert m["rows"] == len(rows) > 0
    assert m["kept"] == sum(bool(r["kept"]) for r in rows) > 0
    assert m["splits"] == {"train": len(rows)}  # val_fraction 0
    # both phases ran their configured steps, once
    assert [i["stage"] for i in run["invocations"]] == ["all"]
    phases = run["summary"]["phases"]
    assert {p: phases[p]["steps"] for p in phases} == {"tokenizer": 2, "dynamics": 2}
    for phase in ("tokenizer", "dynamics"):
        assert ckpt_lib.load(ckpt_lib.latest_path(run_dir, phase))["step"] == 2
    assert run["summary"]["genie_checkpoint"] == str(run_dir / "genie.pt")
    assert (run_dir / "genie.pt").exists()
