"""Commit a run: publish its table parts and shards, update the indexes and stats — crash-safe.

The tables are folders of Parquet part files (`OUT/{table}/part-*.parquet`, see
shards/reader.py). A run's workers write new parts and shards under staging names; the commit
(the job's last step, or `commit_run` for records held in memory) describes everything it
changes in a journal (`OUT/_commit.json`), then renames the new parts and shards into place,
moves the table parts they replace to `OUT/_snapshots/retired/` (shards they replace stay
where they are: nothing is deleted or rewritten in place, `gc` deletes what no retained
snapshot names), writes the shard indexes and stats, and last the commit's snapshot record
and `_snapshots/LATEST` (shards/snapshots.py). A run killed half-way through the commit is
rolled forward by the next run (`recover`), so shard files, indexes, tables and snapshots
never disagree.

Every step of applying a journal is idempotent, so a commit step retried, or killed after any
request and recovered, ends in the same output: a move whose source is gone and destination
there is done; deleting what is gone is no error; indexes and stats are written whole; the
run's staging is removed before the journal, so a cleanup cut short is finished too. A commit
of a run already committed (its run id in stats.json) does nothing.

On object stores a rename is a copy and a delete (GCS has no rename). The commit sends them in
batch requests (100 objects each) with several batches in flight (`fs.rename_many`,
`fs.remove_many`), and learns which staged files are there from listings of the staging
folders rather than a request per object: on the GCS emulator 10k shards (20k files moved)
commit in 32-52 s, against 274 s before (benchmarks/results/commit_gcs.json). Readers stay consistent meanwhile although the objects change one
by one: the journal is written before the first change and removed after the last, and
`reader.table_files` reads a table as the journal says it will be while one is there, and
lists again when the journal or stats.json changed under its listing; so a reader sees each
table before the commit or after it, never with rows missing or doubled (shards/reader.py).

Old rows are never loaded as a whole: a part is read only for the columns the totals and the
replacement rules need, one row group at a time, and rewritten only when it holds rows this
run replaces:
- a video this run processed again (a retried failure) replaces its earlier rows in
  `videos`, `failures` and `manifest`;
- a run's discovery of a source replaces the earlier discovery of that source (`candidates`
  and discovery failures, kept in parts of their own per source: `part-RUN-src-NAME-*`).
A part that cannot be read is moved to `OUT/_corrupt/` and named in a failure row.

Shard index: `shards/{split}.index.json` per split, in the shard-index format of
webdataset's `wids` (`{"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
"shardlist": [{"url": "train-000000.tar", "nsamples": N, "filesize": B}, ...]}`), so
`wids.ShardListDataset("OUT/shards/train.index.json")` opens a split with random access.
One per split because a wids index is one dataset: one over both would mix val into train.
URLs are relative to the index's folder (wids resolves them so), so an output moved or
copied to a bucket stays valid. A split without shards has no index. The commit updates it
from the old index and the new shards' records, without reading every shard's stats.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genie_pipeline.shards import fs, snapshots
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.reader import (JOURNAL, SPLITS, TAR_ERRORS, DataError, _listed_table_files, existing_shards,
                                          iter_part_batches, iter_tar_samples, legacy_table_path, read_spec,
                                          read_stats, shard_name, stats_name, table_dir, table_files)
from genie_pipeline.shards.records import (SCHEMA_VERSION, SCHEMAS, TABLES, Candidate, ClipRow, Failure, ShardRecord,
                                           VideoResult, clip_from_sample, from_row)
from genie_pipeline.shards.store import read_store_result, store_path
from genie_pipeline.shards.writer import StreamingShards

LEGACY_PART = "part-00000000T000000-000000-00000000.parquet"  # where an old layout's table file goes
PART_ROWS = 100_000  # rows per part file: a part is the unit a commit reads or rewrites whole
_PART = re.compile(r"^part-(?P<run>[0-9A-Za-z]+-[0-9a-f]+)-(?:src-(?P<source>[a-z0-9]+)-)?[0-9a-f]{8}\.parquet$")


# ------------------------------------------------------------------------------ parts
def _write_table(dest: str, name: str, rows: list[dict[str, Any]] | pa.Table) -> None:
    schema = SCHEMAS[name].with_metadata({b"genie_pipeline.schema_version": str(SCHEMA_VERSION).encode()})
    if isinstance(rows, pa.Table):
        table = rows.select(schema.names).cast(schema)
    else:
        table = pa.Table.from_pylist([{k: _null_nan(r.get(k)) for k in schema.names} for r in rows], schema=schema)
    with fs.atomic_output(dest) as tmp:
        pq.write_table(table, tmp)


def _write_streamed(dest: str, name: str, row_batches: Iterable[list[dict[str, Any]]]) -> int:
    """Write a part from batches of rows, one batch in memory at a time; returns its rows."""
    schema = SCHEMAS[name].with_metadata({b"genie_pipeline.schema_version": str(SCHEMA_VERSION).encode()})
    n = 0
    with fs.atomic_output(dest) as tmp, pq.ParquetWriter(tmp, schema) as w:
        for rows in row_batches:
            w.write_table(pa.Table.from_pylist([{k: _null_nan(r.get(k)) for k in schema.names} for r in rows],
                                               schema=schema))
            n += len(rows)
    return n


def _null_nan(v: Any) -> Any:
    return None if isinstance(v, float) and v != v else v  # unknown is NULL, which SQL's avg skips


def discovery_group(table: str, row: dict[str, Any]) -> str:
    """The source whose discovery a row belongs to ('' for rows of a video's processing):
    candidates and discovery failures go into parts of their own per source."""
    if table == "candidates" or (table == "failures" and row.get("stage") == "discover"):
        return re.sub(r"[^a-z0-9]", "", str(row.get("source") or ""))[:16]
    return ""


def part_file(dest_dir: str, run_id: str, source: str = "") -> str:
    return fs.join(dest_dir, f"part-{run_id}-{'src-' + source + '-' if source else ''}{uuid.uuid4().hex[:8]}.parquet")


class PartWriter:
    """Rows of one table into part files under `dest_dir` (at most `max_rows` each; one
    discovery group per file). `add` and `flush` return the paths of the parts they wrote."""

    def __init__(self, dest_dir: str, table: str, run_id: str, max_rows: int = PART_ROWS):
        self.dest_dir, self.table, self.run_id, self.max_rows = dest_dir, table, run_id, max_rows
        self.rows: dict[str, list[dict]] = {}

    def add(self, row: dict[str, Any]) -> list[str]:
        group = discovery_group(self.table, row)
        rows = self.rows.setdefault(group, [])
        rows.append(row)
        return self._write(group) if len(rows) >= self.max_rows else []

    def flush(self) -> list[str]:
        return [p for g in list(self.rows) for p in self._write(g)]

    def _write(self, group: str) -> list[str]:
        rows = self.rows.pop(group, [])
        if not rows:
            return []
        fs.makedirs(self.dest_dir)
        path = part_file(self.dest_dir, self.run_id, group)
        _write_table(path, self.table, rows)
        return [path]


def write_parts(dest_dir: str, table: str, run_id: str, rows: Iterable[dict[str, Any]]) -> list[str]:
    w = PartWriter(dest_dir, table, run_id)
    return [p for r in rows for p in w.add(r)] + w.flush()


# ------------------------------------------------------------------------------ journal
def _apply(out_dir: str, journal: dict) -> None:
    # every rename checked before anything is deleted: a journal that cannot complete stops
    # with the output untouched. Deletes first (reshard rewrites shards under their names); a
    # path already renamed into place by an interrupted earlier attempt (its source is gone)
    # is new, not old: keep it.
    # Which sources are there comes from listings of their folders (a run's staging), not a
    # request per object; destinations are looked up only for sources that are gone (a commit
    # cut short). On GCS, a rename cut short between its copy and its delete leaves both: the
    # source is still there and it is renamed again (copied once more, the same bytes).
    todo, done = [], set()
    present = fs.existing([src for src, _ in journal["renames"]])
    gone = [(src, dst) for src, dst in journal["renames"] if src not in present]
    there = fs.existing([dst for _, dst in gone])
    for src, dst in journal["renames"]:
        if src in present:
            todo.append((src, dst))
        elif dst in there:
            done.add(dst)
        else:
            raise RuntimeError(f"commit journal names {src} but neither it nor {dst} exists")
    fs.remove_many([path for path in journal.get("deletes", []) if path not in done])
    fs.rename_many(todo)
    shard_dir = fs.join(out_dir, "shards")
    if "indexes" in journal:
        for split, index in journal["indexes"].items():
            _write_index(shard_dir, split, index)
    else:  # a journal of an older version
        write_indexes(shard_dir)
    stats = journal.get("stats")
    if stats is not None:
        fs.write_bytes(fs.join(out_dir, "stats.json"), json.dumps(stats, indent=2, sort_keys=True).encode())
    if journal.get("snapshot"):  # the record, then LATEST: a reader pinning LATEST finds the record
        snapshots.write(out_dir, journal["snapshot"])
    # the staging goes before the journal: a commit cut short in its cleanup is finished by
    # `recover` (every step above is a no-op the second time), so nothing is left orphaned
    for d in journal.get("cleanup", []):
        fs.rmtree(d)
    fs.remove(fs.join(out_dir, JOURNAL))
    if not fs.is_remote(out_dir):  # staging parents left empty (object stores have no folders)
        for d in ("_runs", "_commit", os.path.join("shards", "_tmp")):
            with contextlib.suppress(OSError):  # not empty: another run's staging is in it
                os.rmdir(os.path.join(fs.local(out_dir), d))


def recover(out_dir: str) -> bool:
    """Roll forward a commit that a killed run left half-done. True if there was one."""
    jp = fs.join(out_dir, JOURNAL)
    if not fs.exists(jp):
        return False
    _apply(out_dir, json.loads(fs.read_bytes(jp)))
    return True


# ------------------------------------------------------------------------------ indexes
def _write_index(shard_dir: str, split: str, index: dict | None) -> None:
    dest = fs.join(shard_dir, f"{split}.index.json")
    if index is None:
        fs.remove(dest)
    else:
        fs.write_bytes(dest, json.dumps(index, indent=1).encode())


def _index(split: str, shardlist: list[dict]) -> dict | None:
    if not shardlist:
        return None
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": split,
            "shardlist": sorted(shardlist, key=lambda e: e["url"])}


def _entries_from_stats(shard_dir: str, split: str) -> list[dict]:
    entries = []
    for path in existing_shards(shard_dir, split):
        name = os.path.basename(path)
        st = json.loads(fs.read_bytes(fs.join(shard_dir, stats_name(name))))
        entries.append({"url": name, "nsamples": st["n_samples"], "filesize": st["bytes"], "sha256": st.get("sha256")})
    return entries


def write_indexes(shard_dir: str) -> None:
    """Rewrite each split's wids shard index from the shards' stats files."""
    for split in SPLITS:
        _write_index(shard_dir, split, _index(split, _entries_from_stats(shard_dir, split)))


def small_shards(shard_dir: str, split: str, target_bytes: int, max_clips: int) -> dict[str, int]:
    """The shards of `split` (from its index) under half of `max_clips` and of `target_bytes`:
    tails of earlier runs, or shards refilter shrank, which the next ingest compacts. {name:
    its samples}."""
    ip = fs.join(shard_dir, f"{split}.index.json")
    if not fs.exists(ip):
        return {}
    try:
        entries = json.loads(fs.read_bytes(ip))["shardlist"]
    except (ValueError, KeyError, TypeError):
        return {}
    return {e["url"]: e["nsamples"] for e in entries if e["nsamples"] < max_clips / 2 and e["filesize"] < target_bytes / 2}


def _updated_indexes(shard_dir: str, records: list[ShardRecord], names: dict[str, str],
                     deleted: set[str]) -> dict[str, dict | None]:
    """Each split's index after the commit: the old one (where an output has none: the split
    as its LATEST snapshot lists it, else rebuilt from the stats files) less the deleted
    shards, plus the new ones. (A split without shards has no index, and shards kept for
    older snapshots are beside the current ones: never rebuild from the files where a
    snapshot says what is current.)"""
    out = {}
    for split in SPLITS:
        ip = fs.join(shard_dir, f"{split}.index.json")
        try:
            entries = json.loads(fs.read_bytes(ip))["shardlist"] if fs.exists(ip) else _entries_of_latest(shard_dir,
                                                                                                        split)
        except (ValueError, KeyError, TypeError):
            entries = _entries_of_latest(shard_dir, split)
        entries = [e for e in entries if e["url"] not in deleted]
        for e in entries:
            if not e.get("sha256"):  # an index written before shards' hashes were recorded
                e["sha256"] = _shard_sha256(shard_dir, e["url"])
        entries += [{"url": names[r.path], "nsamples": r.stats["n_samples"], "filesize": r.stats["bytes"],
                     "sha256": r.stats.get("sha256")} for r in records if r.split == split]
        out[split] = _index(split, entries)
    return out


def _entries_of_latest(shard_dir: str, split: str) -> list[dict]:
    """Index entries of `split` as the LATEST snapshot of the output `shard_dir` is in lists it;
    from the stats files where the output has no snapshot."""
    out_dir = shard_dir.rstrip("/")[: -len("shards")].rstrip("/") or "."
    try:
        record = snapshots.read(out_dir) if snapshots.latest_id(out_dir) else None
    except snapshots.SnapshotError:
        record = None
    if record is None:
        return _entries_from_stats(shard_dir, split)
    return [{"url": e["shard"].rsplit("/", 1)[-1], "nsamples": e["samples"], "filesize": e["bytes"],
             "sha256": e.get("sha256")} for e in record.get("splits", {}).get(split, [])]


def _shard_sha256(shard_dir: str, name: str) -> str | None:
    """A shard's sha256 from its stats file, else from its bytes (once, for an output written
    before hashes were recorded); None where the shard cannot be read."""
    import hashlib

    try:
        sha = json.loads(fs.read_bytes(fs.join(shard_dir, stats_name(name)))).get("sha256")
        if sha:
            return sha
    except Exception:  # noqa: BLE001 — no stats file: hash the tar itself
        pass
    try:
        h = hashlib.sha256()
        with fs.open_read(fs.join(shard_dir, name)) as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        return h.hexdigest()
    except Exception:  # noqa: BLE001 — a shard that cannot be read has no hash; verify reports it
        return None


def _finish(out_dir: str, journal: dict, kind: str, meta: dict | None) -> dict:
    """The journal made version-keeping: the table parts it would delete move to
    `_snapshots/retired/` instead (the snapshots naming them still read them), and it carries
    the snapshot record of the output it leaves (see shards/snapshots.py)."""
    retire = [p for p in journal["deletes"] if _under(out_dir, p)]
    journal["deletes"] = [p for p in journal["deletes"] if p not in set(retire)]
    journal["renames"] += [(p, snapshots.retired_path(out_dir, snapshots.rel(out_dir, p))) for p in retire]
    gone = {src for src, _ in journal["renames"]} | set(journal["deletes"])
    tables = {}
    for table in TABLES:
        folder = table_dir(out_dir, table).rstrip("/") + "/"
        now = [p for p in _listed_table_files(out_dir, table) if p not in gone]
        tables[table] = now + [dst for _, dst in journal["renames"] if dst.startswith(folder)
                               and "/" not in dst[len(folder):] and dst.endswith(".parquet")]
    try:
        parent = snapshots.read(out_dir) if snapshots.latest_id(out_dir) else None
    except snapshots.SnapshotError:
        parent = None
    journal["snapshot"] = snapshots.make_record(out_dir, parent=parent, kind=kind, meta=meta,
                                                indexes=journal["indexes"], tables=tables, stats=journal["stats"])
    return journal


def _under(out_dir: str, path: str) -> bool:
    try:
        snapshots.rel(out_dir, path)
        return True
    except ValueError:
        return False


def shard_stats_file(rec: ShardRecord, name: str) -> tuple[str, bytes]:
    """The `.stats.json` written beside a shard's staged tar: (its staged path, its bytes)."""
    return (rec.path[: -len(".tar")] + ".stats.json",
            json.dumps({"shard": name, "split": rec.split, **rec.stats}, indent=1).encode())


def _shard_renames(shard_dir: str, records: list[ShardRecord], names: dict[str, str]) -> list[tuple[str, str]]:
    renames = []
    for rec in records:
        name = names[rec.path]
        stats_tmp, _ = shard_stats_file(rec, name)
        renames += [(stats_tmp, fs.join(shard_dir, stats_name(name))), (rec.path, fs.join(shard_dir, name))]
    return renames


# ------------------------------------------------------------------------------ totals
@dataclass
class Totals:
    """The output-wide counts of stats.json, added up one record batch at a time."""

    candidates: int = 0
    keyword_kept: int = 0
    keyword_rejected: int = 0
    videos_done: int = 0
    videos_failed: int = 0
    videos_deferred: int = 0  # walled: the next run tries them again
    clips: int = 0
    clips_kept: int = 0
    clips_train: int = 0
    clips_val: int = 0
    seconds_in: float = 0.0
    seconds_out: float = 0.0
    clips_rejected: dict[str, int] = field(default_factory=dict)
    failures_by_type: dict[str, int] = field(default_factory=dict)

    COLUMNS = {"manifest": ["kept", "reason", "split", "duration_s"], "videos": ["status", "seconds_in"],
               "candidates": ["keyword_verdict"], "failures": ["stage", "error_type"]}

    def add(self, table: str, b: pa.RecordBatch | pa.Table) -> None:
        n = b.num_rows
        if table == "candidates":
            self.candidates += n
            self.keyword_kept += _count_eq(b, "keyword_verdict", "keep")
            self.keyword_rejected += _count_eq(b, "keyword_verdict", "reject")
        elif table == "videos":
            self.videos_done += _count_eq(b, "status", "done")
            self.videos_failed += _count_eq(b, "status", "failed")
            self.videos_deferred += _count_eq(b, "status", "deferred")
            self.seconds_in += _sum(b["seconds_in"]) if "seconds_in" in b.schema.names else 0.0
        elif table == "manifest":
            kept = pc.fill_null(b["kept"], False)
            self.clips += n
            self.clips_kept += _sum(kept)
            self.clips_train += _sum(pc.and_(kept, pc.equal(b["split"], "train")))
            self.clips_val += _sum(pc.and_(kept, pc.equal(b["split"], "val")))
            self.seconds_out += _sum(pc.filter(b["duration_s"], kept))
            _tally(self.clips_rejected, pc.filter(b["reason"], pc.invert(kept)).to_pylist())
        elif table == "failures":
            _tally(self.failures_by_type, [f"{s}:{e}" for s, e in zip(b["stage"].to_pylist(), b["error_type"].to_pylist())])

    def stats(self, run_stats: dict, spec: ClipSpec) -> dict:
        return {"candidates": self.candidates, "keyword_kept": self.keyword_kept,
                "keyword_rejected": self.keyword_rejected, "videos_done": self.videos_done,
                "videos_failed": self.videos_failed, "videos_deferred": self.videos_deferred, "clips": self.clips, "clips_kept": self.clips_kept,
                "clips_rejected": dict(sorted(self.clips_rejected.items())), "clips_train": self.clips_train,
                "clips_val": self.clips_val, "hours_in": round(self.seconds_in / 3600, 4),
                "hours_out": round(self.seconds_out / 3600, 4),
                "failures_by_type": dict(sorted(self.failures_by_type.items())), "last_run": run_stats,
                "clip_spec": spec.to_json()}


def _count_eq(b, col: str, value: str) -> int:
    return _sum(pc.equal(b[col], value)) if col in b.schema.names else 0


def _sum(arr) -> Any:
    v = pc.sum(arr).as_py()
    return v or 0


def _tally(counts: dict[str, int], values: list) -> None:
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1


# ------------------------------------------------------------------------------ commit
@dataclass
class _Plan:
    renames: list = field(default_factory=list)
    deletes: list = field(default_factory=list)
    failures: list = field(default_factory=list)  # rows naming the parts moved aside
    totals: Totals = field(default_factory=Totals)


def _part_source(path: str) -> str | None:
    m = _PART.match(os.path.basename(path))
    return m.group("source") if m else None


@dataclass
class _Replaced:
    """What a commit's new rows replace in old parts: the rows of `videos` processed again,
    the discovery of `sources` discovered again, and the manifest rows of `clips` written
    into new shards (small shards of earlier runs, compacted)."""

    videos: set[str]
    sources: set[str]
    clips: set[str]

    def columns(self, table: str) -> list[str]:
        """The columns `mask` needs of a part of `table` ([]: none of its rows can be replaced)."""
        cols = []
        if self.videos and table != "candidates":
            cols.append("video_key")
        if self.sources and table in ("candidates", "failures"):
            cols += ["source", "stage"]
        if self.clips and table == "manifest":
            cols.append("key")
        return cols

    def mask(self, table: str, b):
        """True for the rows of batch `b` this commit replaces (None: none can be)."""
        def isin(col: str, values: set[str]):
            return pc.is_in(b[col], value_set=pa.array(sorted(values), pa.string()))

        drop = None
        for col in self.columns(table):
            if col == "video_key":
                m = isin("video_key", self.videos)
            elif col == "source":
                m = isin("source", self.sources)
                if table == "failures":
                    m = pc.and_(m, pc.equal(b["stage"], "discover"))
            elif col == "key":
                m = isin("key", self.clips)
            else:
                continue
            drop = m if drop is None else pc.or_(drop, m)
        return None if drop is None else pc.fill_null(drop, False)


def _merge_old_part(out_dir: str, table: str, path: str, work: str, run_id: str, replaced: _Replaced,
                    plan: _Plan) -> None:
    """Keep, delete, rewrite without the replaced rows, or (unreadable) move aside one existing
    part, adding what stays to the totals."""
    source = _part_source(path)
    if source and source in replaced.sources:
        plan.deletes.append(path)
        return
    try:
        batches = list(iter_part_batches(path, list(Totals.COLUMNS[table]) + replaced.columns(table)))
        dropped = [m for m in (replaced.mask(table, b) for b in batches) if m is not None]
        if not any(_sum(m) for m in dropped):
            for b in batches:
                plan.totals.add(table, b)
            return
        whole = pa.Table.from_batches(list(iter_part_batches(path)))
        keep = pc.invert(replaced.mask(table, whole))
    except DataError as e:
        dest = fs.join(out_dir, "_corrupt", table, f"{run_id}-{os.path.basename(path)}")
        plan.renames.append((path, dest))
        plan.failures.append(Failure(video_key="", video_id="", source=source or "", stage="commit",
                                     error_type="CorruptTablePart",
                                     message=f"{e}; moved to {dest}: the commit restores the rows of it that "
                                             "the shards, clip stores and other tables still hold").row())
        return
    kept = whole.filter(keep)
    plan.deletes.append(path)
    if kept.num_rows:
        new = part_file(work, run_id, source or "")
        _write_table(new, table, kept)
        plan.renames.append((new, fs.join(table_dir(out_dir, table), os.path.basename(new))))
        plan.totals.add(table, kept)


def _add_part(out_dir: str, work: str, run_id: str, table: str, rows: list[dict], plan: _Plan) -> None:
    """`rows` as one new part of `table`, published by the commit and counted in its totals."""
    path = part_file(work, run_id)
    _write_table(path, table, rows)
    plan.renames.append((path, fs.join(table_dir(out_dir, table), os.path.basename(path))))
    plan.totals.add(table, pa.Table.from_pylist([{k: _null_nan(r.get(k)) for k in SCHEMAS[table].names}
                                                 for r in rows], schema=SCHEMAS[table]))


def _final_parts(out_dir: str, table: str, plan: _Plan) -> list[str]:
    """The parts `table` will have once `plan` is applied, each where it can be read now."""
    gone = set(plan.deletes) | {src for src, _ in plan.renames}
    folder = table_dir(out_dir, table).rstrip("/") + "/"
    return [p for p in table_files(out_dir, table) if p not in gone] + \
        [src for src, dst in plan.renames if dst.startswith(folder) and "/" not in dst[len(folder):]]


def _rows_where(paths: list[str], col: str, values: set[str], columns: list[str] | None = None) -> list[dict]:
    want = pa.array(sorted(values), pa.string())
    return [r for path in paths for b in iter_part_batches(path, columns)
            for r in b.filter(pc.fill_null(pc.is_in(b[col], value_set=want), False)).to_pylist()]


RESTORED_REASON = "restored"  # a clip rejected after it was cut whose reason was in a lost part


def _clips_of_damaged_shards(out_dir: str, manifest: list[str], per_shard: Counter,
                             indexes: dict[str, dict | None]) -> list[ClipRow]:
    """The manifest rows (from the samples' JSON) of the clips in shards that hold more
    samples than `manifest`'s parts name (`per_shard`: rows naming each shard)."""
    damaged = {e["url"] for index in indexes.values() if index for e in index["shardlist"]
               if e["nsamples"] > per_shard.get(e["url"], 0)}
    if not damaged:
        return []
    named = {r["key"] for r in _rows_where(manifest, "shard", damaged, ["key", "shard"])}
    restored = []
    for name in sorted(damaged):
        try:
            for key, sample in iter_tar_samples(fs.join(out_dir, "shards", name)):
                if key not in named and "json" in sample:
                    restored.append(clip_from_sample(json.loads(sample["json"]), name, len(sample.get("mp4", b""))))
        except TAR_ERRORS as e:  # a shard that cannot be read is verify's to report
            logging.getLogger(__name__).warning("cannot restore rows from %s: %s", name, e)
    return restored


def _restore_lost_rows(out_dir: str, work: str, run_id: str, plan: _Plan, indexes: dict[str, dict | None]) -> None:
    """Rows of the parts this commit moves aside, from what the output still holds: the
    manifest rows of kept clips from their shards (a shard holding more samples than the
    manifest names), the other clips of a done video short of rows from its clip store
    (rejected, `reason` theirs or RESTORED_REASON), and the `videos` row of a video with
    clips (from its clip store and rows) or failures but none. The parts are moved aside
    unread, so what they held is found by reconciling the tables with each other and with
    the shards; the rows of other runs' parts are never touched."""
    manifest = _final_parts(out_dir, "manifest", plan)
    per_shard: Counter = Counter()
    per_video: Counter = Counter()
    for path in manifest:
        for b in iter_part_batches(path, ["video_key", "shard"]):
            per_video.update(b["video_key"].to_pylist())
            per_shard.update(x for x in b["shard"].to_pylist() if x)
    done: dict[str, int] = {}
    has_row: set[str] = set()
    for path in _final_parts(out_dir, "videos", plan):
        for b in iter_part_batches(path, ["video_key", "status", "n_clips"]):
            for k, status, n in zip(*(b[c].to_pylist() for c in ("video_key", "status", "n_clips"))):
                has_row.add(k)
                if status == "done":
                    done[k] = n or 0
    restored = _clips_of_damaged_shards(out_dir, manifest, per_shard, indexes)
    per_video.update(c.video_key for c in restored)
    stores = {}
    short = {k for k, n in done.items() if per_video.get(k, 0) < n}
    if short:
        have = {r["key"] for r in _rows_where(manifest, "video_key", short, ["key", "video_key"])}
        have |= {c.key for c in restored}
        for vk in sorted(short):
            if fs.exists(store_path(out_dir, vk)):
                stores[vk] = read_store_result(store_path(out_dir, vk))
                restored += [dataclasses.replace(c, kept=False, shard=None, reason=c.reason or RESTORED_REASON)
                             for c in stores[vk].clips if c.key not in have]
    video_rows = []
    missing = {k for k in per_video if k not in has_row}
    if missing:
        by_video: dict[str, list[dict]] = {}
        for r in _rows_where(manifest, "video_key", missing) + [c.row() for c in restored if c.video_key in missing]:
            by_video.setdefault(r["video_key"], []).append(r)
        for vk, clips in sorted(by_video.items()):
            kept = [c for c in clips if c["kept"]]
            store = stores.get(vk) or (read_store_result(store_path(out_dir, vk))
                                       if fs.exists(store_path(out_dir, vk)) else None)
            video_rows.append({"video_key": vk, "video_id": clips[0]["video_id"], "source": clips[0]["source"],
                               "title": clips[0]["title"], "status": "done", "n_clips": len(clips),
                               "n_kept": len(kept), "seconds_in": store.seconds_in if store else None,
                               "seconds_out": sum(c["duration_s"] or 0.0 for c in kept), "error": "",
                               "split": (kept or clips)[0]["split"], "path": store.path if store else None})
    failures = _final_parts(out_dir, "failures", plan)
    failed = {k for path in failures for b in iter_part_batches(path, ["video_key", "stage"])
              for k, stage in zip(b["video_key"].to_pylist(), b["stage"].to_pylist())
              if k and stage != "discover" and k not in has_row and k not in missing}
    if failed:
        rows = [from_row(Failure, r) for r in _rows_where(failures, "video_key", failed) if r["stage"] != "discover"]
        video_rows += [failed_video_row(f) for f in _first_per_video(rows)]
    if restored:
        _add_part(out_dir, work, run_id, "manifest", [c.row() for c in restored], plan)
    if video_rows:
        _add_part(out_dir, work, run_id, "videos", video_rows, plan)
    logging.getLogger(__name__).warning("%s: parts moved aside; %d manifest and %d videos rows restored", out_dir,
                                        len(restored), len(video_rows))


def _keep_every_table(out_dir: str, work: str, run_id: str, plan: _Plan) -> None:
    """An empty part for each table the commit would leave without one: every table stays a
    dataset with its schema (DuckDB and BigQuery refuse a pattern that matches no file)."""
    deleted = set(plan.deletes) | {src for src, _ in plan.renames}
    for table in TABLES:
        folder = table_dir(out_dir, table).rstrip("/") + "/"
        if any(dst.startswith(folder) for _, dst in plan.renames) or \
                any(p not in deleted for p in table_files(out_dir, table)):
            continue
        path = part_file(work, run_id)
        _write_table(path, table, [])
        plan.renames.append((path, fs.join(table_dir(out_dir, table), os.path.basename(path))))


def _keys_of(paths: list[str], table: str) -> set[str]:
    """Video keys of the rows of `paths` that stand for a video's processing (not discovery)."""
    keys: set[str] = set()
    for path in paths:
        if _part_source(path):
            continue
        for b in iter_part_batches(path, ["video_key"]):
            keys.update(b["video_key"].to_pylist())
    return keys


def commit_parts(out_dir: str, *, run_id: str, parts: dict[str, list[str]], shard_records: list[ShardRecord],
                 shard_names: dict[str, str] | None = None, spec: ClipSpec, sources: Iterable[str] = (),
                 run_stats: dict | None = None, cleanup: Iterable[str] = (),
                 redone: set[str] | None = None, compacted: dict[str, list[str]] | None = None,
                 snapshot_meta: dict | None = None) -> dict:
    """Publish one run: its staged table `parts` ({table: [paths]}) and shards (`shard_records`,
    staged with their `.stats.json` beside them; `shard_names` maps a staged tar's path to its
    final name, by default its own file name). `sources`: the sources this run discovered.
    `redone`: keys of videos this run processed again that may have earlier rows (None: any
    video of this run may). `compacted`: {old shard name: its clip keys} for small shards of
    earlier runs whose clips this run wrote again, into its own shards: the old shards go, and
    so do their manifest rows (the new ones are in `parts`); the old shards themselves stay
    for the snapshots that name them (`gc` deletes them). `snapshot_meta`: what the snapshot
    record says of the command ({"command", "config_sha256", ...}). Returns the output's new
    stats."""
    recover(out_dir)
    prev = read_stats(out_dir)
    if run_id and prev.get("last_run", {}).get("run_id") == run_id:
        return prev  # this run is committed already (a retried commit step)
    check_spec(out_dir, spec)
    shard_dir = fs.join(out_dir, "shards")
    names = shard_names or {r.path: os.path.basename(r.path) for r in shard_records}
    existing = {os.path.basename(p) for split in SPLITS for p in existing_shards(shard_dir, split)}
    taken = sorted(set(names.values()) & existing)  # one listing, not a request per shard
    if taken:
        raise DataError(f"{out_dir}: shard {taken[0]} already exists; a run's shards need names of their own")
    work = fs.join(out_dir, "_commit", run_id)
    if redone is None:
        redone = _keys_of(parts.get("videos", []), "videos") | _keys_of(parts.get("failures", []), "failures")
    rediscovered = set(sources) | {s for p in parts.get("candidates", []) + parts.get("failures", [])
                                   if (s := _part_source(p))}
    compacted = compacted or {}
    replaced = _Replaced(redone, rediscovered, {k for keys in compacted.values() for k in keys})
    plan = _Plan()
    for table in TABLES:
        for path in table_files(out_dir, table):
            _merge_old_part(out_dir, table, path, work, run_id, replaced, plan)
        legacy = legacy_table_path(out_dir, table)
        if fs.exists(legacy) and legacy not in plan.deletes and legacy not in {s for s, _ in plan.renames}:
            # an old layout's one file joins the table's folder: one pattern reads the whole table
            plan.renames.append((legacy, fs.join(table_dir(out_dir, table), LEGACY_PART)))
        for path in parts.get(table, []):
            for b in iter_part_batches(path, Totals.COLUMNS[table]):
                plan.totals.add(table, b)
            plan.renames.append((path, fs.join(table_dir(out_dir, table), os.path.basename(path))))
    indexes = _updated_indexes(shard_dir, shard_records, names, set(compacted))
    if plan.failures:  # parts moved aside
        _restore_lost_rows(out_dir, work, run_id, plan, indexes)
        _add_part(out_dir, work, run_id, "failures", plan.failures, plan)
    _keep_every_table(out_dir, work, run_id, plan)
    stats = plan.totals.stats(run_stats or {}, spec)
    journal = {"renames": _shard_renames(shard_dir, shard_records, names) + plan.renames, "deletes": plan.deletes,
               "indexes": indexes, "stats": stats, "cleanup": list(cleanup) + [work]}
    _finish(out_dir, journal, "ingest", {**(snapshot_meta or {}),
                                         **({"compacted_shards": sorted(compacted)} if compacted else {})})
    fs.write_bytes(fs.join(out_dir, JOURNAL), json.dumps(journal).encode())
    _apply(out_dir, journal)
    return stats


def check_spec(out_dir: str, spec: ClipSpec) -> None:
    """One output holds clips of one spec: DataError if OUT recorded another. A run checks
    before it cuts anything (its clip stores would otherwise be staged for the next run)."""
    recorded = read_spec(out_dir)
    if recorded is not None and recorded != spec:
        raise DataError(f"{out_dir} holds clips of {recorded}; this run would cut {spec}: "
                        "write to another output directory, or set clips back")


def commit_run(out_dir: str, *, candidates: list[Candidate], failures: list[Failure],
               videos: list[VideoResult], shard_records: list[ShardRecord], stats: dict,
               spec: ClipSpec, cleanup: list[str], sources: Iterable[str] = (),
               snapshot_meta: dict | None = None) -> dict:
    """Commit one run's results held in memory (small runs, tests and fixtures; an ingest job
    commits its staged parts with `commit_parts`): shards are numbered after the ones there,
    `{split}-NNNNNN.tar`. Returns the merged stats (which record `spec`, the clip format every
    reader checks the output against)."""
    run_id = _run_id()
    names = _numbered(fs.join(out_dir, "shards"), shard_records)
    final_of = {k: names[r.path] for r in shard_records for k in r.keys}
    for r in shard_records:
        _write_shard_stats(r, names[r.path])
    manifest = []
    for v in videos:
        for c in v.clips:
            manifest.append(c.row() | {"shard": final_of.get(c.key) if c.kept else None})
    failed_keys = {f.video_key for f in failures if f.stage != "discover"}
    video_rows = [v.row() for v in videos if v.video_key not in failed_keys or v.clips]
    done = {v.video_key for v in videos}
    video_rows += [failed_video_row(f) for f in _first_per_video(failures) if f.video_key not in done]
    staged = fs.join(out_dir, "_commit", "staged-" + run_id)
    rows = {"manifest": manifest, "videos": video_rows, "failures": [f.row() for f in failures],
            "candidates": [c.row() for c in candidates]}
    parts = {t: write_parts(fs.join(staged, t), t, run_id, rs) for t, rs in rows.items()}
    return commit_parts(out_dir, run_id=run_id, parts=parts, shard_records=shard_records, shard_names=names,
                        spec=spec, sources=sources, run_stats={**stats, "run_id": stats.get("run_id", run_id)},
                        cleanup=list(cleanup) + [staged], snapshot_meta=snapshot_meta)


def _run_id() -> str:
    import time

    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _write_shard_stats(rec: ShardRecord, name: str) -> None:
    fs.write_bytes(*shard_stats_file(rec, name))


def _numbered(shard_dir: str, records: list[ShardRecord], start: dict[str, int] | None = None) -> dict[str, str]:
    """Final names `{split}-NNNNNN.tar` after the numbered shards already there (or from
    `start`), in a deterministic order: staged path -> name."""
    nxt = dict(start) if start is not None else {s: _next_index(shard_dir, s) for s in SPLITS}
    names = {}
    for rec in sorted(records, key=lambda r: (r.split, r.order)):
        names[rec.path] = shard_name(rec.split, nxt[rec.split])
        nxt[rec.split] += 1
    return names


def _next_index(shard_dir: str, split: str) -> int:
    idx = [int(n[len(split) + 1: -4]) for n in map(os.path.basename, existing_shards(shard_dir, split))
           if n[len(split) + 1: -4].isdigit()]
    return max(idx) + 1 if idx else 0


def _first_per_video(failures: list[Failure]) -> list[Failure]:
    seen, out = set(), []
    for f in failures:
        if f.video_key not in seen and f.stage != "discover":
            seen.add(f.video_key)
            out.append(f)
    return out


def failed_video_row(f: Failure) -> dict:
    """The `videos` row of a video that failed (its first failure): `deferred` where a later
    run tries it again by itself (a wall), else `failed`."""
    return {"video_key": f.video_key, "video_id": f.video_id, "source": f.source, "title": f.title, "path": f.path,
            "status": "deferred" if f.retry == "next_run" else "failed", "n_clips": 0, "n_kept": 0, "seconds_in": 0.0, "seconds_out": 0.0,
            "error": f"{f.stage}:{f.error_type}: {f.message}"[:500], "split": ""}


# ------------------------------------------------------------------------------ reshard
def reshard(out_dir: str, decide: Callable[[list[dict]], None], target_bytes: int, max_clips: int,
            spec: ClipSpec | None = None, snapshot_meta: dict | None = None) -> tuple[dict, dict[str, int]]:
    """Apply new kept flags to the output (refilter): `decide(rows)` updates the manifest rows
    of one part in place (it is called twice per part, so it must give the same answer each
    time). Shards that lose clips are rewritten without them (tar members copied, nothing
    decoded) under new names (the old ones stay for the snapshots naming them); clips newly
    kept are written from the clip store into new shards; manifest parts are rewritten with
    the new flags and shard names; all in one journalled commit. Memory: one part's rows and
    the clips that change. The clip spec is the one the output recorded; `spec` serves outputs written before it was recorded. Returns the output's new stats and
    the clips that moved: {"kept": newly kept, "rejected": newly rejected}."""
    recover(out_dir)
    spec = read_spec(out_dir) or spec
    if spec is None:
        raise DataError(f"{out_dir}/stats.json records no clip_spec: give the spec it was written with")
    run_id = _run_id()
    shard_dir = fs.join(out_dir, "shards")
    tmp, work = fs.join(shard_dir, "_tmp", run_id), fs.join(out_dir, "_commit", run_id)
    dropped: dict[str, set[str]] = {}
    added: dict[str, list[ClipRow]] = {}
    moved = {"kept": 0, "rejected": 0}
    for rows in _row_batches(table_files(out_dir, "manifest")):
        was = [bool(r["kept"]) for r in rows]
        decide(rows)
        for before, r in zip(was, rows):
            moved["kept"] += r["kept"] and not before
            moved["rejected"] += before and not r["kept"]
            if before and not r["kept"] and r.get("shard"):
                dropped.setdefault(r["shard"], set()).add(r["key"])
            elif r["kept"] and not (before and r.get("shard")):
                added.setdefault(r["video_key"], []).append(from_row(ClipRow, r))
    renames, deletes, records = [], [], []
    renamed: dict[str, str | None] = {}  # a rewritten shard's old name -> its new one (None: emptied)
    tag = uuid.uuid4().hex[:8]
    for i, (name, keys) in enumerate(sorted(dropped.items())):
        split = name.split("-", 1)[0]
        new = f"{split}-{run_id}-{tag}-{i:04d}.tar"  # never the old name: a shard is never rewritten in place
        left = rewrite_without(fs.join(shard_dir, name), fs.join(tmp, new), keys)
        renamed[name] = None if left is None else new
        if left is not None:
            records.append(ShardRecord(path=fs.join(tmp, new), split=split, order=new, stats=left))
    writer = StreamingShards(tmp, run_id, target_bytes, max_clips, spec)
    videos = [VideoResult(video_key=vk, video_id=cl[0].video_id, source=cl[0].source, title=cl[0].title,
                          status="done", clips=cl, split=cl[0].split, store=store_path(out_dir, vk))
              for vk, cl in sorted(added.items())]
    shard_of = {}
    for split in SPLITS:
        for rec, clips in [*writer.write([v for v in videos if v.split == split]), *writer.close()]:
            _write_shard_stats(rec, os.path.basename(rec.path))
            records.append(rec)
            shard_of.update((c.key, os.path.basename(rec.path)) for c in clips)
    renames += _shard_renames(shard_dir, records, {r.path: os.path.basename(r.path) for r in records})
    totals = Totals()

    def decided(path: str):
        for rows in _row_batches([path]):
            decide(rows)
            for r in rows:
                old = r.get("shard")
                r["shard"] = (shard_of.get(r["key"], renamed.get(old) or old) if r["kept"] else None)
            totals.add("manifest", pa.Table.from_pylist([{k: r[k] for k in Totals.COLUMNS["manifest"]} for r in rows]))
            yield rows

    for path in table_files(out_dir, "manifest"):
        new = part_file(work, run_id)
        _write_streamed(new, "manifest", decided(path))
        deletes.append(path)
        renames.append((new, fs.join(table_dir(out_dir, "manifest"), os.path.basename(new))))
    for table in ("videos", "failures", "candidates"):
        for path in table_files(out_dir, table):
            for b in iter_part_batches(path, Totals.COLUMNS[table]):
                totals.add(table, b)
    stats = totals.stats({**read_stats(out_dir).get("last_run", {}), "refiltered": run_id}, spec)
    indexes = _updated_indexes(shard_dir, records, {r.path: os.path.basename(r.path) for r in records},
                               set(renamed))
    journal = {"renames": renames, "deletes": deletes, "indexes": indexes, "stats": stats, "cleanup": [tmp, work]}
    _finish(out_dir, journal, "refilter", {**(snapshot_meta or {}), "moved": moved, "run_id": run_id})
    fs.write_bytes(fs.join(out_dir, JOURNAL), json.dumps(journal).encode())
    _apply(out_dir, journal)
    return stats, moved


def _row_batches(paths: list[str], batch_rows: int = 16384):
    for path in paths:
        for b in iter_part_batches(path, batch_rows=batch_rows):
            yield b.to_pylist()


def rewrite_without(src: str, dest: str, drop: set[str]) -> dict | None:
    """Copy shard `src` to `dest` (which may be `src`: it is read whole first) without the
    samples `drop` names, with its stats file beside it; its new stats (ShardRecord.stats),
    or None where nothing is left (nothing is written then)."""
    import hashlib
    import io

    import webdataset as wds

    from genie_pipeline.shards.reader import iter_tar_samples

    buf, keys, videos, seconds = io.BytesIO(), 0, set(), 0.0
    with wds.TarWriter(buf) as tw:
        for key, parts in iter_tar_samples(src):
            if key in drop:
                continue
            meta = json.loads(parts.get("json") or b"{}")
            keys, seconds = keys + 1, seconds + float(meta.get("duration_s") or 0.0)
            videos.add(meta.get("video_key"))
            tw.write({"__key__": key, **parts})
    if not keys:
        return None
    data = buf.getvalue()
    name = os.path.basename(dest)
    fs.write_bytes(dest, data)
    split = name.split("-", 1)[0]
    stats = {"n_samples": keys, "n_videos": len(videos), "bytes": len(data), "seconds": round(seconds, 3),
             "sha256": hashlib.sha256(data).hexdigest()}
    fs.write_bytes(dest[: -len(".tar")] + ".stats.json",
                   json.dumps({"shard": name, "split": split, **stats}, indent=1).encode())
    return stats
