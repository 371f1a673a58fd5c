"""The one reader of an ingest output `OUT/` and of WebDataset shards, for every consumer:
quality training and scoring, refilter, verify, the training loader and the labelling page.

    OUT/
      manifest/ videos/ failures/ candidates/   tables: Parquet part files (`read_rows`, `iter_rows`)
      stats.json                      counts and the clip spec the output was written with
      clips/{video_key}.tar           the clip store (`shards.store`)
      shards/{split}-NNNNNN.tar       WebDataset shards (+ .stats.json each)

- `read_rows(out, table)`, `read_stats(out)`, `read_spec(out)`;
- `existing_shards(shard_dir, split)` (every shard file there, retained ones included),
  `live_shards(shard_dir, split)` (those of the current version), `resolve_inputs(inputs, split)`:
  the shards behind output dirs (pinned to a snapshot: `OUT` is its LATEST, `OUT@<id>` that
  one), shard dirs, tars and globs (local or remote);
- `iter_tar_clips(path, stats)`: the clips of one shard as they stream by;
- `ClipIndex.open(path)`: clips by key with their bytes on demand, from an ingest output (clip
  store, else shards), a directory of stores or shards, or any folder of `.mp4` clips.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tarfile
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pyarrow.parquet as pq

from genie_pipeline.shards import fs, snapshots
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.store import VIDEO_JSON

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
CLIP_EXTS = ("mp4",)


class DataError(RuntimeError):
    """Input that cannot be read as a dataset: nothing there, unreadable tables, or too many
    missing or corrupt shards. The message names the path."""


# ------------------------------------------------------------------------------ tables
# A table is a folder of Parquet part files, `OUT/{name}/part-*.parquet`, each written whole
# by one job bundle or commit: readable as one dataset by pyarrow (`pq.read_table("OUT/manifest")`),
# pandas, DuckDB (`read_parquet('OUT/manifest/*.parquet')`) and BigQuery external tables.
# Outputs written before part files hold one `OUT/{name}.parquet`; it is read as one more part.
def table_dir(out_dir: str, name: str) -> str:
    return fs.join(out_dir, name)


def legacy_table_path(out_dir: str, name: str) -> str:
    return fs.join(out_dir, f"{name}.parquet")


# A commit (shards/commit.py) changes many objects: it writes its journal first, then deletes
# the parts it replaces and moves the new ones in (on GCS a copy and a delete each), then
# rewrites stats.json and removes the journal. A listing taken meanwhile can hold some of the
# new parts and not others, or a rewritten part twice (its copy done, its delete not yet).
# So `table_files` never returns such a listing: it reads the journal and stats.json before
# and after listing, and lists again unless both are unchanged; with a journal there, the
# files are those the journal says the table will hold (each new part where it is now: at its
# destination once copied, else still in staging), never the listing as it is. A reader thus
# sees the table before a commit or after it, never between. A part that a commit moves or
# deletes while it is being read is reported (PartMoved), never skipped: `read_rows` starts
# over then.
JOURNAL = "_commit.json"


class PartMoved(DataError):
    """A table part went away while it was read: a commit replaced or moved it meanwhile."""


def table_files(out_dir: str, name: str) -> list[str]:
    """The part files of one table, oldest layout first, then by name (a part's name starts
    with its run id, so by run): the table as the last commit left it, or, while a commit is
    under way or was cut short, as that commit leaves it (see above)."""
    for _ in range(8):
        before = _commit_state(out_dir)
        listed = _listed_table_files(out_dir, name)
        if _commit_state(out_dir) == before:
            if before[0] is None:
                return listed
            return _as_committed(out_dir, name, listed, json.loads(before[0]))
    raise DataError(f"{out_dir}: commits kept changing the output while {name} was listed; try again")


def _commit_state(out_dir: str) -> tuple[bytes | None, bytes | None]:
    """The journal and stats.json as they are (None: not there): every commit changes one."""
    def read(path: str) -> bytes | None:
        try:
            return fs.read_bytes(path)
        except Exception:  # noqa: BLE001 — missing, on any filesystem (each raises its own type)
            return None
    return read(fs.join(out_dir, JOURNAL)), read(fs.join(out_dir, "stats.json"))


def _listed_table_files(out_dir: str, name: str) -> list[str]:
    legacy = legacy_table_path(out_dir, name)
    parts = [p for p in fs.glob(fs.join(table_dir(out_dir, name), "*.parquet"))
             if not os.path.basename(p).startswith(("_", "."))]
    return ([legacy] if fs.exists(legacy) else []) + parts


def _as_committed(out_dir: str, name: str, listed: list[str], journal: dict) -> list[str]:
    """The files of the table once `journal` is applied, read from where each is now."""
    folder = table_dir(out_dir, name).rstrip("/") + "/"
    legacy = legacy_table_path(out_dir, name)
    renames = journal.get("renames", [])
    gone = set(journal.get("deletes", [])) | {src for src, _ in renames}
    have = set(listed)
    final = {p: p for p in listed if p not in gone}  # final path -> where to read it now
    for src, dst in renames:
        base = dst[len(folder):]
        if dst.startswith(folder) and "/" not in base and base.endswith(".parquet") \
                and not base.startswith(("_", ".")):
            final[dst] = dst if dst in have else src
    return [final[p] for p in sorted(final, key=lambda p: (p != legacy, p))]


def table_rows(out_dir: str, name: str) -> int:
    """Rows of one table, from its parts' footers (nothing else is read); 0 where unreadable."""
    n = 0
    for path in table_files(out_dir, name):
        try:
            with fs.open_read(path) as f:
                n += pq.ParquetFile(f).metadata.num_rows
        except Exception:  # noqa: BLE001 — a count for a message; readers report damage
            continue
    return n


def has_table(out_dir: str, name: str) -> bool:
    return bool(table_files(out_dir, name))


class _Watched:
    """A file whose own errors are kept aside: pyarrow passes on what the file object raises,
    so an error seen here is the store's (a request that failed, a part that went away), not
    the part's content, which must never be called damaged (and moved aside) for it."""

    def __init__(self, f):
        self._f, self.error = f, None

    def __getattr__(self, name):
        return getattr(self._f, name)

    def _call(self, name: str, *args):
        try:
            return getattr(self._f, name)(*args)
        except Exception as e:
            self.error = e
            raise

    def read(self, *args):
        return self._call("read", *args)

    def seek(self, *args):
        return self._call("seek", *args)

    def tell(self):
        return self._call("tell")


def iter_part_batches(path: str, columns: list[str] | None = None, batch_rows: int = 65536):
    """Record batches of one part file, read a row group at a time (memory: one batch).
    `columns` the part lacks (an older schema) are left out. DataError names a damaged part;
    an error of the store (opening or reading the file) is raised as it is."""
    watched = None
    try:
        with fs.open_read(path) as f:
            watched = _Watched(f)
            pf = pq.ParquetFile(watched)
            have = set(pf.schema_arrow.names)
            cols = None if columns is None else [c for c in columns if c in have]
            yield from pf.iter_batches(batch_size=batch_rows, columns=cols)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 — pyarrow raises many types for a damaged file
        if watched is None or watched.error is not None:
            raise
        raise DataError(f"cannot read table part {path}: {e}") from None


def iter_rows(out_dir: str, name: str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one table as they stream from its parts; a table not written yet has none.
    PartMoved where a commit took a part away before it was read (the rows streamed so far
    belong to the table as it was)."""
    for path in table_files(out_dir, name):
        try:
            for batch in iter_part_batches(path, columns):
                yield from batch.to_pylist()
        except Exception as e:  # noqa: BLE001 — a damaged part, or the store's error
            if isinstance(e, PartMoved) or fs.exists(path):
                raise
            raise PartMoved(f"{path} was moved by a commit while {name} was read") from None


def read_rows(out_dir: str, name: str, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of one table (a table not written yet has none): those of one committed state
    of the output, read again from the start where a commit moved a part meanwhile."""
    for attempt in range(8):
        try:
            return list(iter_rows(out_dir, name, columns))
        except PartMoved:
            if attempt == 7:
                raise
    raise AssertionError("unreachable")


def read_stats(out_dir: str) -> dict[str, Any]:
    p = fs.join(out_dir, "stats.json")
    return json.loads(fs.read_bytes(p)) if fs.exists(p) else {}


def read_spec(out_dir: str) -> ClipSpec | None:
    """The clip spec the output was written with (None: an output that predates recording it)."""
    spec = read_stats(out_dir).get("clip_spec")
    return ClipSpec.from_json(spec) if spec else None


# ------------------------------------------------------------------------------ shards
def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def stats_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".stats.json"


# a shard's name after its split: a number (`train-000012.tar`, numbered at commit) or the
# run, writer and number that wrote it (`train-20261202T071500-1a2b3c-9f8e7d6c-0003.tar`)
_SHARD_ID = re.compile(r"(\d{6,}|\d{8}T\d{6}-[0-9a-f]{6}-[0-9a-f]{8}-\d{4,})\.tar")


def existing_shards(shard_dir: str, split: str) -> list[str]:
    return [p for p in fs.glob(fs.join(shard_dir, f"{split}-*.tar"))
            if _SHARD_ID.fullmatch(os.path.basename(p)[len(split) + 1:])]


def live_shards(shard_dir: str, split: str) -> list[str]:
    """The shards of `split` in the output's current version (the commit keeps shards that
    snapshots still name beside them): those the LATEST snapshot of the output `shard_dir`
    belongs to lists, else those its index lists, else every shard there."""
    out = shard_dir.rstrip("/").rsplit("/", 1)[0] if fs.is_remote(shard_dir) else os.path.dirname(
        os.path.normpath(fs.local(shard_dir)))
    if shard_dir.rstrip("/").endswith("shards") and snapshots.latest_id(out):
        try:
            return [e["path"] for e in snapshots.shards_of(out, snapshots.read(out), split)]
        except snapshots.SnapshotError:
            pass  # a record gc is removing: the index says the same
    ip = fs.join(shard_dir, f"{split}.index.json")
    try:
        entries = json.loads(fs.read_bytes(ip))["shardlist"]
    except Exception:  # noqa: BLE001 — no index (an older output, or a split without shards)
        return existing_shards(shard_dir, split)
    return [fs.join(shard_dir, e["url"]) for e in entries]


@dataclass
class ShardSet:
    shards: list[str]
    manifests: list[str] = field(default_factory=list)  # the ingest output dirs whose manifest describes them
    inputs: list[str] = field(default_factory=list)
    snapshots: dict[str, str] = field(default_factory=dict)  # ingest output dir -> the snapshot id pinned
    sha256: dict[str, str] = field(default_factory=dict)  # shard -> its sha256, where a snapshot records it


def _no_val_hint() -> str:
    return ("; the ingest put every video in train (it does where one video has clips, or shards.val_fraction "
            "is 0): ingest more videos, or into a new output with --set shards.val_fraction=0.3, or give shards "
            "of held-out videos")


def _pinned(out: str, snap_id: str | None, split: str, into: ShardSet) -> None:
    """Add the shards of one snapshot of the output `out` (None: LATEST) to `into`."""
    try:
        record = snapshots.read(out, snap_id)
    except snapshots.SnapshotError as e:
        raise DataError(str(e)) from None
    found = snapshots.shards_of(out, record, split)
    if not found:
        hint = _no_val_hint() if split == "val" and snapshots.shards_of(out, record, "train") else ""
        raise DataError(f"{out}@{record['id']}: the snapshot has no {split} shards{hint}")
    into.snapshots[out] = record["id"]
    into.shards += [e["path"] for e in found]
    into.sha256.update((e["path"], e["sha256"]) for e in found if e.get("sha256"))


def resolve_inputs(inputs: Sequence[str], split: str = "train") -> ShardSet:
    """Shards (and manifests) behind the inputs. Each input is an ingest output dir (the
    shards of its LATEST snapshot, or of `OUT@<id>`; an output without snapshots: every
    `shards/SPLIT-*.tar`; the output is recorded, its manifest table describes them), a dir of
    shards (those its index lists), a tar or a glob."""
    if isinstance(inputs, str):
        inputs = [inputs]
    shards: list[str] = []
    manifests: list[str] = []
    pinned = ShardSet(shards=[])
    for inp in inputs:
        inp = str(inp)
        out, snap_id = snapshots.split_pin(inp)
        if snap_id is not None or (not any(c in fs.GLOB_CHARS for c in inp) and not inp.endswith(".tar")
                                   and snapshots.latest_id(inp) is not None):
            before = len(pinned.shards)
            _pinned(out, snap_id, split, pinned)
            shards += pinned.shards[before:]
            manifests.append(out)
            continue
        if any(c in fs.GLOB_CHARS for c in inp):
            found = fs.glob(inp)
            if not found:
                raise DataError(f"{inp}: the pattern matches no files")
            shards += found
        elif inp.endswith(".tar"):
            shards.append(inp)
        elif fs.isdir(inp):
            base = inp
            if fs.isdir(fs.join(inp, "shards")):
                base = fs.join(inp, "shards")
                if has_table(inp, "manifest"):
                    manifests.append(inp)
            elif not fs.is_remote(inp) and has_table(os.path.normpath(fs.join(inp, "..")), "manifest"):
                manifests.append(os.path.normpath(fs.join(inp, "..")))
            found = live_shards(base, split)
            if not found:
                hint = _no_val_hint() if split == "val" and fs.glob(fs.join(base, "train-*.tar")) else ""
                raise DataError(f"{inp}: no {split}-*.tar shards in {base}{hint}")
            shards += found
        else:
            raise DataError(f"{inp}: no such directory or shard (give an ingest output dir, a .tar or a glob)")
    seen = set()
    uniq = [s for s in shards if not (s in seen or seen.add(s))]
    if not uniq:
        raise DataError("no shards given")
    return ShardSet(shards=uniq, manifests=manifests, inputs=list(inputs), snapshots=pinned.snapshots,
                    sha256=pinned.sha256)


@dataclass
class Clip:
    key: str
    data: bytes
    meta: dict


def _sample_key(name: str) -> tuple[str, str]:
    base = os.path.basename(name)
    prefix = os.path.dirname(name)
    key, _, ext = base.partition(".")  # WebDataset cuts the key at the first dot
    return (f"{prefix}/{key}" if prefix else key), ext


# what a damaged or truncated tar raises while it is read
TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


class ShardChanged(OSError):
    """A pinned shard's bytes do not hash to the sha256 its snapshot recorded."""


class _Hashing:
    """A reader that hashes every byte read through it."""

    def __init__(self, f):
        import hashlib

        self._f, self.h = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.h.update(data)
        return data

    def rest(self) -> str:
        while self.read(1 << 22):
            pass
        return self.h.hexdigest()


def iter_tar_samples(path: str, sha256: str | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for each sample of a WebDataset tar, streamed in tar order
    and grouped as WebDataset groups them (consecutive members; the key ends at the first
    dot of the file name). Raises one of TAR_ERRORS for a file that is not a readable tar;
    with `sha256` (a pinned snapshot's), every byte is hashed as it streams by and
    ShardChanged (an OSError) is raised after the last sample where the file differs."""
    with fs.open_read(path) as raw:
        fobj = _Hashing(raw) if sha256 else raw
        yield from _tar_samples(fobj)
        if sha256 and (got := fobj.rest()) != sha256:
            raise ShardChanged(f"{path}: sha256 {got[:12]}… is not the {sha256[:12]}… its snapshot recorded")


def _tar_samples(fobj) -> Iterator[tuple[str, dict[str, bytes]]]:
    cur, parts = None, {}
    with tarfile.open(fileobj=fobj, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = _sample_key(member.name)
            if key != cur:
                if cur is not None:
                    yield cur, parts
                cur, parts = key, {}
            f = tar.extractfile(member)
            parts[ext] = f.read() if f is not None else b""
    if cur is not None:
        yield cur, parts


def iter_tar_clips(path: str, stats: dict, sha256: str | None = None) -> Iterator[Clip]:
    """Clips of one shard, in tar order. Unreadable shards and broken samples are counted in
    `stats` (bad_shards / bad_samples) and skipped; never raises for bad data. With `sha256`,
    a shard whose bytes differ from it counts as a bad shard too (ShardChanged)."""
    try:
        for key, parts in iter_tar_samples(path, sha256):
            ext = next((e for e in CLIP_EXTS if e in parts), None)
            try:
                meta = json.loads(parts["json"]) if "json" in parts else {}
            except ValueError:
                meta = None
            if ext is None or meta is None:
                stats["bad_samples"] += 1
                continue
            yield Clip(key=key, data=parts[ext], meta=meta)
    except TAR_ERRORS as e:
        log.warning("skipping the rest of missing or corrupt shard %s: %s", path, e)
        stats["bad_shards"] += 1


# -------------------------------------------------------------------- clips by key
_KEY_BAD = re.compile(r"[^a-z0-9_-]+")


@dataclass
class ClipInfo:
    key: str
    video_id: str
    video_key: str
    source: str
    title: str = ""
    channel: str = ""
    game: str = ""
    split: str = "train"
    kept: bool = True
    reason: str = ""
    path: str = ""  # tar (clip store or shard) or the mp4 file
    member: str | None = None  # name inside the tar; None: path is the mp4 itself
    extra: dict = field(default_factory=dict)

    @property
    def stratum(self) -> str:
        return "/".join(x for x in (self.source, self.channel, self.game) if x) or "-"


def _safe_key(s: str) -> str:
    return _KEY_BAD.sub("-", s.lower()).strip("-") or "clip"


class ClipIndex:
    """Clips by key, in a stable order, with their bytes on demand."""

    def __init__(self, root: str | Path, clips: Iterable[ClipInfo], kind: str):
        self.root = str(root)
        self.kind = kind  # ingest | store | shards | files
        self.clips: dict[str, ClipInfo] = {}
        for c in clips:
            self.clips.setdefault(c.key, c)
        self._tar_index: dict[str, dict[str, tuple[int, int]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.clips)

    def __contains__(self, key: str) -> bool:
        return key in self.clips

    def __getitem__(self, key: str) -> ClipInfo:
        return self.clips[key]

    # ------------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: str | Path) -> "ClipIndex":
        if fs.is_remote(str(path)):  # in a bucket: an ingest output, read through the fs layer
            if not has_table(str(path), "manifest"):
                raise DataError(f"{path} is not an ingest output (no manifest table there)")
            return cls(str(path), _ingest_clips(str(path)), "ingest")
        root = Path(path)
        if not root.exists():
            raise DataError(f"{root} does not exist")
        if root.is_file():
            if root.suffix == ".mp4":
                return cls(root.parent, [_file_clip(root.parent, root)], "files")
            raise DataError(f"{root} is a file: give an ingest output directory or a folder of mp4 clips")
        if has_table(str(root), "manifest"):
            return cls(root, _ingest_clips(str(root)), "ingest")
        stores = sorted((root / "clips").glob("*.tar")) if (root / "clips").is_dir() else []
        if stores:
            return cls(root, _store_clips(stores), "store")
        shards = sorted(root.glob("shards/*.tar")) or sorted(root.glob("*.tar"))
        if shards:
            return cls(root, _shard_clips(shards), "shards")
        mp4s = sorted(p for p in root.rglob("*.mp4") if p.is_file())
        if mp4s:
            return cls(root, _file_clips(root, mp4s), "files")
        raise DataError(f"{root} holds no clips: expected an ingest output (manifest/, clips/, "
                           "shards/) or a folder of .mp4 clips")

    # ------------------------------------------------------------------------ reading
    def read(self, key: str) -> bytes:
        c = self.clips[key]
        if c.member is None:
            return fs.read_bytes(c.path)
        idx = self._index(c.path)
        if c.member not in idx:
            raise DataError(f"{c.member} is not in {c.path}")
        off, size = idx[c.member]
        with fs.open_read(c.path) as f:  # a ranged read, in a bucket too
            f.seek(off)
            return f.read(size)

    def _index(self, tar_path: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            idx = self._tar_index.get(tar_path)
            if idx is None:
                with fs.open_read(tar_path) as f, tarfile.open(fileobj=f, mode="r") as tar:
                    idx = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
                self._tar_index[tar_path] = idx
            return idx

    def readable(self, key: str) -> bool:
        c = self.clips.get(key)
        if c is None:
            return False
        if c.member is None:
            return fs.exists(c.path) and not fs.isdir(c.path)
        try:
            return c.member in self._index(c.path)
        except (OSError, tarfile.TarError):
            return False


def _ingest_clips(root: str) -> list[ClipInfo]:
    rows = read_rows(root, "manifest")
    strata = _candidate_strata(root)
    stores = set(fs.glob(fs.join(root, "clips", "*.tar")))
    out = []
    for r in rows:
        channel, game = strata.get(r["video_key"], ("", ""))
        store = fs.join(root, "clips", f"{r['video_key']}.tar")
        if store in stores:
            path, member = store, f"{r['key']}.mp4"
        elif r.get("shard"):
            path, member = fs.join(root, "shards", os.path.basename(r["shard"])), f"{r['key']}.mp4"
        else:
            path, member = store, f"{r['key']}.mp4"  # missing: reported when read
        out.append(ClipInfo(key=r["key"], video_id=str(r["video_id"]), video_key=r["video_key"],
                            source=r.get("source") or "", title=r.get("title") or "",
                            channel=str(r.get("channel") or channel), game=str(r.get("game") or game),
                            split=r.get("split") or "train", kept=bool(r.get("kept", True)),
                            reason=r.get("reason") or "", path=path, member=member,
                            extra={"quality_score": r.get("quality_score")}))
    return out


def _candidate_strata(root: str) -> dict[str, tuple[str, str]]:
    """video_key -> (channel, game) from the candidates table's `extra` where discovery recorded
    them (a search result's channel/uploader; a catalog's game, else the search query)."""
    try:
        rows = read_rows(root, "candidates", columns=["video_key", "extra"])
    except DataError:  # strata are a nicety; the sample works without them
        return {}
    out = {}
    for r in rows:
        try:
            extra = json.loads(r["extra"] or "{}")
        except (TypeError, json.JSONDecodeError):
            continue
        if isinstance(extra, dict):
            channel = str(extra.get("channel") or extra.get("uploader") or "")
            game = str(extra.get("game") or extra.get("query") or "")
            out[r["video_key"]] = (channel, game)
    return out


def _store_clips(stores: list[Path]) -> list[ClipInfo]:
    out = []
    for store in stores:
        with tarfile.open(store, "r") as tar:
            m = tar.getmember(VIDEO_JSON) if VIDEO_JSON in tar.getnames() else None
            if m is None:
                continue
            v = json.loads(tar.extractfile(m).read())
        for c in v.get("clips", []):
            out.append(ClipInfo(key=c["key"], video_id=str(c["video_id"]), video_key=c["video_key"],
                                source=c.get("source", ""), title=c.get("title", ""), split=c.get("split", "train"),
                                kept=bool(c.get("kept", True)), reason=c.get("reason", ""),
                                path=str(store), member=f"{c['key']}.mp4"))
    return out


def _shard_clips(shards: list[Path]) -> list[ClipInfo]:
    out = []
    for shard in shards:
        with tarfile.open(shard, "r") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            for name in sorted(members):
                if not name.endswith(".mp4"):
                    continue
                key = name[:-4]
                meta = {}
                if f"{key}.json" in members:
                    try:
                        meta = json.loads(tar.extractfile(members[f"{key}.json"]).read())
                    except json.JSONDecodeError:
                        meta = {}
                vid = str(meta.get("video_id") or _video_of(key))
                out.append(ClipInfo(key=key, video_id=vid, video_key=meta.get("video_key") or vid,
                                    source=meta.get("source", ""), title=meta.get("title", ""),
                                    split=meta.get("split", "train"), path=str(shard), member=name))
    return out


def _video_of(stem: str) -> str:
    m = re.match(r"^(.*?)[_-]\d+$", stem)
    return m.group(1) if m and m.group(1) else stem


def _file_clip(root: Path, p: Path, seen: set | None = None) -> ClipInfo:
    rel = p.relative_to(root)
    parts = rel.parts[:-1]
    video = "/".join(parts) if parts else _video_of(p.stem)
    key = _safe_key("_".join(list(parts) + [p.stem]))
    if seen is not None:
        base, n = key, 1
        while key in seen:
            n += 1
            key = f"{base}-{n}"
        seen.add(key)
    return ClipInfo(key=key, video_id=video, video_key=_safe_key(video), source=parts[0] if len(parts) > 1 else "files",
                    title=p.stem, path=str(p), member=None)


def _file_clips(root: Path, mp4s: list[Path]) -> list[ClipInfo]:
    seen: set[str] = set()
    return [_file_clip(root, p, seen) for p in mp4s]


