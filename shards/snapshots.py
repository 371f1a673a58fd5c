"""Snapshots: every commit of an output is an immutable dataset version that readers can pin.

    OUT/_snapshots/<id>.json      one record per commit (ingest, refilter, compaction)
    OUT/_snapshots/LATEST         the id of the newest, replaced whole (atomic locally and in buckets)
    OUT/_snapshots/retired/...    table parts a later commit replaced, kept for the snapshots naming them

A record holds: id, time, parent, the command and config hash, the clip spec, per split every
shard (path relative to OUT, sha256, samples, bytes), every table's parts (relative paths), and
the counts. A commit writes its record into its journal, and applying the journal writes the
record and then LATEST (shards/commit.py), so a commit cut short is rolled forward with its
snapshot.

Nothing a record names is modified in place or deleted by a commit: a rewritten shard gets a new
name and the old one stays in `shards/` (a reader streaming it is never cut off); a replaced
table part moves to `_snapshots/retired/` with its relative path, so the table folders hold
exactly the current table (pyarrow, DuckDB and BigQuery read them as one dataset), and
`part_path` finds a part where it is now. `genie-pipeline gc` deletes what no retained snapshot
names (shards/retention.py).

Pinning: `OUT@<id>` (or `OUT`, which pins LATEST) resolves to exactly one record's shards
(`pinned`); training records the id and the shard hashes in run.json.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from genie_pipeline.shards import fs

DIR = "_snapshots"
LATEST = "LATEST"
RETIRED = "retired"
ID = re.compile(r"\d{8}T\d{6}-[0-9a-f]{6}")
COUNTS = ("candidates", "videos_done", "videos_failed", "clips", "clips_kept", "clips_train", "clips_val",
          "hours_in", "hours_out")


class SnapshotError(RuntimeError):
    """A snapshot that does not exist or cannot be read (the message names it)."""


def new_id() -> str:
    """Sortable by commit time: `YYYYmmddTHHMMSS-xxxxxx` (UTC)."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def snapshot_dir(out_dir: str) -> str:
    return fs.join(out_dir, DIR)


def record_path(out_dir: str, snap_id: str) -> str:
    if not ID.fullmatch(snap_id):
        raise SnapshotError(f"{snap_id!r} is not a snapshot id (like 20261207T061500-1a2b3c)")
    return fs.join(out_dir, DIR, f"{snap_id}.json")


def latest_id(out_dir: str) -> str | None:
    """The id LATEST names, or None where the output has no snapshot yet."""
    path = fs.join(out_dir, DIR, LATEST)
    try:
        data = fs.read_bytes(path).decode().strip()
    except Exception:  # noqa: BLE001 — missing, on any filesystem (each raises its own type)
        return None
    return data if ID.fullmatch(data) else None


def read(out_dir: str, snap_id: str | None = None) -> dict:
    """The record of `snap_id` (default LATEST). SnapshotError names what is missing."""
    snap_id = snap_id or latest_id(out_dir)
    if snap_id is None:
        raise SnapshotError(f"{out_dir} has no snapshots (no {DIR}/{LATEST}): it was never committed by a "
                            "version that records them; run an ingest or refilter on it first")
    path = record_path(out_dir, snap_id)
    try:
        return json.loads(fs.read_bytes(path))
    except Exception as e:  # noqa: BLE001 — missing or unreadable, on any filesystem
        known = ", ".join(s["id"] for s in list_all(out_dir)[-5:]) or "none"
        raise SnapshotError(f"{out_dir}: no readable snapshot {snap_id} ({type(e).__name__}); newest: {known}") from None


def list_all(out_dir: str) -> list[dict]:
    """Every record, oldest first (by commit time, then id)."""
    out = []
    for path in fs.glob(fs.join(out_dir, DIR, "*.json")):
        try:
            rec = json.loads(fs.read_bytes(path))
        except Exception:  # noqa: BLE001 — a record being written or removed by gc is skipped
            continue
        if isinstance(rec, dict) and ID.fullmatch(str(rec.get("id", ""))):
            out.append(rec)
    return sorted(out, key=lambda r: (r.get("time_unix", 0), r["id"]))


def write(out_dir: str, record: dict) -> None:
    """The record, then LATEST naming it (both written whole: idempotent when applied again)."""
    fs.write_bytes(record_path(out_dir, record["id"]), json.dumps(record, indent=1, sort_keys=True).encode())
    fs.write_bytes(fs.join(out_dir, DIR, LATEST), (record["id"] + "\n").encode())


def split_pin(inp: str) -> tuple[str, str | None]:
    """`OUT@<id>` -> (OUT, id); anything else -> (inp, None)."""
    base, at, tail = inp.rpartition("@")
    if at and base and ID.fullmatch(tail):
        return base, tail
    return inp, None


def rel(out_dir: str, path: str) -> str:
    """`path` (under OUT) relative to OUT, with `/` separators."""
    root = fs.join(out_dir, "x")[:-1]
    if not path.startswith(root):
        raise ValueError(f"{path} is not under {out_dir}")
    return path[len(root):].replace("\\", "/")


def retired_path(out_dir: str, relpath: str) -> str:
    return fs.join(out_dir, DIR, RETIRED, *relpath.split("/"))


def part_path(out_dir: str, relpath: str) -> str:
    """Where a table part a snapshot names is now: in its table folder, or retired."""
    here = fs.join(out_dir, *relpath.split("/"))
    return here if fs.exists(here) else retired_path(out_dir, relpath)


def shards_of(out_dir: str, record: dict, split: str) -> list[dict]:
    """[{path, sha256, samples, bytes}] of one split of a record, paths absolute."""
    return [{**e, "path": fs.join(out_dir, *e["shard"].split("/"))} for e in record.get("splits", {}).get(split, [])]


def make_record(out_dir: str, *, parent: dict | None, kind: str, meta: dict | None, indexes: dict[str, dict | None],
                tables: dict[str, list[str]], stats: dict) -> dict | None:
    """The record of a commit that leaves the shard `indexes` (wids format, entries with
    sha256) and table parts `tables` ({table: [absolute paths]}); None where that is exactly
    the parent's content (a commit that changed nothing is no new version)."""
    splits = {split: [{"shard": "shards/" + e["url"], "sha256": e.get("sha256"), "samples": e["nsamples"],
                       "bytes": e["filesize"]} for e in (index or {}).get("shardlist", [])]
              for split, index in indexes.items()}
    parts = {t: sorted(rel(out_dir, p) for p in paths) for t, paths in tables.items()}
    if parent is not None and parent.get("splits") == splits and parent.get("tables") == parts:
        return None
    now = time.time()
    meta = dict(meta or {})
    return {"id": new_id(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), "time_unix": now,
            "parent": parent["id"] if parent else None, "kind": meta.pop("kind", kind),
            "command": meta.pop("command", None), "config_sha256": meta.pop("config_sha256", None),
            "run_id": meta.pop("run_id", None) or (stats.get("last_run") or {}).get("run_id"),
            "clip_spec": stats.get("clip_spec"), "splits": splits, "tables": parts,
            "counts": {k: stats.get(k) for k in COUNTS}, **meta}


def config_hash(config: Any) -> str:
    """sha256 of a config (a pydantic model or a mapping), as canonical JSON."""
    import hashlib

    data = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


_SECRET = re.compile(r"(token|pass|secret|cookie|credential|key)", re.I)


def command_line(argv: list[str]) -> list[str]:
    """`argv` for a record, with the values of secret-looking `--set k=v` and flags hidden."""
    out, hide_next = [], False
    for a in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        if a.startswith("--") and _SECRET.search(a.split("=", 1)[0]):
            if "=" in a:
                out.append(a.split("=", 1)[0] + "=***")
            else:
                out.append(a)
                hide_next = True
            continue
        if "=" in a and _SECRET.search(a.split("=", 1)[0]):
            out.append(a.split("=", 1)[0] + "=***")
            continue
        out.append(a)
    return out
