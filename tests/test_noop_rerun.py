"""A run's summary counts are the job's, summed over every step that counts them (never
negative), and a run that changes nothing rewrites nothing: every shard keeps its name and
its sha256, so a training run's record of them stays valid. Real Beam (FnApiRunner), real
ffmpeg-made videos."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from genie_pipeline.ingest.pipeline import run_ingest
from genie_pipeline.shards.commit import reshard
from genie_pipeline.shards.reader import live_shards, read_rows
from genie_pipeline.shards.verify import verify
from tests.test_tables import config, videos


def _shards(out) -> dict[str, str]:
    """{name: sha256} of the output's current shards (not those kept only for older snapshots)."""
    return {os.path.basename(p): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for split in ("train", "val") for p in live_shards(str(out / "shards"), split)}


def test_clips_sharded_counts_purged_duplicates_once_and_is_never_negative(tmp_path):
    rows = videos(tmp_path, [33, 17])  # the same test pattern: v1's clip duplicates one of v0's
    shutil.copy(rows[0]["path"], tmp_path / "copy.mp4")
    rows.append({"id": "copy", "path": str(tmp_path / "copy.mp4"), "title": "a copy of video 0"})
    stats = run_ingest(config(tmp_path, rows, shards={"val_fraction": 0.0}))
    c = stats["last_run"]["counters"]
    in_shards = sum(r["kept"] for r in read_rows(str(tmp_path / "out"), "manifest"))
    assert c["clips_cut"] == 5 and c["clips_rejected_duplicate"] == 3
    # before: the purge step's own count (-3) stood for the job's
    assert c["clips_sharded"] == in_shards == 2
    assert c["shards_written"] == len(_shards(tmp_path / "out")) == 1
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["last_run"]["counters"]["clips_sharded"] == 2


@pytest.mark.slow  # ~60 s on 2 busy cores: two ingests and a reshard
def test_a_run_that_changes_nothing_after_a_reshard_keeps_every_shard(tmp_path):
    rows = videos(tmp_path, [33, 49])
    extra = {"shards": {"max_clips": 4, "val_fraction": 0.0}, "filters": {"dedupe": {"enabled": False}}}
    out = tmp_path / "out"
    run_ingest(config(tmp_path, rows, **extra))
    first = _shards(out)
    assert len(first) == 2
    full = max(first, key=lambda n: json.loads((out / "shards" / n.replace(".tar", ".stats.json")).read_text())
               ["n_samples"])
    drop = [r["key"] for r in read_rows(str(out), "manifest") if r["shard"] == full][:3]

    def decide(part):  # what refilter does with a raised threshold: three clips of the full shard go
        for r in part:
            if r["key"] in drop:
                r.update(kept=False, reason="quality")

    reshard(str(out), decide, 2**30, 4)
    after_reshard = _shards(out)
    assert len(after_reshard) == 2 and after_reshard != first  # the full shard rewritten: two small shards now
    stats = run_ingest(config(tmp_path, rows, **extra))
    assert stats["last_run"]["counters"].get("downloaded", 0) == 0
    assert _shards(out) == after_reshard  # before: both were compacted into one new shard
    assert verify(str(out)) == []


def test_the_writer_rewrites_no_small_shard_when_the_run_adds_nothing(tmp_path):
    """The rule behind the no-op run, fast: small shards of earlier runs (OldTail) handed to a
    split's writer with no new clip of this run are left alone: nothing written, nothing named
    for the commit to replace."""
    from genie_pipeline.ingest.pipeline import OldTail, WriteShards
    from genie_pipeline.shards.config import ClipsConfig, ShardsConfig
    from genie_pipeline.shards.records import VideoResult

    tails = [OldTail(f"train-00000{i}.tar", VideoResult(video_key=f"c_v{i}", video_id=f"v{i}", source="c", title="",
                                                        status="done", clips=[], split="train"))
             for i in range(2)]
    fn = WriteShards(str(tmp_path), "run", ShardsConfig(), ClipsConfig().spec, leftovers=False)
    assert list(fn.process(("train", tails))) == []
    assert not any(tmp_path.iterdir())
