"""Balance: caps per channel/query/source at commit, a long video spread over shards, and
the wids shard index written at commit and after a rebuild."""
import json

import pytest

from genie_pipeline.shards.clip import ClipSpec, encode_clip
from genie_pipeline.shards.commit import commit_run, reshard
from genie_pipeline.shards.dedupe import curate, spread_order

from genie_pipeline.shards.records import ClipRow, ShardRecord, VideoResult, clip_key
from genie_pipeline.shards.store import store_path, write_store
from genie_pipeline.shards.writer import ShardRoller, write_shards_for
from tests.fixtures.footage import sprite_frames

SPEC = ClipSpec(fps=10, width=64, height=48, frames=16, keyframe_interval=16, crf=30)


def row(video, i, channel=None, query=None, source="t"):
    return {"key": f"{video}_{i:09d}", "video_key": video, "source": source, "start_s": 16.0 * i,
            "duration_s": 16.0, "kept": True, "quality_score": None, "fingerprint": None,
            "channel": channel, "query": query}


def test_channel_cap_keeps_some_of_every_video_spread_over_each():
    new = [row("big", i, channel="ch") for i in range(20)] + [row("small", i, channel="ch") for i in range(3)]
    out = curate(new, [], max_distance=None, caps={"channel": 6, "query": None, "source": None})
    kept = [r for r in new if r["key"] not in out]
    assert len(kept) == 6 and {reason for reason, _ in out.values()} == {"cap:channel"}
    assert sum(r["video_key"] == "small" for r in kept) == 3  # round-robin: the small video is not starved
    starts = sorted(r["start_s"] for r in kept if r["video_key"] == "big")
    assert starts[0] == 0 and starts[-1] >= 16.0 * 10  # across the long video, not its first three


def test_committed_clips_count_first_and_no_channel_means_the_video():
    earlier = [row("old", i, channel="ch") for i in range(4)]
    new = [row("a", i, channel="ch") for i in range(3)] + [row("b", i) for i in range(3)]
    out = curate(new, earlier, max_distance=None, caps={"channel": 5, "query": None, "source": None})
    assert len([k for k in out if k.startswith("a_")]) == 2  # 4 committed + 1 new = the cap of 5
    assert not any(k.startswith("b_") for k in out)  # b has no channel: its own, 3 ≤ 5


def test_query_and_source_caps_and_deterministic():
    new = [row(v, i, query="mario", source=s) for v, s in (("x", "s1"), ("y", "s1"), ("z", "s2")) for i in range(4)]
    caps = {"channel": None, "query": 10, "source": 3}
    out = curate(new, [], max_distance=None, caps=caps)
    assert out == curate(list(reversed(new)), [], max_distance=None, caps=caps)
    kept = [r for r in new if r["key"] not in out]
    assert sum(r["source"] == "s1" for r in kept) == 3 and sum(r["source"] == "s2" for r in kept) == 3
    assert out and {reason for reason, _ in out.values()} == {"cap:source"}


def test_spread_order_prefixes_cover_the_range():
    assert spread_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(spread_order(11)) == list(range(11))
    assert max(spread_order(11)[:2]) >= 5


@pytest.fixture(scope="module")
def clip_bytes():
    return encode_clip(sprite_frames(0, SPEC), SPEC)


def make_video(out, name, n, data, split="train"):
    vk = f"t_{name}"
    clips = [ClipRow(key=clip_key(vk, i * 1600), video_key=vk, video_id=name, source="t", title=name,
                     start_s=i * 1.6, duration_s=1.6, n_frames=16, bytes=len(data), split=split) for i in range(n)]
    v = VideoResult(video_key=vk, video_id=name, source="t", title=name, status="done", clips=clips,
                    store=store_path(str(out), vk), split=split)
    write_store(v.store, v, [(c.key, data) for c in clips])
    return v


def test_a_long_video_is_spread_over_every_shard(tmp_path, clip_bytes):
    long = make_video(tmp_path, "longplay", 40, clip_bytes)
    shorts = [make_video(tmp_path, f"s{i}", 4, clip_bytes) for i in range(5)]
    roller = ShardRoller(str(tmp_path / "tmp"), "train-b000", "train", 1 << 30, 12, SPEC)
    recs = [x for x in write_shards_for([long, *shorts], roller) if isinstance(x, ShardRecord)]
    assert len(recs) == 5
    for rec in recs:  # the long video (2/3 of the clips) is in every shard, and never alone
        videos = {k.rsplit("_", 1)[0] for k in rec.keys}
        assert "t_longplay" in videos and len(videos) >= 3
        assert sum(k.startswith("t_longplay") for k in rec.keys) <= 10  # written video by video: 12 of 12


def test_wids_opens_the_index_at_commit_and_after_refilter(tmp_path, clip_bytes):
    wids = pytest.importorskip("wids")
    videos = [make_video(tmp_path, f"v{i}", 3, clip_bytes, split="val" if i == 0 else "train") for i in range(4)]
    recs = []
    for split in ("train", "val"):
        roller = ShardRoller(str(tmp_path / "shards" / "_tmp" / "r"), f"{split}-b000", split, 1 << 30, 4, SPEC)
        recs += [x for x in write_shards_for([v for v in videos if v.split == split], roller)
                 if isinstance(x, ShardRecord)]
    commit_run(str(tmp_path), candidates=[], failures=[], videos=videos, shard_records=recs, stats={}, spec=SPEC,
               cleanup=[])
    index = json.loads((tmp_path / "shards" / "train.index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["wids_version"] == 1
    assert [s["nsamples"] for s in index["shardlist"]] == [4, 4, 1]
    ds = wids.ShardListDataset(str(tmp_path / "shards" / "train.index.json"), cache_dir=str(tmp_path / "cache"),
                                transformations=[])
    assert len(ds) == 9 and ds[8][".mp4"].read() == clip_bytes
    assert len(wids.ShardListDataset(str(tmp_path / "shards" / "val.index.json"),
                                     cache_dir=str(tmp_path / "cache2"))) == 3

    def decide(rows):
        for r in rows:
            r["kept"] = r["video_key"] == "t_v1"

    reshard(str(tmp_path), decide, 1 << 30, 4)
    index = json.loads((tmp_path / "shards" / "train.index.json").read_text())
    # refilter rewrites the shards that lost clips (and drops the emptied ones) rather than all
    assert sum(s["nsamples"] for s in index["shardlist"]) == 3 and all(s["nsamples"] for s in index["shardlist"])
    assert not (tmp_path / "shards" / "val.index.json").exists()  # no val shard left
    assert len(wids.ShardListDataset(str(tmp_path / "shards" / "train.index.json"),
                                     cache_dir=str(tmp_path / "cache3"))) == 3
