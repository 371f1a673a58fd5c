"""The output's tables as Parquet part files and the commit as the job's last step (issue 9
part 2), shards written as videos arrive (part 3), through the real FnApiRunner."""
import json
import os

import pyarrow.parquet as pq
import pytest

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import prepare_job, run_ingest
from genie_pipeline.shards.commit import commit_run, write_parts
from genie_pipeline.shards.reader import existing_shards, live_shards, read_rows, read_stats, table_files
from genie_pipeline.shards.verify import verify
from tests.conftest import make_video


def config(tmp_path, rows, workers=1, **extra):
    cat = tmp_path / "c.jsonl"
    cat.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mode = "in_memory" if workers == 1 else "multi_processing"
    return parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                         "runner": {"running_mode": mode, "direct_num_workers": workers},
                         "output": {"dir": str(tmp_path / "out")}, **extra})


def videos(tmp_path, seconds):
    return [{"id": f"v{i}", "path": str(make_video(tmp_path / f"v{i}.mp4", s)), "title": f"video {i}"}
            for i, s in enumerate(seconds)]


def test_the_job_commits_with_no_launcher_and_its_graph_does_not_grow(tmp_path):
    """A flex-template launcher exits once the job is submitted: running the job alone (no
    code of ours after `wait_until_finish`) commits the output. The job request stays the same
    size however many videos earlier runs finished: nothing about them is in the graph."""
    rows = videos(tmp_path, [17, 33])
    cfg = config(tmp_path, rows[:1])
    out = str(tmp_path / "out")
    p, *_ = prepare_job(cfg, out)
    empty_size = len(p.to_runner_api().SerializeToString())
    p.run().wait_until_finish()
    assert verify(out) == []
    assert {r["video_id"] for r in read_rows(out, "videos")} == {"v0"}
    assert read_stats(out)["last_run"]["committed_by"] == "job"
    # its staging cleared by the job's commit, empty folders included
    assert not any((tmp_path / "out" / d).exists() for d in ("_runs", "_commit", "shards/_tmp"))

    # 10,000 more done videos (rows written as a run's part): a set of done keys in the graph
    # would add ~200 KB; the request stays the same up to pickling noise (tens of bytes)
    fake = write_parts(os.path.join(out, "videos"), "videos", "20260101T000000-000000",
                       [{"video_key": f"c_x{i:05d}", "video_id": f"x{i:05d}", "source": "c", "status": "done"}
                        for i in range(10_000)])
    p, *_ = prepare_job(config(tmp_path, rows), out)
    assert abs(len(p.to_runner_api().SerializeToString()) - empty_size) < 1024
    for path in fake:
        os.remove(path)
    p, *_ = prepare_job(config(tmp_path, rows), out)
    p.run().wait_until_finish()
    assert verify(out) == []
    assert {r["video_id"]: r["status"] for r in read_rows(out, "videos")} == {"v0": "done", "v1": "done"}
    # the second run added parts; it did not rewrite the first run's
    assert len(table_files(out, "videos")) == 2


def test_tables_are_datasets_of_parts_that_every_reader_opens(tmp_path):
    cfg = config(tmp_path, videos(tmp_path, [33]))
    run_ingest(cfg)
    out = tmp_path / "out"
    for name in ("manifest", "videos", "failures", "candidates"):
        assert not (out / f"{name}.parquet").exists()
        parts = sorted((out / name).glob("part-*.parquet"))
        assert parts, name
        # pyarrow reads the folder as one dataset, with the schema version in every part
        assert pq.read_table(out / name).num_rows == len(read_rows(str(out), name))
        assert pq.read_schema(parts[0]).metadata[b"genie_pipeline.schema_version"]
    assert len(read_rows(str(out), "manifest")) == 2


@pytest.mark.slow  # an output of the old layout through two runs; the layout readers are in the fast suite
def test_an_output_in_the_old_layout_opens_and_takes_new_runs(tmp_path):
    """Outputs written with one `{table}.parquet` per table: read as they are; a new run adds
    part files beside them, and a retried video replaces its old row."""
    rows = videos(tmp_path, [17, 33])
    missing = {"id": "late", "path": str(tmp_path / "late.mp4"), "title": "appears later"}
    run_ingest(config(tmp_path, rows[:1] + [missing]))
    out = tmp_path / "out"
    for name in ("manifest", "videos", "failures", "candidates"):  # back to the old layout
        pq.write_table(pq.read_table(out / name), out / f"{name}.parquet")
        for part in (out / name).glob("*.parquet"):
            part.unlink()
        (out / name).rmdir()
    assert verify(str(out)) == []
    assert {r["video_id"]: r["status"] for r in read_rows(str(out), "videos")} == {"v0": "done", "late": "failed"}
    make_video(tmp_path / "late.mp4", 17)
    run_ingest(config(tmp_path, rows + [missing]), retry_failed=True)
    assert verify(str(out)) == []
    status = {r["video_id"]: r["status"] for r in read_rows(str(out), "videos")}
    assert status == {"v0": "done", "v1": "done", "late": "done"}  # one row each: the failure was replaced
    assert not any(f["video_id"] == "late" for f in read_rows(str(out), "failures"))
    assert len(read_rows(str(out), "manifest")) == 4
    assert read_stats(str(out))["videos_done"] == 3
    # the old files joined their tables' folders: one pattern (DuckDB, BigQuery) reads each table
    for name in ("manifest", "videos", "failures", "candidates"):
        assert not (out / f"{name}.parquet").exists() and pq.read_table(out / name).num_rows == \
            len(read_rows(str(out), name))


def _rows_by_key(out, table, key):
    return {r[key]: r for r in read_rows(str(out), table)}


def test_a_corrupt_table_part_is_named_in_a_failure_and_the_run_goes_on(tmp_path):
    """Issue 24: a `videos` part moved aside lost its videos' rows for good; the commit that
    moves it restores them from the manifest and clip stores (the clips are in the shards)."""
    rows = videos(tmp_path, [17, 33])
    gone = {"id": "gone", "path": str(tmp_path / "gone.mp4"), "title": "no such file"}
    run_ingest(config(tmp_path, rows[:1] + [gone]))
    out = tmp_path / "out"
    before = _rows_by_key(out, "videos", "video_id")
    assert before["gone"]["status"] == "failed"
    (part,) = (out / "videos").glob("part-*.parquet")
    part.write_bytes(part.read_bytes()[:40])
    run_ingest(config(tmp_path, rows))  # `gone` left the catalog: its row comes from its failure
    fails = [f for f in read_rows(str(out), "failures") if f["error_type"] == "CorruptTablePart"]
    assert len(fails) == 1 and part.name in fails[0]["message"]
    assert (out / "_corrupt" / "videos").is_dir() and not part.exists()
    # v0's row is back as it was (not cut again: its clips are in the manifest and shards)
    after = _rows_by_key(out, "videos", "video_id")
    assert {k: r["status"] for k, r in after.items()} == {"v0": "done", "v1": "done", "gone": "failed"}
    assert after["v0"] == before["v0"] and after["gone"] == before["gone"]
    assert sorted(r["video_id"] for r in read_rows(str(out), "manifest")).count("v0") == before["v0"]["n_clips"]
    assert read_stats(str(out))["videos_done"] == 2
    assert verify(str(out)) == []
    # a run after that one does not cut v0 again either
    run_ingest(config(tmp_path, rows))
    assert sorted(r["video_id"] for r in read_rows(str(out), "manifest")).count("v0") == before["v0"]["n_clips"]
    assert _rows_by_key(out, "videos", "video_id") == after
    assert verify(str(out)) == []


@pytest.mark.slow  # two ingest runs; a corrupt part of any table is in the fast suite
def test_a_corrupt_manifest_part_does_not_stop_the_next_run(tmp_path):
    """Issue 24: the rows of a manifest part moved aside come back, kept clips' from their
    shards and the others from the clip store, so verify passes again."""
    black = {"id": "dark", "path": str(make_video(tmp_path / "dark.mp4", 17, src="color=black")), "title": "dark"}
    rows = [black] + videos(tmp_path, [17, 33])
    run_ingest(config(tmp_path, rows[:2]))
    out = tmp_path / "out"
    before = _rows_by_key(out, "manifest", "key")
    assert {r["kept"] for r in before.values()} == {True, False}  # a kept clip and a rejected one
    (part,) = (out / "manifest").glob("part-*.parquet")
    part.write_bytes(b"PAR1 not really")
    # issue 24: verify raised (exit 2, a usage error) on the damaged part; it is a problem found (exit 1)
    assert [p for p in verify(str(out)) if p.startswith("manifest:") and part.name in p]
    run_ingest(config(tmp_path, rows))  # curation and compaction skip it; the commit moves it aside
    fails = [f for f in read_rows(str(out), "failures") if f["error_type"] == "CorruptTablePart"]
    assert len(fails) == 1 and part.name in fails[0]["message"] and not part.exists()
    after = _rows_by_key(out, "manifest", "key")
    assert {r["video_id"] for r in after.values()} == {"dark", "v0", "v1"}
    assert {k: after[k] for k in before} == before  # every row as it was, the rejected one's reason too
    assert verify(str(out)) == []
    assert read_stats(str(out))["clips"] == len(after)


@pytest.mark.slow  # ~30 s: a 200 s video cut into 12 clips
@pytest.mark.parametrize("workers", [2])
def test_shards_spread_long_videos_and_leave_one_tail_per_split(tmp_path, workers):
    """Shards are written by several writers as videos arrive; a long video's clips land in
    many shards, and a run leaves at most one unfilled shard per split."""
    cfg = config(tmp_path, videos(tmp_path, [200, 33, 33, 17, 49]), workers=workers,
                 shards={"max_clips": 3, "val_fraction": 0.0},
                 filters={"dedupe": {"enabled": False}})  # one test pattern: every video is a copy
    run_ingest(cfg)
    out = str(tmp_path / "out")
    assert verify(out) == []
    manifest = [r for r in read_rows(out, "manifest") if r["kept"]]
    long = {r["shard"] for r in manifest if r["video_id"] == "v0"}
    n_long = sum(r["video_id"] == "v0" for r in manifest)
    assert n_long >= 10 and len(long) >= n_long // 3 + 1  # not packed into as few shards as possible
    sizes = [json.loads((tmp_path / "out" / "shards" / (os.path.basename(p)[:-4] + ".stats.json")).read_text())
             ["n_samples"] for p in live_shards(os.path.join(out, "shards"), "train")]
    assert sum(sizes) == len(manifest) and max(sizes) <= 3
    assert sum(n < 3 for n in sizes) <= 1


def test_commit_run_numbers_shards_and_an_empty_table_keeps_a_part(tmp_path):
    """The in-memory commit (fixtures, small tools) goes through the same part commit."""
    from genie_pipeline.shards.config import ClipsConfig

    commit_run(str(tmp_path), candidates=[], failures=[], videos=[], shard_records=[], stats={},
               spec=ClipsConfig().spec, cleanup=[])
    for name in ("manifest", "videos", "failures", "candidates"):
        (part,) = table_files(str(tmp_path), name)
        assert pq.read_table(part).num_rows == 0
    assert verify(str(tmp_path)) == []


@pytest.mark.slow  # four ingest runs; shard numbering and the commit are in the fast suite
def test_incremental_runs_compact_the_small_shards_of_earlier_runs(tmp_path):
    """Each run's last shard per split is small; the next run writes those clips again into
    its own shards, so incremental runs leave one small shard per split, not one per run
    (runs of 2 and 3 clips with 6 per shard: [2, 3] without compaction, [5] with it)."""
    rows = videos(tmp_path, [33, 49])
    extra = {"shards": {"max_clips": 6, "val_fraction": 0.0}, "filters": {"dedupe": {"enabled": False}}}
    out = str(tmp_path / "out")
    counts = []
    for n in (1, 2):
        run_ingest(config(tmp_path, rows[:n], **extra))
        assert verify(out) == []
        counts.append(sorted(json.loads(open(p[:-4] + ".stats.json").read())["n_samples"]
                             for p in live_shards(os.path.join(out, "shards"), "train")))
    assert counts == [[2], [5]], counts
    # the compacted shard is out of the current version, and stays for the snapshot naming it
    assert len(existing_shards(os.path.join(out, "shards"), "train")) == 2
    manifest = read_rows(out, "manifest")
    assert sum(r["kept"] for r in manifest) == 5 and len({r["key"] for r in manifest}) == len(manifest)
    assert {r["shard"] for r in manifest if r["kept"]} == {os.path.basename(p) for p in
                                                         live_shards(os.path.join(out, "shards"), "train")}
