"""A detached job (ingest --detach, a flex template) holds its bucket output itself: it takes
the lease in its first step, before it reads or writes anything, and frees it when it has
committed; the launcher holds nothing. Against moto's real S3 server and the GCS emulator
(tests/emulators.py)."""
from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time

import pytest

from genie_pipeline.shards import fs
from genie_pipeline.shards.lease import Lease, acquire_job, holder, live_holder, release_job



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


@pytest.mark.slow  # a whole detached ingest; the lease's rules are tested directly above
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


# ------------------------------------------------------------------ the job holds its output
def _plant(out: str, *runs_staging: str) -> list[str]:
    """A file in each staging folder named (relative to `out`), as a run's staging holds."""
    paths = [fs.join(out, d, "planted") for d in runs_staging]
    for p in paths:
        fs.write_bytes(p, b"x")
    return paths


def test_a_job_on_a_held_output_fails_in_its_first_step_touching_nothing(gcs, tmp_path):
    """Two launches raced past the launcher's check: the second job's first step finds the
    first job's lease and fails, naming it; nothing of the first run is deleted and the
    second wrote nothing."""
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import prepare_job

    out = fs.join(gcs.bucket(), "out")
    acquire_job(fs.join(out, ".lock"), "RUN1", "ingest job RUN1", 3600, _busy)
    held = holder(fs.join(out, ".lock"))
    planted = _plant(out, "_runs/RUN1/videos", "shards/_tmp/RUN1", "_commit/RUN1", "_commit/staged-RUN1/manifest")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "v", "path": str(tmp_path / "v.mp4"), "title": "v"}) + "\n")
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl"),
                                     "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "output": {"dir": out}})
    p, _, _, paths = prepare_job(cfg, out, job_lease=True)
    with pytest.raises(Exception, match="in use by another run.*ingest job RUN1"):
        p.run().wait_until_finish()
    assert holder(fs.join(out, ".lock")) == held
    assert all(fs.exists(p) for p in planted)
    assert sorted(fs.glob(fs.join(out, "**"))) == sorted(planted + [fs.join(out, ".lock")])  # nothing of run 2


def test_the_job_takes_a_lapsed_lease_and_drops_only_other_runs_staging(gcs):
    """After taking the lease the job drops the staging of runs that hold none (here one
    whose job lease lapsed) and keeps its own; its step retried changes nothing."""
    from genie_pipeline.ingest.pipeline import take_output

    out = fs.join(gcs.bucket(), "out")
    acquire_job(fs.join(out, ".lock"), "OLD", "ingest job OLD", 0.5, _busy)
    old = _plant(out, "_runs/OLD/manifest", "shards/_tmp/OLD", "_commit/OLD", "_commit/staged-OLD/videos")
    time.sleep(0.6)
    new = _plant(out, "_runs/NEW/manifest", "shards/_tmp/NEW", "_commit/staged-NEW/videos")
    assert take_output(out, "NEW", 3600) == out
    held = holder(fs.join(out, ".lock"))
    assert held["owner"] == "NEW" and held["expires"] > time.time() + 3000
    assert not any(fs.exists(p) for p in old) and all(fs.exists(p) for p in new)
    assert take_output(out, "NEW", 3600) == out  # a retried step
    assert holder(fs.join(out, ".lock")) == held and all(fs.exists(p) for p in new)
    with pytest.raises(fs.OutputBusy, match="ingest job NEW"):
        take_output(out, "OTHER", 3600)
    assert all(fs.exists(p) for p in new)
    assert take_output(out, "ATTACHED", None) == out  # an attached run's launcher holds the output
    assert all(fs.exists(p) for p in new)


class _Gate(http.server.BaseHTTPRequestHandler):
    """Serves `video` at any path once `gate` is set: the job that downloads it waits."""
    video: bytes = b""
    gate: threading.Event

    def do_GET(self):  # noqa: N802 — http.server's name
        self.gate.wait(300)
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(self.video)))
        self.end_headers()
        self.wfile.write(self.video)

    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_two_flex_launches_on_one_output_the_second_is_refused_and_the_first_commits(gcs, tmp_path):
    """Flex-template launches (`ingest --detach --template_location`, which the local runner
    ignores and runs the job in) into one GCS output: the first job holds the output from its
    first step while its download waits; the second launch is refused naming it and deletes
    nothing; the first then commits and the output verifies."""
    import yaml

    from genie_pipeline.cli import main as cli_main
    from genie_pipeline.shards.reader import read_rows
    from tests.conftest import ROOT, make_video

    gate = threading.Event()
    handler = type("Gate", (_Gate,), {"video": make_video(tmp_path / "v.mp4", 17).read_bytes(), "gate": gate})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    root = gcs.bucket()
    out, lock = f"{root}/out", f"{root}/out/.lock"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "sources": [{"type": "urls", "name": "u", "urls": [f"http://127.0.0.1:{srv.server_address[1]}/v.mp4"]}],
        "download": {"allowed_networks": ["127.0.0.0/8"], "timeout_s": 300},
        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
        "shards": {"val_fraction": 0.0}, "output": {"dir": out}}))

    def launch(n: int) -> list[str]:
        return [sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(tmp_path / "p.yaml"), "--detach",
                "--template_location", f"{root}/templates/t{n}.json"]

    log = open(tmp_path / "first.log", "w+")
    first = subprocess.Popen(launch(1), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None and holder(lock) is None:
            time.sleep(0.2)
        held = holder(lock)
        assert first.poll() is None and held, open(tmp_path / "first.log").read()[-3000:]
        run1 = held["owner"]
        assert held["what"] == f"ingest job {run1}" and held["pid"] is None  # the job's lease, not the launcher's
        planted = _plant(out, f"_runs/{run1}/planted", f"shards/_tmp/{run1}")
        second = subprocess.run(launch(2), cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stderr[-3000:]
        assert "in use by another run" in second.stderr and f"ingest job {run1}" in second.stderr, second.stderr
        assert first.poll() is None and holder(lock) == held and all(fs.exists(p) for p in planted)
    finally:
        gate.set()
        first.wait(400)
        srv.shutdown()
        srv.server_close()
    log.seek(0)
    assert first.returncode == 0, log.read()[-3000:]
    assert holder(lock) is None  # freed by the job's commit
    stats = json.loads(fs.read_bytes(f"{out}/stats.json"))
    assert stats["last_run"]["run_id"] == run1 and stats["last_run"]["committed_by"] == "job"
    assert stats["videos_done"] == 1 and read_rows(out, "manifest")
    assert not fs.glob(f"{out}/_runs/**") and not fs.glob(f"{out}/shards/_tmp/**")
    assert cli_main(["verify", out]) == 0
