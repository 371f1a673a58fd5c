"""Snapshots end to end (issue 26), with real processes: training pinned to a snapshot while a
refilter and an ingest commit; a detached ingest into the GCS emulator whose new snapshot a
`watch` turns into a tiny training run."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from genie_pipeline.cli import main
from genie_pipeline.filtering.quality import refilter
from genie_pipeline.shards import fs, retention, snapshots
from genie_pipeline.shards.config import ShardsConfig
from genie_pipeline.shards.reader import existing_shards, live_shards, read_rows
from tests.conftest import ROOT, make_video
from tests.fixtures.output import write_quality_output

TRAIN = {"model": "tiny", "frames": 8, "resolution": [48, 80], "batch_size": 2, "num_workers": 0,
         "windows_per_clip": 2, "clips_per_group": 2, "shuffle_buffer": 2, "warmup_steps": 2,
         "log_every": 1, "sample_every": 1000, "checkpoint_every": 1000, "threads": 1}


def env() -> dict[str, str]:
    """The environment of a child process, read when it starts (an emulator fixture sets its endpoint)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def sha(path: str) -> str:
    return hashlib.sha256(fs.read_bytes(path)).hexdigest()


def ingest_config(tmp_path, out: str, n: int = 1) -> dict:
    rows = [{"id": f"new{i}", "path": str(make_video(tmp_path / f"new{i}.mp4", 17)), "title": f"new {i}"}
            for i in range(n)]
    (tmp_path / "more.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"sources": [{"type": "catalog", "name": "more", "path": str(tmp_path / "more.jsonl"), "keywords": "none"}],
            "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
            "shards": {"val_fraction": 0.0, "keep_clip_store": True}, "filters": {"dedupe": {"enabled": False}},
            "output": {"dir": out}}


def wait_for(cond, timeout_s: float, what: str, proc=None) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first (exit {proc.returncode})")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@pytest.mark.slow
def test_training_finishes_on_its_pinned_snapshot_while_refilter_and_ingest_commit(tmp_path, capsys):
    out = str(tmp_path / "out")
    small = ShardsConfig(max_clips=2)  # several shards: each is read whole, and checked, in one phase
    write_quality_output(out, n_good=4, n_bad=4, clips_per_video=2, val_every=4, shards=small)
    first = snapshots.read(out)
    pinned = {e["path"]: e["sha256"] for e in snapshots.shards_of(out, first, "train")}
    run = tmp_path / "run"
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"train": {**TRAIN, "tokenizer_steps": 24,
                                                                   "dynamics_steps": 6}}))
    proc = subprocess.Popen([sys.executable, "-m", "genie_pipeline.cli", "train", "-c", str(tmp_path / "train.yaml"),
                             "--set", f"train.out_dir={run}", out], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # training has read shards (its first steps are logged): stop it mid-run, commit twice
        wait_for(lambda: (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) > 2,
                 300, "first training steps", proc)
        os.killpg(proc.pid, signal.SIGSTOP)
        r = refilter(out, 0.5, small, None,
                     rows=[dict(m, quality_score=0.9 if m["source"] == "sim" else 0.1)
                           for m in read_rows(out, "manifest")])
        assert r["rejected"] > 0
        (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(ingest_config(tmp_path, out)))
        hook_log = tmp_path / "hook.json"
        hook = (f"{sys.executable} -c \"import json, os, sys; open({str(hook_log)!r}, 'w').write(json.dumps("
                "{k: v for k, v in os.environ.items() if k.startswith('GENIE_')})); sys.exit(3)\"")
        assert main(["ingest", "-c", str(tmp_path / "ingest.yaml"), "--on-commit", hook]) == 0
        assert "on-commit command failed (exit 3); the commit stands" in capsys.readouterr().err
        records = snapshots.list_all(out)
        assert [x["kind"] for x in records] == ["ingest", "refilter", "ingest"]
        seen = json.loads(hook_log.read_text())
        assert seen["GENIE_SNAPSHOT"] == records[-1]["id"] == snapshots.latest_id(out)
        assert seen["GENIE_SNAPSHOT_NEW"] == "1" and seen["GENIE_OUTPUT"] == out
        assert int(seen["GENIE_CLIPS_KEPT"]) == records[-1]["counts"]["clips_kept"] > records[1]["counts"]["clips_kept"]
        live = set(live_shards(os.path.join(out, "shards"), "train"))
        assert set(pinned) - live  # the refilter replaced shards training pinned
        assert proc.poll() is None  # still mid-run
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["snapshots"] == {out: first["id"]}
    assert {s["path"]: s["sha256"] for s in run_json["shards"]} == pinned
    assert all(sha(p) == h for p, h in pinned.items())  # every byte as pinned
    summary = run_json["summary"]["phases"]
    assert summary["tokenizer"]["steps"] == 24 and summary["dynamics"]["steps"] == 6
    for phase in summary.values():  # the dynamics phase read only after the commits
        assert phase["loader"]["bad_shards"] == 0 and phase["loader"]["shards_read"] >= 2

    # after training: retention 1 frees the files only the older snapshots named
    files_before = len(existing_shards(os.path.join(out, "shards"), "train"))
    dry = retention.gc(out, keep=1, dry_run=True)
    done = retention.gc(out, keep=1)
    assert done["files"] == dry["files"] > 0 and done["bytes"] == dry["bytes"] > 0
    assert not any(os.path.exists(p) for p in set(pinned) - live)
    assert len(existing_shards(os.path.join(out, "shards"), "train")) < files_before
    print(f"\ngc keep 1: {done['files']} files, {done['bytes']} bytes freed; snapshots {done['snapshots']} -> "
          f"{len(done['kept'])}", file=sys.stderr)


@pytest.mark.slow
def test_a_detached_ingest_into_gcs_then_watch_starts_training_on_the_new_snapshot(gcs, tmp_path):
    out = fs.join(gcs.bucket(), "out")
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(ingest_config(tmp_path, out, n=2)))
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({"train": {**TRAIN, "tokenizer_steps": 3,
                                                                   "dynamics_steps": 2}}))
    run = tmp_path / "run"
    then = (f"sh -c 'exec {sys.executable} -m genie_pipeline.cli train -c {tmp_path / 'train.yaml'} "
            f"--set train.out_dir={run} \"$GENIE_OUTPUT@$GENIE_SNAPSHOT\"'")
    watcher = subprocess.Popen([sys.executable, "-m", "genie_pipeline.cli", "watch", out, "--every", "1s",
                                "--then", then, "--max-runs", "1"], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(3)
        assert watcher.poll() is None  # nothing committed yet: it waits
        r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(tmp_path / "ingest.yaml"),
                            "--detach"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and "submitted" in r.stderr, r.stderr[-3000:]
        stdout, stderr = watcher.communicate(timeout=600)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, stderr[-3000:]
    snap = snapshots.latest_id(out)
    assert snap and f"new snapshot {snap}" in stderr
    run_json = json.loads((run / "run.json").read_text())
    assert run_json["snapshots"] == {out: snap} and run_json["inputs"] == [f"{out}@{snap}"]
    record = snapshots.read(out, snap)
    assert {s["path"]: s["sha256"] for s in run_json["shards"]} == {
        e["path"]: e["sha256"] for e in snapshots.shards_of(out, record, "train")}
    assert run_json["summary"]["phases"]["dynamics"]["steps"] == 2
    print(f"\nwatch: snapshot {snap} ({record['counts']['clips_kept']} clips) -> training run {run}", file=sys.stderr)
