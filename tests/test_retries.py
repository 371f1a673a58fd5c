"""Retries and faults on the object-store emulators (gcp-storage-emulator, moto's S3 server).

Dataflow retries bundles and work items, and a worker can die after any request; every side
effect of the ingest must be idempotent. Here: a retried video reuses its clip store (no
second download), the batched filesystem operations, the job deleting the clip stores after
its commit, and the commit's journal keeping readers consistent. The fault sweeps over the
job's steps are in tests/test_faults.py.
"""
from __future__ import annotations

import http.server

import pytest

from genie_pipeline.shards import fs

from tests.conftest import make_video, serving


class CountingServer(http.server.BaseHTTPRequestHandler):
    """Serves `videos` ({path: bytes}) and counts the GETs of each path."""

    videos: dict[str, bytes]
    gets: dict[str, int]

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.gets[self.path] = self.gets.get(self.path, 0) + 1
        body = self.videos.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def video_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("videos")
    handler = type("H", (CountingServer,), {"gets": {}, "videos": {
        f"/v{i}.mp4": make_video(tmp / f"v{i}.mp4", 4.5, "160x90", 10).read_bytes() for i in range(3)}})
    with serving(handler) as srv:
        srv.gets = handler.gets
        yield srv


def processor(out: str, scratch: str):
    from genie_pipeline.filtering.config import HeuristicsConfig
    from genie_pipeline.ingest.config import DownloadConfig
    from genie_pipeline.ingest.process import VideoProcessor
    from genie_pipeline.shards.config import ClipsConfig

    counts: dict[str, int] = {}

    def count(name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    # the test server listens on 127.0.0.1, which downloads refuse by default
    proc = VideoProcessor(DownloadConfig(allowed_networks=["127.0.0.0/8"], timeout_s=10),
                          ClipsConfig(seconds=2), HeuristicsConfig(), out, scratch, count)
    return proc, counts


# ------------------------------------------------------------------ a retried video
def test_a_retried_video_reuses_its_clip_store_without_a_second_download(gcs, video_server, tmp_path):
    from genie_pipeline.shards.records import Candidate, VideoResult
    from genie_pipeline.shards.store import read_store, store_path

    out = fs.join(gcs.bucket(), "out")
    cands = [Candidate(source="web", video_id=f"r{i}", url=f"{video_server.url}/v{i}.mp4", title="x")
             for i in range(2)]
    proc, counts = processor(out, str(tmp_path / "scratch"))
    first = [proc(c) for c in cands]
    assert all(isinstance(r, VideoResult) and r.clips for r in first), first
    stored = {c.video_key: fs.read_bytes(store_path(out, c.video_key)) for c in cands}
    gets = [video_server.gets.get(f"/v{i}.mp4", 0) for i in range(2)]
    assert all(gets) and counts["downloaded"] == 2  # (a download may take more than one GET)
    # the bundle is retried (on another worker: a processor of its own) on the same input
    again, counts2 = processor(out, str(tmp_path / "scratch2"))
    second = [again(c) for c in cands]
    assert [video_server.gets.get(f"/v{i}.mp4", 0) for i in range(2)] == gets  # no second download
    assert [r.to_json() for r in second] == [r.to_json() for r in first]
    assert counts2 == {"stores_reused": 2, "videos_done": 2}
    # the stores were not written again, and hold the clips the results name
    assert {c.video_key: fs.read_bytes(store_path(out, c.video_key)) for c in cands} == stored
    for r in second:
        assert sorted(read_store(r.store)[1]) == sorted(c.key for c in r.clips)


def test_a_damaged_clip_store_is_cut_again(gcs, video_server, tmp_path):
    from genie_pipeline.shards.records import Candidate, VideoResult
    from genie_pipeline.shards.store import read_store, store_path

    out = fs.join(gcs.bucket(), "out")
    c = Candidate(source="web", video_id="d2", url=f"{video_server.url}/v2.mp4", title="x")
    fs.write_bytes(store_path(out, c.video_key), b"not a tar")  # cannot come from write_store
    before = video_server.gets.get("/v2.mp4", 0)
    proc, counts = processor(out, str(tmp_path / "scratch"))
    r = proc(c)
    assert isinstance(r, VideoResult) and r.clips and "stores_reused" not in counts
    assert video_server.gets["/v2.mp4"] > before and counts["downloaded"] == 1
    assert sorted(read_store(r.store)[1]) == sorted(x.key for x in r.clips)


# ------------------------------------------------------------------ batched operations
def test_batched_removes_renames_and_listings(bucket, monkeypatch):
    monkeypatch.setattr(fs, "BATCH", 10)  # several batches from a few objects
    out = fs.join(bucket, "out")
    paths = [fs.join(out, "a", f"{i:04d}.bin") for i in range(25)] + [fs.join(out, "b", "x.bin")]
    for p in paths:
        fs.write_bytes(p, p.encode())
    missing = fs.join(out, "a", "nope.bin")
    assert fs.existing(paths + [missing]) == set(paths)  # a listing for a/, a request for b/x
    # moved in 3 batches in flight at once; each destination holds its own source's bytes
    moves = [(p, p.replace("/a/", "/c/")) for p in paths[:25]]
    fs.rename_many(moves)
    assert fs.existing([s for s, _ in moves]) == set()
    assert all(fs.read_bytes(d) == s.encode() for s, d in moves[::6])
    assert len(fs.glob(fs.join(out, "c", "*"))) == 25
    # deleting what is gone already is no error (a retried step deletes again)
    fs.remove_many([d for _, d in moves[:12]] + [missing])
    fs.remove_many([d for _, d in moves[:12]])
    assert len(fs.glob(fs.join(out, "c", "*"))) == 13
    fs.rmtree(fs.join(out, "c"))
    fs.rmtree(fs.join(out, "c"))
    assert [p.split("/out/", 1)[1] for p in fs.glob(fs.join(out, "**"))] == ["b/x.bin"]


# ------------------------------------------------------------------ clip stores after the commit
@pytest.mark.parametrize("drop", [True, False])
def test_the_job_deletes_the_clip_stores_after_its_commit_unless_kept(gcs, drop, monkeypatch):
    from genie_pipeline.ingest.pipeline import commit_job
    from genie_pipeline.shards.config import ClipsConfig
    from genie_pipeline.shards.reader import read_stats

    monkeypatch.setattr(fs, "BATCH", 10)  # deleted in several batches
    out = fs.join(gcs.bucket(), "out")
    stores = [fs.join(out, "clips", f"web_v{i}.tar") for i in range(35)]
    for p in stores:
        fs.write_bytes(p, b"store")
    args = ([], [], [], [], out, "20261207T000000-abc123", ClipsConfig().spec, [])
    [stats] = list(commit_job(None, *args, drop_stores=drop))
    assert read_stats(out)["last_run"]["run_id"] == stats["last_run"]["run_id"] == "20261207T000000-abc123"
    assert len(fs.glob(fs.join(out, "clips", "*.tar"))) == (0 if drop else 35)
    # the step retried after it committed: nothing more to do, no error
    list(commit_job(None, *args, drop_stores=drop))
    assert len(fs.glob(fs.join(out, "clips", "*.tar"))) == (0 if drop else 35)


def test_a_rename_batch_cut_short_is_tried_again_for_what_is_left(bucket, monkeypatch):
    out = fs.join(bucket, "out")
    moves = [(fs.join(out, "a", f"{i}.bin"), fs.join(out, "b", f"{i}.bin")) for i in range(5)]
    for s, _ in moves:
        fs.write_bytes(s, s.encode())
    real, calls = fs._beam(), []

    class CutShort:  # the first batch moves two files, then its request times out
        def __getattr__(self, name):
            return getattr(real, name)

        def rename(self, srcs, dsts):
            calls.append(len(srcs))
            if len(calls) == 1:
                real.rename(srcs[:2], dsts[:2])
                raise OSError("timed out")
            real.rename(srcs, dsts)

    monkeypatch.setattr(fs, "_beam", lambda: CutShort())
    monkeypatch.setattr(fs, "TRIES", 2)
    fs.rename_many(moves)
    assert calls == [5, 3]  # tried again with the three sources still there
    assert fs.existing([s for s, _ in moves]) == set()
    assert all(fs.read_bytes(d) == s.encode() for s, d in moves)
