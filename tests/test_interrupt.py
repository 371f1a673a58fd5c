"""Ctrl-C (SIGINT to the process group, as a terminal sends it) and SIGTERM stop the long
commands within seconds with one line and exit status 130: `train` saves a checkpoint at the
step it reached and says how to resume, and `--resume` continues from that step; `ingest`
releases its lock and says the rerun resumes. Real processes, real signals."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from genie_pipeline.training import checkpoint as ckpt_lib
from tests.conftest import ROOT, make_video
from tests.fixtures.output import write_sprite_output

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
TRAIN = {"model": "tiny", "frames": 4, "resolution": [32, 48], "batch_size": 2, "num_workers": 1,
         "windows_per_clip": 2, "clips_per_group": 2, "shuffle_buffer": 2, "tokenizer_steps": 100000,
         "dynamics_steps": 0, "checkpoint_every": 100000, "log_every": 1, "sample_every": 100000, "threads": 1}


def _wait_for(pred, proc, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not pred():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    assert pred(), "timed out"


def _signal_and_wait(proc, sig, group: bool) -> tuple[float, str, str]:
    t0 = time.time()
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return time.time() - t0, out, err


def _train(tmp_path: Path, sig, group: bool):
    write_sprite_output(tmp_path / "ingest", n_train_shards=2, clips_per_shard=2, n_val_shards=0, seed=1)
    cfg = tmp_path / "train.yaml"
    cfg.write_text(json.dumps({"train": TRAIN}))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "genie_pipeline.cli", "train", "-c", str(cfg), "--set", f"train.out_dir={run}",
           str(tmp_path / "ingest")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = run / "metrics.csv"
    _wait_for(lambda: metrics.exists() and metrics.read_text().count(",loss,") >= 3, proc, 240)
    took, out, err = _signal_and_wait(proc, sig, group)
    return proc, took, out, err, cmd, run


@pytest.mark.slow  # ~90 s: a real process started, trained or ingesting, signalled, resumed
def test_ctrl_c_on_train_saves_a_checkpoint_and_resume_continues_from_it(tmp_path):
    proc, took, out, err, cmd, run = _train(tmp_path, signal.SIGINT, group=True)
    assert proc.returncode == 130, err[-3000:]
    assert took < 30 and "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("genie-pipeline train: interrupted; stopped at tokenizer step ") and "--resume" in last
    step = ckpt_lib.load(ckpt_lib.latest_path(run, "tokenizer"))["step"]
    assert step >= 3 and f"step {step}/" in last  # no checkpoint was due: this one is the interrupt's
    # resume: a short run to a step count past the saved one
    r = subprocess.run(cmd + ["--resume", "--set", f"train.tokenizer_steps={step + 2}"], cwd=ROOT, env=ENV,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resuming from step {step} of {step + 2}" in r.stderr
    assert ckpt_lib.load(ckpt_lib.latest_path(run, "tokenizer"))["step"] == step + 2
    assert f"tokenizer: {step + 2} steps (resumed from {step})" in r.stdout and "run.json" in r.stdout


@pytest.mark.slow  # ~90 s: a real process started, trained or ingesting, signalled, resumed
def test_sigterm_on_train_stops_it_the_same_way(tmp_path):
    proc, took, out, err, _, run = _train(tmp_path, signal.SIGTERM, group=False)
    assert proc.returncode == 130 and took < 30 and "Traceback" not in err, err[-3000:]
    assert "checkpoint saved to" in err.strip().splitlines()[-1]
    assert ckpt_lib.latest_path(run, "tokenizer").exists()


@pytest.mark.slow  # ~90 s: a real process started, trained or ingesting, signalled, resumed
def test_ctrl_c_on_ingest_releases_the_lock_and_the_rerun_resumes(tmp_path):
    vids = [make_video(tmp_path / f"v{i}.mp4", 33) for i in range(6)]
    cat = tmp_path / "c.jsonl"
    cat.write_text("".join(json.dumps({"id": f"v{i}", "path": str(v), "title": f"video {i}"}) + "\n"
                           for i, v in enumerate(vids)))
    out = tmp_path / "out"
    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                                   "runner": {"direct_num_workers": 2}, "filters": {"dedupe": {"enabled": False}},
                                   "output": {"dir": str(out)}}))
    cmd = [sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for(lambda: len(list((out / "clips").glob("*.tar"))) >= 1, proc, 240)
    took, _, err = _signal_and_wait(proc, signal.SIGINT, group=True)
    assert proc.returncode == 130 and took < 30, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("genie-pipeline ingest: interrupted; nothing of this run is "
                                                   "committed and the output's lock is released")
    assert not (out / ".lock").exists()
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    videos = pq.read_table(out / "videos").to_pylist()
    assert sorted(v["video_id"] for v in videos if v["status"] == "done") == [f"v{i}" for i in range(6)]
