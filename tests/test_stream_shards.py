"""Shards written as clips arrive: the mixer writes a shard as soon as its pool holds one of
many videos, and curation, decided once the run is cut, purges the shards already written."""
import json
import shutil

import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import prepare_job
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.reader import iter_tar_samples
from genie_pipeline.shards.records import ClipRow, VideoResult
from genie_pipeline.shards.verify import verify
from genie_pipeline.shards.writer import ShardMixer, StreamingShards
from tests.conftest import make_video

SPEC = ClipSpec(fps=10, width=64, height=48, frames=16, keyframe_interval=16, crf=30)


def video(name: str, n: int) -> VideoResult:
    clips = [ClipRow(key=f"{name}_{i:09d}", video_key=name, video_id=name, source="t", title=name,
                     start_s=16.0 * i, duration_s=16.0, n_frames=160, split="train") for i in range(n)]
    return VideoResult(video_key=name, video_id=name, source="t", title=name, status="done", clips=clips,
                       split="train")


def mixer(tmp_path, max_clips: int, chunk: int) -> ShardMixer:
    data = lambda v: {c.key: b"x" * 100 for c in v.clips}  # noqa: E731 (clip bytes do not matter here)
    return ShardMixer(StreamingShards(str(tmp_path), "run", 2**30, max_clips, SPEC, load_clips=data), chunk)


def test_a_shard_is_written_once_the_pool_holds_one_of_sixteen_videos(tmp_path):
    m = mixer(tmp_path, max_clips=32, chunk=2)
    written = []
    for i in range(15):
        assert not list(m.add(video(f"v{i:02d}", 3)))  # 45 clips waiting, 15 videos: not yet
    written += list(m.add(video("v15", 3)))  # the 16th video: a shard of every one
    assert len(written) == 1
    rec, clips = written[0]
    per_video = {v: sum(c.video_key == v for c in clips) for v in {c.video_key for c in clips}}
    assert rec.stats["n_samples"] == 32 and len(per_video) >= 8  # one part of each video in turn
    left = m.leftovers()
    assert sum(len(p.clips) for p in left) == 16 * 3 - 32  # nothing lost, nothing twice
    keys = [c.key for p in left for c in p.clips] + [c.key for c in clips]
    assert len(set(keys)) == len(keys) == 48


def test_a_long_video_is_mixed_with_the_others_not_written_alone(tmp_path):
    m = mixer(tmp_path, max_clips=32, chunk=2)
    written = list(m.add(video("long", 300)))  # alone: held (up to 16 shards' worth), not written
    assert written == []
    for i in range(16):
        written += list(m.add(video(f"v{i:02d}", 2)))
    assert written
    for rec, clips in written:
        assert sum(c.video_key == "long" for c in clips) <= rec.stats["n_samples"] // 2
    # past the hold limit a pool of few videos is written anyway (memory holds records, bounded)
    m2 = mixer(tmp_path / "b", max_clips=32, chunk=2)
    assert list(m2.add(video("huge", 16 * 32 + 1)))


def test_curation_purges_the_shards_written_before_it(tmp_path):
    """Two copies of one video: both are written to shards as they are cut, then dedupe
    rejects the copy's clips, which the purge removes from the shards before the commit."""
    a = make_video(tmp_path / "a.mp4", 50)
    shutil.copy(a, tmp_path / "b.mp4")
    cat = tmp_path / "c.jsonl"
    cat.write_text("".join(json.dumps({"id": n, "path": str(tmp_path / f"{n}.mp4"), "title": n}) + "\n"
                           for n in ("a", "b")))
    out = tmp_path / "out"
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "shards": {"max_clips": 2, "val_fraction": 0.0},
                        "output": {"dir": str(out)}})
    p, _, _, _ = prepare_job(cfg, str(out))
    result = p.run()
    result.wait_until_finish()
    purged = result.metrics().query(MetricsFilter().with_name("shards_purged"))["counters"]
    assert sum(c.committed for c in purged) >= 1

    manifest = pq.read_table(out / "manifest").to_pylist()
    rejected = {r["key"] for r in manifest if r["reason"] == "duplicate"}
    kept = {r["key"] for r in manifest if r["kept"]}
    assert rejected and kept and len(rejected) == len(kept)  # one copy of each clip kept
    assert all(r["shard"] is None and r["duplicate_of"] in kept for r in manifest if r["key"] in rejected)
    in_shards = {k for t in (out / "shards").glob("*.tar") for k, _ in iter_tar_samples(str(t))}
    assert in_shards == kept
    videos = {r["video_id"]: r["n_kept"] for r in pq.read_table(out / "videos").to_pylist()}
    assert sorted(videos.values()) == [0, len(kept)]
    assert verify(str(out)) == []


def test_no_shuffle_between_cutting_and_writing_with_the_quality_filter_on(tmp_path):
    """In a batch job every shuffle (GroupByKey) waits for all of its input: none may lie on a
    path from DownloadAndCut to WriteAsCut, the quality classifier's included."""
    import torch

    from genie_pipeline.filtering.quality.model import QualityNet, save_quality_model

    torch.manual_seed(0)
    model = tmp_path / "model.pt"
    save_quality_model(QualityNet(frames_per_clip=2).eval(), model, {"threshold": 0.5, "bf16": {"keeps_accuracy": False}})
    (tmp_path / "c.jsonl").write_text("")
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl"),
                                     "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "filters": {"quality": {"mode": "filter", "model": str(model)}},
                        "output": {"dir": str(tmp_path / "out")}})
    p, _, _, _ = prepare_job(cfg, str(tmp_path / "out"))
    proto = p.to_runner_api().components
    leaves = {tid: t for tid, t in proto.transforms.items() if not t.subtransforms}
    consumers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for tid, t in leaves.items():
        for pc in t.inputs.values():
            consumers.setdefault(pc, []).append(tid)
        for pc in t.outputs.values():
            producer[pc] = tid

    def walk(start: list[str], step) -> set[str]:
        seen, todo = set(start), list(start)
        while todo:
            for nxt in step(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def named(suffix):
        return [tid for tid, t in leaves.items() if t.unique_name.split("/")[0] == suffix]

    cut, write = named("DownloadAndCut"), named("WriteAsCut")
    assert cut and write
    after_cut = walk(cut, lambda tid: [c for pc in leaves[tid].outputs.values() for c in consumers.get(pc, [])])
    before_write = walk(write, lambda tid: [producer[pc] for pc in leaves[tid].inputs.values() if pc in producer])
    between = after_cut & before_write
    assert any(leaves[t].unique_name.startswith("ScoreQuality") for t in between)  # the classifier is on the path
    shuffles = [leaves[t].unique_name for t in between if leaves[t].spec.urn == "beam:transform:group_by_key:v1"]
    assert shuffles == []


@pytest.mark.slow  # a 16-video ingest timed against its cutting; streaming itself is tested above
def test_shards_are_written_while_videos_are_still_being_cut(tmp_path, monkeypatch):
    """20 one-clip videos in one bundle, 4 clips per shard: the first shard is written once
    16 videos are cut, before the last ones are (the whole job runs in this process)."""
    import genie_pipeline.ingest.process as process
    from genie_pipeline.shards import fs

    events = []
    write_bytes, write_store = fs.write_bytes, process.write_store
    monkeypatch.setattr(fs, "write_bytes", lambda dest, data: (events.append(("shard", dest))
                                                               if dest.endswith(".tar") else None,
                                                               write_bytes(dest, data))[1])
    monkeypatch.setattr(process, "write_store", lambda path, *a: (events.append(("cut", path)),
                                                                  write_store(path, *a))[1])
    rows = []
    for i in range(20):
        make_video(tmp_path / f"v{i}.mp4", 17, size="320x180", extra=["-vf", f"hue=h={i * 17}"])
        rows.append(json.dumps({"id": f"v{i}", "path": str(tmp_path / f"v{i}.mp4"), "title": f"v{i}"}))
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl"),
                                     "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "shards": {"max_clips": 4, "val_fraction": 0.0}, "filters": {"dedupe": {"enabled": False}},
                        "output": {"dir": str(out)}})
    p, _, _, _ = prepare_job(cfg, str(out))
    p.run().wait_until_finish()
    kinds = [k for k, _ in events]
    assert kinds.count("cut") == 20 and kinds.count("shard") == 5
    assert kinds.index("shard") == 16  # after the 16th video, before the 17th
    assert sorted(k for t in (out / "shards").glob("*.tar") for k, _ in iter_tar_samples(str(t))) == \
        sorted(r["key"] for r in pq.read_table(out / "manifest").to_pylist())
    assert verify(str(out)) == []


def test_a_retried_purge_finds_the_same_result(tmp_path):
    """A bundle of PurgeShards retried after it rewrote one shard and deleted another: the
    rewritten one loses nothing more, the deleted one is skipped, not an error."""
    from genie_pipeline.ingest.pipeline import purge_shard
    from genie_pipeline.shards.writer import ShardRoller

    recs = []
    for name in ("a", "b"):
        roller = ShardRoller(str(tmp_path), f"train-{name}", "train", 2**30, 10, SPEC)
        for c in video(name, 3).clips:
            roller.add(c, b"x" * 100)
        recs.append(roller.close())
    keys_a = recs[0].keys

    def purge():
        return (list(purge_shard(("a", {"shard": [recs[0]], "drop": keys_a[:1]})))
                + list(purge_shard(("b", {"shard": [recs[1]], "drop": recs[1].keys}))))

    first = purge()
    assert [r.stats["n_samples"] for r in first] == [2] and not (tmp_path / "train-b-0000.tar").exists()
    again = purge()[0].stats  # the same samples (tar headers carry a new mtime: another sha256)
    assert {k: again[k] for k in ("n_samples", "n_videos", "seconds")} == \
        {k: first[0].stats[k] for k in ("n_samples", "n_videos", "seconds")}
    assert [k for k, _ in iter_tar_samples(recs[0].path)] == keys_a[1:]
    import hashlib
    assert hashlib.sha256(open(recs[0].path, "rb").read()).hexdigest() == again["sha256"]
