"""Awkward inputs through the real pipeline (in-process FnApiRunner): each becomes a failure
row with its reason, the run completes, and the good video's clips are all there."""
import json

import pyarrow.parquet as pq
import pytest

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import run_ingest
from genie_pipeline.shards.verify import verify
from tests.conftest import make_video


def run(tmp_path, rows, **extra):
    cat = tmp_path / "c.jsonl"
    cat.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    cfg = {"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
           "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
           "output": {"dir": str(tmp_path / "out")}, **extra}
    stats = run_ingest(parse_config(cfg))
    fails = pq.read_table(tmp_path / "out" / "failures").to_pylist()
    manifest = pq.read_table(tmp_path / "out" / "manifest").to_pylist()
    return stats, fails, manifest


def test_duplicates_bad_rows_and_bad_urls(tmp_path):
    a = make_video(tmp_path / "a.mp4", 33)
    b = make_video(tmp_path / "b.mp4", 17)
    stats, fails, manifest = run(tmp_path, [
        {"id": "same", "path": str(a), "title": "first"},
        {"id": "same", "path": str(b), "title": "second"},
        "null", "[1, 2]",
        {"id": "badurl", "url": "https://[oops/v", "title": "broken url"},
        {"id": "fileprefix", "path": f"file://{b}", "title": "file:// is a scheme download.allowed_schemes must list"},
    ])
    by = {(f["video_id"], f["error_type"]) for f in fails}
    assert ("same", "DuplicateVideo") in by
    assert ("badurl", "BadURL") in by
    assert ("fileprefix", "DisallowedScheme") in by  # issue 24: file:// went around allowed_schemes
    assert sum("not an object" in f["message"] for f in fails) == 2
    clips = {}
    for r in manifest:
        clips[r["video_id"]] = clips.get(r["video_id"], 0) + 1
    assert clips == {"same": 2}  # the kept duplicate is a.mp4 (sorted by path)
    assert verify(str(tmp_path / "out")) == []
    # a second run: no new rows, the discovery failures are replaced rather than piled up
    _, fails2, manifest2 = run(tmp_path, [
        {"id": "same", "path": str(a), "title": "first"},
        {"id": "badurl", "url": "https://[oops/v", "title": "broken url"},
        {"id": "fileprefix", "path": f"file://{b}", "title": "x"},
    ])
    assert sorted(r["key"] for r in manifest2) == sorted(r["key"] for r in manifest)
    assert not any(f["error_type"] == "DuplicateVideo" for f in fails2)
    assert not any("not an object" in f["message"] for f in fails2)
    assert verify(str(tmp_path / "out")) == []


def test_retry_failed_replaces_the_failure(tmp_path):
    good = tmp_path / "late.mp4"
    rows = [{"id": "late", "path": str(good), "title": "appears later"}]
    _, fails, manifest = run(tmp_path, rows)
    assert [f["error_type"] for f in fails] == ["FileNotFound"] and not manifest
    make_video(good, 17)
    _, fails, manifest = run(tmp_path, rows)  # failed videos are skipped unless asked
    assert [f["error_type"] for f in fails] == ["FileNotFound"] and not manifest
    cat = tmp_path / "c.jsonl"
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                        "runner": {"running_mode": "in_memory"}, "output": {"dir": str(tmp_path / "out")}})
    run_ingest(cfg, retry_failed=True)
    out = tmp_path / "out"
    assert pq.read_table(out / "failures").num_rows == 0
    assert [r["status"] for r in pq.read_table(out / "videos").to_pylist()] == ["done"]
    assert pq.read_table(out / "manifest").num_rows == 1
    assert verify(str(out)) == []


@pytest.mark.slow  # two ingests at once; test_job_lease checks a held output is refused, touching nothing
def test_a_second_run_on_a_busy_output_stops_and_touches_nothing(tmp_path, capsys):
    """Another process holds the output (here: a real second process); an ingest on it exits 1
    naming the holder and deletes nothing; once the holder is killed the ingest runs."""
    import os
    import signal
    import subprocess
    import sys

    from genie_pipeline.cli import main

    out = tmp_path / "out"
    staged = out / "_runs" / "other-run" / "videos-0.jsonl"
    staged.parent.mkdir(parents=True)
    staged.write_text("{}\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from genie_pipeline.shards.fs import output_lock\n"
         "with output_lock(sys.argv[1], 'ingest'):\n    print('held', flush=True); time.sleep(600)", str(out)],
        stdout=subprocess.PIPE, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        cat = tmp_path / "c.jsonl"
        cat.write_text(json.dumps({"id": "a", "path": str(make_video(tmp_path / "a.mp4", 17)), "title": "a"}) + "\n")
        y = tmp_path / "p.yaml"
        y.write_text(json.dumps({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                                 "runner": {"running_mode": "in_memory", "direct_num_workers": 1}}))
        capsys.readouterr()
        assert main(["ingest", "--config", str(y), "--output", str(out)]) == 1
        err = capsys.readouterr().err
        assert "in use by another run" in err and f'"pid": {holder.pid}' in err and "ingest" in err
        assert staged.exists() and not (out / "manifest").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert main(["ingest", "--config", str(y), "--output", str(out)]) == 0  # the kernel released the lock
    assert len(pq.read_table(out / "manifest")) == 1


def test_an_output_keeps_one_clip_spec(tmp_path, capsys):
    """An ingest into an output written at another clip spec stops before cutting anything
    (exit 2 naming the output), so no clip of the wrong size is staged for a later run."""
    import json

    from genie_pipeline.cli import main

    out = tmp_path / "out"
    out.mkdir()
    spec = parse_config({"sources": [{"type": "urls", "name": "u", "urls": ["http://127.0.0.1:9/x.mp4"]}]}).clips.spec
    (out / "stats.json").write_text(json.dumps({"clip_spec": spec.to_json()}))
    cfg = tmp_path / "p.yaml"
    cfg.write_text("sources:\n  - {type: urls, name: u, urls: ['http://127.0.0.1:9/x.mp4']}\n"
                   "runner: {running_mode: in_memory, direct_num_workers: 1}\n")
    assert main(["ingest", "-c", str(cfg), "--output", str(out), "--set", "clips.fps=5"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "fps=5" in err and "fps=10" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["stats.json"]
