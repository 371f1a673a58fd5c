"""SIGKILL a training process after a checkpoint, resume it: the loss sequence equals an
uninterrupted run's (same batches, masks, optimizer state, schedule)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genie_pipeline.training import checkpoint as ckpt_lib
from genie_pipeline.training.metrics import read_metrics
from tests.fixtures.output import write_sprite_output

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

TRAIN = {"model": "tiny", "frames": 8, "resolution": [48, 80], "batch_size": 3, "num_workers": 2,
         "windows_per_clip": 2, "clips_per_group": 2, "shuffle_buffer": 3, "lr": 3e-3, "warmup_steps": 3,
         "tokenizer_steps": 6, "dynamics_steps": 40, "checkpoint_every": 4, "log_every": 1, "sample_every": 6,
         "threads": 1, "seed": 11}


def _cmd(config: Path, run: Path, shards: Path, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "genie_pipeline.cli", "train", "-c", str(config), "--set", f"train.out_dir={run}",
           str(shards)]
    return cmd + (["--resume"] if resume else [])


ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _losses(run: Path) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {"tokenizer": [], "dynamics": []}
    for phase, step, value in read_metrics(run / "metrics.csv", "loss"):
        out[phase].append((step, value))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    write_sprite_output(tmp / "ingest", n_train_shards=4, clips_per_shard=2, n_val_shards=0, seed=6)
    config = tmp / "train.yaml"
    config.write_text(json.dumps({"train": TRAIN}))
    return tmp, config


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(setup):
    tmp, config = setup
    shards = tmp / "ingest"

    # uninterrupted reference run
    ref_run = tmp / "ref"
    p = subprocess.run(_cmd(config, ref_run, shards), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = _losses(ref_run)
    assert [s for s, _ in ref["tokenizer"]] == list(range(1, 7))
    assert [s for s, _ in ref["dynamics"]] == list(range(1, 41))

    # the same run, SIGKILLed (with its loader workers) once phase 2 has written a checkpoint
    run = tmp / "killed"
    proc = subprocess.Popen(_cmd(config, run, shards), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    marker = ckpt_lib.phase_dir(run, "dynamics") / "step-00000008.pt"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it could be killed: " + proc.stderr.read()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = ckpt_lib.load(ckpt_lib.latest_path(run, "dynamics"))["step"]
    assert 8 <= killed_at < 40
    assert not (run / "genie.pt").exists()

    # resume: finishes phase 2 from the checkpoint
    p = subprocess.run(_cmd(config, run, shards, resume=True), env=ENV, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    got = _losses(run)
    assert got["tokenizer"] == ref["tokenizer"]
    assert [s for s, _ in got["dynamics"]] == list(range(1, 41))  # rows after the checkpoint were replaced
    assert got["dynamics"] == ref["dynamics"]  # bit-identical losses
    summary = json.loads(p.stdout[p.stdout.index("{"):])
    assert summary["phases"]["tokenizer"]["skipped"] is True
    assert summary["phases"]["dynamics"]["resumed_from"] == killed_at
    assert (run / "genie.pt").exists()
    # the final weights match too
    a = ckpt_lib.load(ckpt_lib.latest_path(ref_run, "dynamics"))["model"]["dynamics"]
    b = ckpt_lib.load(ckpt_lib.latest_path(run, "dynamics"))["model"]["dynamics"]
    assert all((a[k] == b[k]).all() for k in a)
