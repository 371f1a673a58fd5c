"""Commit a run: number shards, merge the Parquet outputs, write stats — crash-safe.

Everything a run adds is first described in a journal (`OUT/_commit.json`); then shards are
renamed into place, the tables replaced and the shard indexes rewritten. A run killed
half-way through the commit is rolled forward by the next run (`recover`), so shard files,
indexes and manifest never disagree.

Shard index: `shards/{split}.index.json` per split, in the shard-index format of
webdataset's `wids` (`{"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
"shardlist": [{"url": "train-000000.tar", "nsamples": N, "filesize": B}, ...]}`), so
`wids.ShardListDataset("OUT/shards/train.index.json")` opens a split with random access.
One per split because a wids index is one dataset: one over both would mix val into train.
URLs are relative to the index's folder (wids resolves them so), so an output moved or
copied to a bucket stays valid. A split without shards has no index.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.reader import (SPLITS, DataError, existing_shards, read_rows, read_spec, read_stats, shard_name,
                                          stats_name, table_path)
from genie_pipeline.shards.records import (SCHEMA_VERSION, SCHEMAS, Candidate, ClipRow, Failure, ShardRecord, VideoResult,
                                           from_row)
from genie_pipeline.shards.store import store_path
from genie_pipeline.shards.writer import ShardRoller, write_shards_for

JOURNAL = "_commit.json"


def _write_table(dest: str, name: str, rows: list[dict[str, Any]]) -> None:
    schema = SCHEMAS[name]
    schema = schema.with_metadata({b"genie_pipeline.schema_version": str(SCHEMA_VERSION).encode()})
    table = pa.Table.from_pylist([{k: _null_nan(r.get(k)) for k in schema.names} for r in rows], schema=schema)
    with fs.atomic_output(dest) as tmp:
        pq.write_table(table, tmp)


def _null_nan(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v  # unknown is NULL, which SQL's avg skips


# ------------------------------------------------------------------------------ journal
def _apply(out_dir: str, journal: dict) -> None:
    # deletes first: a rebuild reuses the old shard names. A path already renamed into place
    # by an interrupted earlier attempt (its source is gone) is new, not old: keep it.
    done = {dst for src, dst in journal["renames"] if not fs.exists(src)}
    for path in journal.get("deletes", []):
        if path not in done:
            fs.remove(path)
    for src, dst in journal["renames"]:
        if fs.exists(src):
            fs.rename(src, dst)
        elif not fs.exists(dst):
            raise RuntimeError(f"commit journal names {src} but neither it nor {dst} exists")
    write_indexes(fs.join(out_dir, "shards"))
    stats = journal.get("stats")
    if stats is not None:
        fs.write_bytes(fs.join(out_dir, "stats.json"), json.dumps(stats, indent=2, sort_keys=True).encode())
    fs.remove(fs.join(out_dir, JOURNAL))
    for d in journal.get("cleanup", []):
        fs.rmtree(d)


def recover(out_dir: str) -> bool:
    """Roll forward a commit that a killed run left half-done. True if there was one."""
    jp = fs.join(out_dir, JOURNAL)
    if not fs.exists(jp):
        return False
    _apply(out_dir, json.loads(fs.read_bytes(jp)))
    return True


def _commit(out_dir: str, renames: list[tuple[str, str]], tables: dict[str, list[dict]],
            stats: dict | None, deletes: Iterable[str] = (), cleanup: Iterable[str] = ()) -> None:
    staged = []
    for name, rows in tables.items():
        tmp = fs.join(out_dir, "_commit", f"{name}.parquet")
        fs.makedirs(os.path.dirname(tmp)) if not fs.is_remote(tmp) else None
        _write_table(tmp, name, rows)
        staged.append((tmp, table_path(out_dir, name)))
    journal = {"renames": list(renames) + staged, "deletes": list(deletes), "stats": stats,
               "cleanup": list(cleanup)}
    fs.write_bytes(fs.join(out_dir, JOURNAL), json.dumps(journal).encode())
    _apply(out_dir, journal)


def write_indexes(shard_dir: str) -> None:
    """Rewrite each split's wids shard index from the shards' stats files (idempotent: the
    journal replays it)."""
    for split in SPLITS:
        dest = fs.join(shard_dir, f"{split}.index.json")
        shardlist = []
        for path in sorted(existing_shards(shard_dir, split)):
            name = os.path.basename(path)
            st = json.loads(fs.read_bytes(fs.join(shard_dir, stats_name(name))))
            shardlist.append({"url": name, "nsamples": st["n_samples"], "filesize": st["bytes"]})
        if not shardlist:
            fs.remove(dest)
            continue
        index = {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split, "shardlist": shardlist}
        fs.write_bytes(dest, json.dumps(index, indent=1).encode())


def _number_shards(out_dir: str, records: list[ShardRecord], start: dict[str, int]) -> tuple[list, dict[str, str]]:
    """Final names continue after the shards already there, in a deterministic order.
    Returns the renames and the final shard name of every clip key in `records`."""
    shard_dir = fs.join(out_dir, "shards")
    renames, final_of = [], {}
    nxt = dict(start)
    for rec in sorted(records, key=lambda r: (r.split, r.order)):
        name = shard_name(rec.split, nxt[rec.split])
        nxt[rec.split] += 1
        final = fs.join(shard_dir, name)
        stats_tmp = rec.path[: -len(".tar")] + ".stats.json"
        fs.write_bytes(stats_tmp, json.dumps({"shard": name, "split": rec.split, **rec.stats}, indent=1).encode())
        renames += [(stats_tmp, fs.join(shard_dir, stats_name(name))), (rec.path, final)]
        final_of.update((key, name) for key in rec.keys)
    return renames, final_of


def check_spec(out_dir: str, spec: ClipSpec) -> None:
    """One output holds clips of one spec: DataError if OUT recorded another. A run checks
    before it cuts anything (its clip stores would otherwise be staged for the next run)."""
    recorded = read_spec(out_dir)
    if recorded is not None and recorded != spec:
        raise DataError(f"{out_dir} holds clips of {recorded}; this run would cut {spec}: "
                        "write to another output directory, or set clips back")


def commit_run(out_dir: str, *, candidates: list[Candidate], failures: list[Failure],
               videos: list[VideoResult], shard_records: list[ShardRecord], stats: dict,
               spec: ClipSpec, cleanup: list[str], sources: Iterable[str] = ()) -> dict:
    """Merge one run's results into OUT; returns the merged stats (which record `spec`, the
    clip format every reader checks the output against)."""
    check_spec(out_dir, spec)
    shard_dir = fs.join(out_dir, "shards")
    start = {s: _next_index(shard_dir, s) for s in SPLITS}
    renames, final_of = _number_shards(out_dir, shard_records, start)

    # discovery failures say nothing about a video's clips: they never replace its rows, and
    # each run's discovery replaces the previous one's for the sources it ran
    redone = {v.video_key for v in videos} | {f.video_key for f in failures if f.stage != "discover"}
    rediscovered = set(sources) | {c.source for c in candidates} | {f.source for f in failures}
    old_videos = [r for r in read_rows(out_dir, "videos") if r["video_key"] not in redone]
    old_manifest = [r for r in read_rows(out_dir, "manifest") if r["video_key"] not in redone]
    old_failures = [r for r in read_rows(out_dir, "failures") if r["video_key"] not in redone
                    and not (r["stage"] == "discover" and r["source"] in rediscovered)]
    new_cands = {c.video_key: c.row() for c in candidates}
    old_cands = [r for r in read_rows(out_dir, "candidates") if r["video_key"] not in new_cands]

    manifest = old_manifest
    for v in videos:
        for c in v.clips:
            row = c.row()
            row["shard"] = final_of.get(c.key) if c.kept else None
            manifest.append(row)
    failed_keys = {f.video_key for f in failures if f.stage != "discover"}
    video_rows = old_videos + [v.row() for v in videos if v.video_key not in failed_keys or v.clips]
    video_rows += [_failed_video_row(f) for f in _first_per_video(failures) if f.video_key not in {v.video_key for v in videos}]
    manifest.sort(key=lambda r: r["key"])
    video_rows.sort(key=lambda r: r["video_key"])
    tables = {
        "manifest": manifest, "videos": video_rows,
        "failures": old_failures + [f.row() for f in failures],
        "candidates": sorted(old_cands + list(new_cands.values()), key=lambda r: r["video_key"]),
    }
    merged = summarize(tables, stats, spec)
    _commit(out_dir, renames, tables, merged, cleanup=cleanup)
    return merged


def _next_index(shard_dir: str, split: str) -> int:
    idx = [int(os.path.basename(p)[len(split) + 1: -4]) for p in existing_shards(shard_dir, split)]
    return max(idx) + 1 if idx else 0


def _first_per_video(failures: list[Failure]) -> list[Failure]:
    seen, out = set(), []
    for f in failures:
        if f.video_key not in seen and f.stage != "discover":
            seen.add(f.video_key)
            out.append(f)
    return out


def _failed_video_row(f: Failure) -> dict:
    return {"video_key": f.video_key, "video_id": f.video_id, "source": f.source, "title": "",
            "status": "failed", "n_clips": 0, "n_kept": 0, "seconds_in": 0.0, "seconds_out": 0.0,
            "error": f"{f.stage}:{f.error_type}: {f.message}"[:500], "split": ""}


def summarize(tables: dict[str, list[dict]], run_stats: dict, spec: ClipSpec) -> dict:
    m, v, c = tables["manifest"], tables["videos"], tables["candidates"]
    reasons: dict[str, int] = {}
    for r in m:
        if not r["kept"]:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    fail_types: dict[str, int] = {}
    for f in tables["failures"]:
        k = f"{f['stage']}:{f['error_type']}"
        fail_types[k] = fail_types.get(k, 0) + 1
    return {
        "candidates": len(c),
        "keyword_kept": sum(r["keyword_verdict"] == "keep" for r in c),
        "keyword_rejected": sum(r["keyword_verdict"] == "reject" for r in c),
        "videos_done": sum(r["status"] == "done" for r in v),
        "videos_failed": sum(r["status"] == "failed" for r in v),
        "clips": len(m), "clips_kept": sum(r["kept"] for r in m), "clips_rejected": reasons,
        "clips_train": sum(r["kept"] and r["split"] == "train" for r in m),
        "clips_val": sum(r["kept"] and r["split"] == "val" for r in m),
        "hours_in": round(sum(r["seconds_in"] for r in v) / 3600, 4),
        "hours_out": round(sum(r["duration_s"] for r in m if r["kept"]) / 3600, 4),
        "failures_by_type": fail_types,
        "last_run": run_stats,
        "clip_spec": spec.to_json(),
    }


# ------------------------------------------------------------------------------ rebuild
def rebuild_shards(out_dir: str, manifest: list[dict[str, Any]], target_bytes: int, max_clips: int,
                   spec: ClipSpec | None = None) -> dict:
    """Rewrite every shard from the clip store for the rows with kept=True (refilter),
    then swap old shards for new ones in one journalled commit. The clip spec is the one
    the output recorded; `spec` serves outputs written before it was recorded."""
    recover(out_dir)
    spec = read_spec(out_dir) or spec
    if spec is None:
        raise DataError(f"{out_dir}/stats.json records no clip_spec: give the spec it was written with")
    shard_dir = fs.join(out_dir, "shards")
    tmp_dir = fs.join(shard_dir, "_tmp", "rebuild")
    fs.rmtree(tmp_dir)
    fs.makedirs(tmp_dir)
    by_video: dict[str, list[ClipRow]] = {}
    for r in manifest:
        by_video.setdefault(r["video_key"], []).append(from_row(ClipRow, r))
    records: list[ShardRecord] = []
    for split in SPLITS:
        roller = ShardRoller(tmp_dir, split, split, target_bytes, max_clips, spec)
        videos = [VideoResult(video_key=vk, video_id=cl[0].video_id, source=cl[0].source, title=cl[0].title,
                              status="done", clips=sorted(cl, key=lambda c: c.start_s),
                              store=store_path(out_dir, vk))
                  for vk, cl in sorted(by_video.items()) if cl[0].split == split]
        for c in (c for v in videos for c in v.clips):
            c.shard = None
        records += [x for x in write_shards_for(iter(videos), roller) if isinstance(x, ShardRecord)]
        for v in videos:
            by_video[v.video_key] = v.clips
    old = [p for s in SPLITS for p in existing_shards(shard_dir, s)]
    deletes = old + [fs.join(shard_dir, stats_name(os.path.basename(p))) for p in old]
    renames, final_of = _number_shards(out_dir, records, {"train": 0, "val": 0})
    rows = []
    for clips in by_video.values():
        for c in clips:
            row = c.row()
            row["shard"] = final_of.get(c.key) if c.kept else None
            rows.append(row)
    rows.sort(key=lambda r: r["key"])
    tables = {"manifest": rows, "videos": read_rows(out_dir, "videos"), "failures": read_rows(out_dir, "failures"),
              "candidates": read_rows(out_dir, "candidates")}
    prev = read_stats(out_dir)
    merged = summarize(tables, {**prev.get("last_run", {}), "rebuilt": True}, spec)
    _commit(out_dir, renames, {"manifest": rows}, merged, deletes=deletes,
            cleanup=[tmp_dir, fs.join(out_dir, "_commit")])
    return merged
