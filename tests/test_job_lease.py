"""A detached job (ingest --detach, a flex template) holds its bucket output itself: it takes
the lease in its first step, before it reads or writes anything, and frees it when it has
committed; the launcher holds nothing. Against moto's real S3 server and the GCS emulator
(tests/emulators.py)."""
from __future__ import annotations

import json
import time

import pytest

from genie_pipeline.shards import fs
from genie_pipeline.shards.lease import Lease, acquire_job, holder, live_holder, release_job

from tests.emulators import s3_emulator


@pytest.fixture(scope="module")
def s3():
    with s3_emulator() as emu:
        yield emu


def _busy(msg):
    return fs.OutputBusy(msg)


def test_a_job_lease_outlives_its_launcher_until_the_job_frees_it(s3):
    path = fs.join(s3.bucket(), "out", ".lock")
    taken = acquire_job(path, "RUN1", "ingest job RUN1", 3600, _busy)
    held = holder(path)
    assert held == taken and held["owner"] == "RUN1" and held["pid"] is None and held["expires"] > time.time() + 3000
    assert acquire_job(path, "RUN1", "ingest job RUN1", 3600, _busy) == held  # a retried step: kept as it is
    with pytest.raises(fs.OutputBusy, match="ingest job RUN1"):
        Lease(path, "ingest", _busy).acquire()  # same machine, but no process to find dead
    with pytest.raises(fs.OutputBusy, match="ingest job RUN1"):
        acquire_job(path, "RUN2", "ingest job RUN2", 3600, _busy)
    assert live_holder(path) == held
    release_job(path, "RUN2")  # another job's commit frees nothing
    assert holder(path)["owner"] == "RUN1"
    release_job(path, "RUN1")
    assert holder(path) is None and live_holder(path) is None


def test_a_job_that_dies_holds_the_output_only_until_its_lease_expires(s3):
    path = fs.join(s3.bucket(), "out", ".lock")
    acquire_job(path, "DEAD", "ingest job DEAD", 0.5, _busy)
    time.sleep(0.6)
    assert holder(path)["owner"] == "DEAD" and live_holder(path) is None
    acquire_job(path, "NEXT", "ingest job NEXT", 3600, _busy)  # a job takes it over
    assert holder(path)["owner"] == "NEXT"
    release_job(path, "NEXT")
    acquire_job(path, "DEAD2", "ingest job DEAD2", 0.5, _busy)
    time.sleep(0.6)
    nxt = Lease(path, "ingest", _busy)
    nxt.acquire()  # so does an attached run
    assert holder(path)["owner"] == nxt.owner
    nxt.release()


def test_detached_ingest_runs_under_the_job_lease_and_its_commit_frees_it(s3, tmp_path, monkeypatch):
    """The local runner runs the job inside `p.run()`: the commit step sees the lease under
    the job's run id (a second run is refused then), and nothing holds the output after."""
    import genie_pipeline.ingest.pipeline as pipeline
    from genie_pipeline.config import parse_config
    from tests.conftest import make_video

    out = fs.join(s3.bucket(), "out")
    make_video(tmp_path / "v.mp4", 17)
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "v", "path": str(tmp_path / "v.mp4"), "title": "v"}) + "\n")
    seen = {}
    commit_parts = pipeline.commit_parts

    def watching(out_dir, **kw):
        seen["holder"] = holder(fs.join(out_dir, ".lock"))
        try:
            with fs.output_lock(out_dir, "refilter"):
                seen["second"] = "ran"
        except fs.OutputBusy as e:
            seen["second"] = str(e)
        return commit_parts(out_dir, **kw)

    monkeypatch.setattr(pipeline, "commit_parts", watching)
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl"),
                                     "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "output": {"dir": out}})
    submitted = pipeline.run_ingest(cfg, detach=True)
    run_id = submitted["run_id"]
    assert seen["holder"]["owner"] == run_id and seen["holder"]["what"] == f"ingest job {run_id}"
    assert "in use by another run" in seen["second"] and f"ingest job {run_id}" in seen["second"]
    assert holder(fs.join(out, ".lock")) is None  # freed by the job's commit
    assert json.loads(fs.read_bytes(fs.join(out, "stats.json")))["last_run"]["committed_by"] == "job"


def test_a_job_whose_lease_lapsed_commits_nothing(s3):
    """Another run took the output over after the job's lease expired: the job's commit step
    refuses (its clip stores stay for the next run); a retry of a commit that went through
    and freed the lease is a no-op."""
    from genie_pipeline.ingest.pipeline import commit_job
    from genie_pipeline.shards.config import ClipsConfig

    out = fs.join(s3.bucket(), "out")
    other = Lease(fs.join(out, ".lock"), "ingest", _busy)
    other.acquire()
    try:
        with pytest.raises(fs.OutputBusy, match="lease on the output was lost"):
            list(commit_job(None, [], [], [], [], out, "RUNX", ClipsConfig().spec, [], lease_owner="RUNX"))
    finally:
        other.release()
    fs.write_bytes(fs.join(out, "stats.json"), json.dumps({"last_run": {"run_id": "RUNX"}}).encode())
    assert list(commit_job(None, [], [], [], [], out, "RUNX", ClipsConfig().spec, [], lease_owner="RUNX")) == []
