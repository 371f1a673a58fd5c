"""End to end on the real sample corpus: yt-dlp search and download from a local HTTP server,
the real Beam FnApiRunner with worker processes, real decoding; then resume after SIGKILL."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import run_ingest
from genie_pipeline.shards.clip import clip_fps, decode_clip
from genie_pipeline.shards.verify import verify
from tests.conftest import ROOT, wait_for_file

QUERIES = ["pitfall", "montezuma", "kangaroo", "mario", "kuka", "panda", "atari", "retro", "coinrun", "platformer"]


def catalog(corpus: Path) -> dict[str, dict]:
    rows = [json.loads(x) for x in (corpus / "catalog.jsonl").read_text().splitlines() if x.strip()]
    return {r["id"]: r for r in rows}


def config_dict(corpus: Path, server_url: str, out: Path, extra_rows: Path) -> dict:
    return {
        "sources": [
            {"type": "search", "name": "gc", "prefix": "gcsearch", "queries": QUERIES, "max_results": 100,
             "extractor_args": {"geniecorpus": {"server": [server_url]}}},
            {"type": "lerobot", "name": "robot", "root": str(corpus / "lerobot")},
            {"type": "catalog", "name": "cat", "path": str(extra_rows), "keywords": "none"},
        ],
        "download": {"retries": 2, "backoff_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 2, "per_host_rate": 50,
                     "allow_private_networks": True},
        "shards": {"val_fraction": 0.3, "max_clips": 4},
        "output": {"dir": str(out)},
    }


def write_extra_catalog(path: Path, corpus: Path, server_url: str) -> Path:
    cat = catalog(corpus)
    clean = next(r for r in cat.values() if r["made_how"] == "clean" and r["kind"] == "game" and not r["url"])
    rows = [
        {"id": "fileurl", "url": f"file://{corpus / clean['file']}", "title": "local file url"},
        {"id": "ftpurl", "url": "ftp://127.0.0.1/x.mp4", "title": "ftp url"},
        {"id": "refused", "url": "http://127.0.0.1:9/x.mp4", "title": "nobody listens"},
        {"id": "hang", "url": f"{server_url}/hang/{clean['file']}", "title": "server never answers"},
        {"id": "bylocalpath", "path": str(corpus / clean["file"]), "title": "same video from a path"},
        {"id": "../../evil/name", "path": str(corpus / clean["file"]), "title": "hostile id"},
        {"title": "row without a location"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture(scope="module")
def ingested(small_corpus, corpus_server, tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    extra = write_extra_catalog(base / "extra.jsonl", small_corpus, corpus_server.url)
    cfgd = config_dict(small_corpus, corpus_server.url, base / "out", extra)
    t0 = time.time()
    stats = run_ingest(parse_config(cfgd))
    return {"out": base / "out", "stats": stats, "cfg": cfgd, "base": base, "wall": time.time() - t0,
            "extra": extra}


def table(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def test_keyword_verdicts_match_the_catalog(ingested, small_corpus):
    cat = catalog(small_corpus)
    cands = {r["video_id"]: r for r in table(ingested["out"], "candidates") if r["source"] == "gc"}
    assert set(cands) == set(cat), "every corpus video is found by the search"
    for vid, row in cat.items():
        assert cands[vid]["keyword_verdict"] == row["expect_keyword"], (vid, row["title"][:80])
    rejected = [c for c in cands.values() if c["keyword_verdict"] == "reject"]
    assert rejected and all(c["keyword_reason"] for c in rejected)
    assert any("unboxing" in c["keyword_reason"] for c in rejected)


MONTAGES = ("rapid_cuts", "slideshow", "montage")  # the corpus splices these from shots of a few seconds


def test_clip_counts_follow_known_durations(ingested, small_corpus):
    cat = catalog(small_corpus)
    manifest = table(ingested["out"], "manifest")
    per_video: dict[str, int] = {}
    for r in manifest:
        per_video[r["video_id"]] = per_video.get(r["video_id"], 0) + 1
    expected_videos = [r for r in cat.values() if r["expect_keyword"] == "keep" and not r["expect_failure"]]
    assert expected_videos
    fails = {r["video_id"]: r for r in table(ingested["out"], "failures")}
    for r in expected_videos:
        assert r["id"] not in fails, fails.get(r["id"])
        assert per_video.get(r["id"], 0) == math.floor(r["duration"] / 16), (r["id"], r["duration"])
    # montages are cut on the grid like any video, and every clip of them is rejected
    montage_clips = [m for m in manifest if m["source"] == "gc" and cat[m["video_id"]]["made_how"] in MONTAGES]
    assert montage_clips and not any(m["kept"] for m in montage_clips)
    assert {m["reason"] for m in montage_clips} <= {"cuts", "slideshow"}
    # every clip key is unique, safe, and encodes source, id and start
    keys = [r["key"] for r in manifest]
    assert len(keys) == len(set(keys))
    assert all(k.replace("_", "").replace("-", "").isalnum() for k in keys)


def test_failures_are_recorded_with_reasons(ingested, small_corpus):
    cat = catalog(small_corpus)
    fails = {(r["source"], r["video_id"]): r for r in table(ingested["out"], "failures")}
    expect_stage = {"http_404": ("download", "HTTP404"), "http_500": ("download", "HTTP500"),
                    "too_short": ("cut", "TooShort"), "empty_file": ("download", "EmptyDownload")}
    for vid, row in cat.items():
        if row["expect_keyword"] != "keep" or not row["expect_failure"]:
            continue
        f = fails.get(("gc", vid))
        assert f is not None, f"{vid} ({row['made_how']}) should have failed"
        if row["expect_failure"] in expect_stage:
            assert (f["stage"], f["error_type"]) == expect_stage[row["expect_failure"]], f
        else:
            assert f["stage"] in ("probe", "decode", "cut"), f
        assert f["message"]
    cat_fails = {vid: f for (src, vid), f in fails.items() if src == "cat"}
    assert cat_fails["fileurl"]["error_type"] == "DisallowedScheme"
    assert cat_fails["ftpurl"]["error_type"] == "DisallowedScheme"
    assert (cat_fails["refused"]["stage"], cat_fails["refused"]["error_type"]) == ("download", "ConnectionRefused")
    assert (cat_fails["hang"]["stage"], cat_fails["hang"]["error_type"]) == ("download", "Timeout")
    assert any(f["stage"] == "discover" and "neither" in f["message"] for f in cat_fails.values())
    # the videos table: every failed video has status failed; the flaky (429) video succeeded
    videos = {(r["source"], r["video_id"]): r for r in table(ingested["out"], "videos")}
    for (src, vid), f in fails.items():
        if f["stage"] != "discover":
            assert videos[(src, vid)]["status"] == "failed"
    flaky = next(r for r in cat.values() if r["url"] and r["url"].startswith("/flaky/"))
    assert videos[("gc", flaky["id"])]["status"] == "done"


def test_lerobot_and_local_paths(ingested, small_corpus):
    manifest = table(ingested["out"], "manifest")
    robot = [r for r in manifest if r["source"] == "robot"]
    info = json.loads((small_corpus / "lerobot" / "meta" / "info.json").read_text())
    assert robot and len({r["video_id"] for r in robot}) >= 2
    assert info["codebase_version"].startswith("v3")
    by_path = [r for r in manifest if r["source"] == "cat"]
    # the same file reached by path twice (one with a hostile id): both cut, ids hashed safely
    assert len({r["video_key"] for r in by_path}) == 2
    assert all("/" not in r["video_key"] and ".." not in r["video_key"] for r in by_path)
    assert not any(".." in p.name for p in (ingested["out"] / "clips").iterdir())


def test_shards_hold_exactly_the_kept_clips_to_spec(ingested):
    out = ingested["out"]
    assert verify(str(out)) == []
    import tarfile

    manifest = table(out, "manifest")
    kept = {r["key"]: r for r in manifest if r["kept"]}
    seen = {}
    for tar_path in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                if ext == "mp4":
                    data = tar.extractfile(m).read()
                    seen[key] = tar_path.name
                    if len(seen) <= 3:
                        frames = decode_clip(data)
                        assert frames.shape == (160, 90, 160, 3)
                        assert clip_fps(data) == 10
    assert seen == {k: r["shard"] for k, r in kept.items()}
    # split by video: no video in both splits
    splits: dict[str, set] = {}
    for r in manifest:
        splits.setdefault(r["video_key"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {"train", "val"} <= {r["split"] for r in kept.values()}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["clips_kept"] == len(kept) and stats["last_run"]["cpu_s"] > 0
    # heuristics rejected the degraded clips with a reason
    reasons = {r["reason"] for r in manifest if not r["kept"]}
    assert reasons and "" not in reasons


def test_rerun_is_idempotent(ingested):
    out = ingested["out"]
    before = sorted(r["key"] for r in table(out, "manifest"))
    shards_before = sorted(p.name for p in (out / "shards").glob("*.tar"))
    report_before = wait_for_file(out / "report.html").stat().st_mtime_ns
    stats = run_ingest(parse_config(ingested["cfg"]))
    assert stats["last_run"]["counters"].get("downloaded", 0) == 0
    # nothing new: the report (matplotlib, seconds) is not drawn again
    assert (out / "report.html").stat().st_mtime_ns == report_before
    assert sorted(r["key"] for r in table(out, "manifest")) == before
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == shards_before
    assert verify(str(out)) == []


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_clean_key_set(ingested, tmp_path):
    out = tmp_path / "killed"
    cfgd = dict(ingested["cfg"], output={"dir": str(out)})
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(cfgd))
    cmd = [sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(cfg_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "clips").glob("*.tar"))) < 2:
        time.sleep(0.1)
    assert proc.poll() is None, "ingest finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest").exists()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    clean = sorted(x["key"] for x in table(ingested["out"], "manifest"))
    assert sorted(x["key"] for x in table(out, "manifest")) == clean
    kept_clean = sorted(x["key"] for x in table(ingested["out"], "manifest") if x["kept"])
    assert sorted(x["key"] for x in table(out, "manifest") if x["kept"]) == kept_clean
    assert verify(str(out)) == []
    assert not list(out.rglob("*.part")) and not [p for p in (out / "shards").rglob("_tmp/**/*") if p.is_file()]
