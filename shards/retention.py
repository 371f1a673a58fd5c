"""What snapshots hold and what gc may delete: `diff` between two snapshots, `gc` with retention.

`gc(out, keep=N)` keeps the newest N snapshots, `gc(out, older_than_days=D)` those committed in
the last D days (LATEST always stays), and deletes every shard, shard stats file and retired
table part that no kept snapshot names, then the records of the snapshots dropped. It holds
the output's lock meanwhile (shards/fs.py output_lock: a flock locally, the lease in a bucket,
which a detached job holds too), so it never runs while an ingest or refilter writes the
output; a training run reading a pinned snapshot holds nothing, so keep the snapshots that
running jobs pinned.
"""
from __future__ import annotations

import os
import time
from collections import Counter

from genie_pipeline.shards import fs, snapshots
from genie_pipeline.shards.reader import SPLITS, existing_shards, iter_part_batches, stats_name


def kept_clips(out_dir: str, record: dict) -> set[tuple[str, str, str]]:
    """(key, source, split) of every kept clip of a snapshot, from the manifest parts it names."""
    clips = set()
    for relpath in record.get("tables", {}).get("manifest", []):
        for b in iter_part_batches(snapshots.part_path(out_dir, relpath), ["key", "source", "split", "kept"]):
            for key, source, split, kept in zip(*(b[c].to_pylist() for c in ("key", "source", "split", "kept"))):
                if kept:
                    clips.add((key, source or "", split or ""))
    return clips


def diff(out_dir: str, old_id: str, new_id: str) -> dict:
    """Kept clips added and removed from snapshot `old_id` to `new_id`, per source and per split:
    {"old", "new", "added": {"total", "by_source", "by_split"}, "removed": {...}}."""
    old, new = snapshots.read(out_dir, old_id), snapshots.read(out_dir, new_id)
    a, b = kept_clips(out_dir, old), kept_clips(out_dir, new)

    def tally(clips: set) -> dict:
        return {"total": len(clips), "by_source": dict(sorted(Counter(c[1] for c in clips).items())),
                "by_split": dict(sorted(Counter(c[2] for c in clips).items()))}
    return {"old": old["id"], "new": new["id"], "added": tally(b - a), "removed": tally(a - b)}


def retained(records: list[dict], latest: str | None, keep: int | None, older_than_days: float | None,
             now: float | None = None) -> list[dict]:
    """The snapshots gc keeps: the newest `keep`, or those younger than `older_than_days`;
    LATEST always."""
    now = time.time() if now is None else now
    if keep is not None:
        kept = records[-keep:] if keep > 0 else []
    else:
        kept = [r for r in records if now - float(r.get("time_unix", 0)) < older_than_days * 86400]
    return [r for r in records if r in kept or r["id"] == latest]


def referenced(out_dir: str, records: list[dict]) -> set[str]:
    """Every file (absolute path) the snapshots name: shards, their stats files, table parts
    where they are now and where they were."""
    files = set()
    for rec in records:
        for split in rec.get("splits", {}):
            for e in snapshots.shards_of(out_dir, rec, split):
                files |= {e["path"], e["path"][: -len(".tar")] + ".stats.json"}
        for parts in rec.get("tables", {}).values():
            for relpath in parts:
                files |= {fs.join(out_dir, *relpath.split("/")), snapshots.retired_path(out_dir, relpath)}
    return files


def _sizes(pattern: str) -> dict[str, int]:
    """{path: bytes} of the files `pattern` matches (`**`: at any depth)."""
    if not fs.is_remote(pattern):
        import glob

        return {p: os.path.getsize(p) for p in glob.glob(fs.local(pattern), recursive=True) if os.path.isfile(p)}
    try:
        return dict(fs.list_files(pattern))
    except Exception:  # noqa: BLE001 — nothing there matches (a prefix with no objects)
        return {}


def gc(out_dir: str, keep: int | None = None, older_than_days: float | None = None, dry_run: bool = False) -> dict:
    """Delete what no retained snapshot names (see the module docstring). Returns
    {"snapshots": n before, "kept": [ids], "dropped": [ids], "files": n, "bytes": n,
    "paths": [...], "dry_run"}; with `dry_run` nothing is deleted. OutputBusy where another
    run holds the output; SnapshotError where it has no snapshots."""
    from genie_pipeline.shards.commit import recover

    if (keep is None) == (older_than_days is None):
        raise ValueError("give exactly one of keep and older_than_days")
    with fs.output_lock(out_dir, "gc"):
        recover(out_dir)
        latest = snapshots.latest_id(out_dir)
        records = snapshots.list_all(out_dir)
        if latest is None or not records:
            raise snapshots.SnapshotError(f"{out_dir} has no snapshots: nothing tells which files are in use, "
                                          "so gc deletes nothing")
        kept = retained(records, latest, keep, older_than_days)
        dropped = [r for r in records if r not in kept]
        used = referenced(out_dir, kept)
        shard_dir = fs.join(out_dir, "shards")
        sizes = _sizes(fs.join(shard_dir, "*")) | _sizes(fs.join(out_dir, snapshots.DIR, snapshots.RETIRED, "**"))
        shard_files = {p for split in SPLITS for t in existing_shards(shard_dir, split) for p in (t, fs.join(
            shard_dir, stats_name(os.path.basename(t))))}
        retired = {p for p in sizes if not p.startswith(shard_dir.rstrip("/") + "/")}
        doomed = sorted(p for p in (shard_files | retired) - used if p in sizes)
        doomed += [snapshots.record_path(out_dir, r["id"]) for r in dropped]
        freed = sum(sizes.get(p, 0) for p in doomed)
        if not dry_run:
            fs.remove_many(doomed)
    return {"snapshots": len(records), "kept": [r["id"] for r in kept], "dropped": [r["id"] for r in dropped],
            "files": len(doomed), "bytes": freed, "paths": doomed, "dry_run": dry_run}
