"""Clip store, rolling shards, the journalled commit (and its recovery), rebuild, verify."""
import json
import tarfile

import pytest

from genie_pipeline.config import parse_config
from genie_pipeline.shards.records import ClipRow, VideoResult, clip_key, video_key
from genie_pipeline.shards.clip import encode_clip
from genie_pipeline.ingest.decode import iter_clips
from genie_pipeline.shards import commit
from genie_pipeline.shards.commit import commit_run, recover, reshard
from genie_pipeline.shards.reader import read_rows
from genie_pipeline.shards.verify import verify
from genie_pipeline.shards.writer import ShardRoller, write_shards_for
from genie_pipeline.shards.store import read_store, store_path, write_store
from tests.conftest import make_video

CFG = parse_config({"sources": [{"type": "files", "name": "t", "glob": "x"}],
                    "shards": {"max_clips": 2}})


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    p = make_video(tmp_path_factory.mktemp("v") / "v.mp4", 33)
    return [encode_clip(w.frames_THWC, CFG.clips.spec) for w in iter_clips(str(p), CFG.clips)]


def make_videos(out, clips, n_videos=3, split_of=lambda i: "train"):
    videos = []
    for i in range(n_videos):
        vk = video_key("t", f"vid{i}")
        rows = [ClipRow(key=clip_key(vk, j * 16000), video_key=vk, video_id=f"vid{i}", source="t", title="t",
                        start_s=j * 16.0, duration_s=16.0, n_frames=160, bytes=len(c), split=split_of(i),
                        kept=not (i == 1 and j == 1), reason="static" if (i == 1 and j == 1) else "", motion=5.0)
                for j, c in enumerate(clips)]
        v = VideoResult(video_key=vk, video_id=f"vid{i}", source="t", title="t", status="done", clips=rows,
                        seconds_in=33.0, seconds_out=32.0, store=store_path(str(out), vk), split=split_of(i))
        write_store(v.store, v, [(r.key, c) for r, c in zip(rows, clips)])
        videos.append(v)
    return videos


def shard_all(out, videos, run="r1"):
    recs, done = [], []
    for split in ("train", "val"):
        roller = ShardRoller(str(out / "shards" / "_tmp" / run), f"{split}-b000", split, 1 << 30, 2, CFG.clips.spec)
        for x in write_shards_for(iter([v for v in videos if v.split == split]), roller):
            (done if isinstance(x, VideoResult) else recs).append(x)
    return recs, done


def test_store_roundtrip(tmp_path, clips):
    v = make_videos(tmp_path, clips, 1)[0]
    back, data = read_store(v.store)
    assert [c.row() | {"quality_score": 0} for c in back.clips] == [c.row() | {"quality_score": 0} for c in v.clips]
    assert list(data) == [c.key for c in v.clips]
    with tarfile.open(v.store) as t:
        assert all(m.mtime == 0 for m in t.getmembers())


def test_commit_then_verify_then_second_run_continues_numbering(tmp_path, clips):
    videos = make_videos(tmp_path, clips, 3, split_of=lambda i: "val" if i == 2 else "train")
    recs, done = shard_all(tmp_path, videos[:2])
    commit_run(str(tmp_path), candidates=[], failures=[], videos=done, shard_records=recs, stats={}, spec=CFG.clips.spec, cleanup=[])
    assert verify(str(tmp_path)) == []
    names = sorted(p.name for p in (tmp_path / "shards").glob("*.tar"))
    assert names == ["train-000000.tar", "train-000001.tar"]  # 3 kept clips, 2 per shard
    recs, done = shard_all(tmp_path, videos[2:], run="r2")
    commit_run(str(tmp_path), candidates=[], failures=[], videos=done, shard_records=recs, stats={}, spec=CFG.clips.spec, cleanup=[])
    assert verify(str(tmp_path)) == []
    assert len(read_rows(str(tmp_path), "manifest")) == 6
    assert (tmp_path / "shards" / "val-000000.tar").exists()
    st = json.loads((tmp_path / "shards" / "val-000000.stats.json").read_text())
    assert st["n_samples"] == 2 and st["n_videos"] == 1 and len(st["sha256"]) == 64


def test_commit_interrupted_after_journal_is_rolled_forward(tmp_path, clips, monkeypatch):
    videos = make_videos(tmp_path, clips, 2)
    recs, done = shard_all(tmp_path, videos)
    calls = {"n": 0}
    real_rename = commit.fs.rename

    def dying_rename(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed mid-commit")
        real_rename(src, dst)

    monkeypatch.setattr(commit.fs, "rename", dying_rename)
    with pytest.raises(KeyboardInterrupt):
        commit_run(str(tmp_path), candidates=[], failures=[], videos=done, shard_records=recs, stats={}, spec=CFG.clips.spec, cleanup=[])
    monkeypatch.setattr(commit.fs, "rename", real_rename)
    assert verify(str(tmp_path))  # half-done: problems are reported
    assert recover(str(tmp_path)) is True
    assert verify(str(tmp_path)) == []
    assert recover(str(tmp_path)) is False


def test_rebuild_applies_new_kept_flags(tmp_path, clips):
    videos = make_videos(tmp_path, clips, 3)
    recs, done = shard_all(tmp_path, videos)
    commit_run(str(tmp_path), candidates=[], failures=[], videos=done, shard_records=recs, stats={}, spec=CFG.clips.spec, cleanup=[])
    kept_before = sum(r["kept"] for r in read_rows(str(tmp_path), "manifest"))

    def decide(rows):  # reject everything of vid0, bring back the static clip of vid1
        for r in rows:
            r["kept"] = r["video_id"] != "vid0"
            r["reason"] = "" if r["kept"] else "quality"

    _, moved = reshard(str(tmp_path), decide, int(CFG.shards.target_mb * 2**20), CFG.shards.max_clips)
    assert verify(str(tmp_path)) == []
    after = read_rows(str(tmp_path), "manifest")
    assert sum(r["kept"] for r in after) == 4
    assert moved["kept"] - moved["rejected"] == 4 - kept_before and moved["rejected"] >= 1
    assert all(r["shard"] is None for r in after if r["video_id"] == "vid0")


def test_verify_catches_a_corrupt_shard(tmp_path, clips):
    videos = make_videos(tmp_path, clips, 1)
    recs, done = shard_all(tmp_path, videos)
    commit_run(str(tmp_path), candidates=[], failures=[], videos=done, shard_records=recs, stats={}, spec=CFG.clips.spec, cleanup=[])
    shard = tmp_path / "shards" / "train-000000.tar"
    shard.write_bytes(shard.read_bytes()[:2000])
    problems = verify(str(tmp_path))
    assert problems and any("train-000000" in p for p in problems)


def test_verify_and_the_loader_read_damaged_shards_the_same_way(tmp_path, clips):
    """One reader of tars: verify names what is wrong; the training reader skips and counts it."""
    import io

    from genie_pipeline.shards.reader import iter_tar_clips

    videos = make_videos(tmp_path, clips, 2)
    recs, done = shard_all(tmp_path, videos)
    commit_run(str(tmp_path), candidates=[], failures=[], videos=done, shard_records=recs, stats={},
               spec=CFG.clips.spec, cleanup=[])
    first, second = sorted((tmp_path / "shards").glob("train-*.tar"))[:2]
    # a sample that lost its json
    with tarfile.open(first) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    lost = next(m.name for m, _ in members if m.name.endswith(".json"))
    with tarfile.open(first, "w") as t:
        for m, data in members:
            if m.name != lost:
                t.addfile(m, io.BytesIO(data))
    # a truncated tar
    second.write_bytes(second.read_bytes()[:1500])
    problems = verify(str(tmp_path))
    assert any("expected mp4 and json" in p for p in problems), problems
    assert any(second.name in p and "not a readable tar" in p for p in problems), problems
    stats = {"bad_shards": 0, "bad_samples": 0}
    keys = [c.key for path in (first, second) for c in iter_tar_clips(str(path), stats)]
    assert stats == {"bad_shards": 1, "bad_samples": 0} and len(keys) >= 2  # a json-less mp4 is still a clip
    stats = {"bad_shards": 0, "bad_samples": 0}
    assert list(iter_tar_clips(str(tmp_path / "shards" / "train-999999.tar"), stats)) == []
    assert stats["bad_shards"] == 1
    assert verify(str(tmp_path), decode=False) != []
