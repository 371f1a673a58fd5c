"""Discovery: each source type turns its config into candidate videos, before any download.

`discover(source)` yields `Candidate`s and `Failure`s (a query that fails or a catalog row
that names no video is recorded, and discovery goes on); `Discover` is the same as a stage
of the Beam job, counting the candidates.

Search runs through yt-dlp for every prefix: `ytsearchN:` reaches YouTube, and the sample
corpus's `gcsearchN:` is a yt-dlp plugin (yt_dlp_plugins/extractor/geniecorpus.py) that
yt-dlp loads from sys.path when a YoutubeDL is created.

Where a source knows the agent's true actions (a catalog's `actions` column: a sidecar path
resolved like `path`; a search result's `actions_url`), the candidate carries the sidecar's
location in `extra["actions"]` (ingest/actions.py reads it).
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from typing import Any, Iterator

from genie_pipeline.ingest import rlds
from genie_pipeline.ingest.actions import ACTIONS_KEY
from genie_pipeline.ingest.config import (CatalogSource, FilesSource, LeRobotSource, PreflightError, RldsSource,
                                          SearchSource, UrlsSource)
from genie_pipeline.ingest.download import YtdlpLog, site_provenance
from genie_pipeline.ingest.errors import Count, no_count
from genie_pipeline.shards import fs
from genie_pipeline.shards.records import Candidate, Failure, video_key


def _hash_id(text: str) -> str:
    return "h" + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def file_id(path: str) -> str:
    """A file's video id: its name, lowercased to [a-z0-9-] (at most 30 characters), and 8 hex
    of the hash of its whole path (two `clip.mp4` in two folders differ):
    `my-run-03-1a2b3c4d`, so progress lines, failure rows and clip keys say which file. Only
    this safe form of the name reaches keys and paths."""
    stem = posixpath.splitext(posixpath.basename(path))[0]
    slug = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:30].strip("-")
    digest = hashlib.sha1(path.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{slug}-{digest[:8]}" if slug else "h" + digest[:16]


def _fail(source: str, vid: str, message: str, error_type: str = "DiscoveryError", url: str | None = None,
          path: str | None = None) -> Failure:
    return Failure(video_key=video_key(source, vid), video_id=vid, source=source, stage="discover",
                   error_type=error_type, message=message[:2000], url=url, path=path)


# ------------------------------------------------------------------------------- search
def discover_search(src: SearchSource) -> Iterator[Candidate | Failure]:
    import yt_dlp

    opts = {"extract_flat": "in_playlist", "quiet": True, "no_warnings": True, "skip_download": True,
            "extractor_args": src.extractor_args, "noprogress": True, "logger": YtdlpLog()}
    seen: set[str] = set()
    with yt_dlp.YoutubeDL(opts) as ydl:
        for q in src.queries:
            query = f"{src.prefix}{src.max_results}:{q}"
            try:
                info = ydl.extract_info(query, download=False)
            except Exception as e:  # yt-dlp raises many types; each query fails alone
                yield _fail(src.name, _hash_id(query), f"search {query!r} failed: {e}", type(e).__name__)
                continue
            for entry in (info or {}).get("entries") or []:
                if not entry:
                    continue
                vid = str(entry.get("id") or _hash_id(str(entry.get("url"))))
                if vid in seen:
                    continue
                seen.add(vid)
                yield Candidate(
                    source=src.name, video_id=vid, title=str(entry.get("title") or ""),
                    description=str(entry.get("description") or ""),
                    url=entry.get("url") or entry.get("webpage_url"),
                    duration_s=_float(entry.get("duration")),
                    # the labelling page stratifies its sample by channel and query
                    extra={"query": q, "channel": entry.get("channel") or entry.get("uploader"),
                           **site_provenance(entry), **_actions_of(entry.get("actions_url"), remote=True)},
                )


# ------------------------------------------------------------------------------ catalog
def _read_table(path: str, fmt: str) -> list[dict[str, Any]]:
    if fmt == "auto":  # by the extension under a compression one (fs.open_read decompresses)
        base = path.lower()
        for comp in (".gz", ".bz2", ".zst", ".xz", ".deflate"):
            base = base.removesuffix(comp)
        ext = posixpath.splitext(base)[1]
        fmt = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
               ".parquet": "parquet", ".pq": "parquet"}.get(ext, "")
        if not fmt:
            raise ValueError(f"cannot tell the format of {path!r} from its extension: set `format`")
    data = fs.read_bytes(path)
    if fmt == "jsonl":
        rows = []
        for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    rows.append({"__error__": f"line {i}: {e}"})
        return rows
    import io

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pcsv.read_csv(io.BytesIO(data)) if fmt == "csv" else pq.read_table(io.BytesIO(data))
    # a column with one byte that is not UTF-8 reads as binary: decode it a cell at a time, so
    # that one bad byte costs one replacement character, not every cell of the column
    return [{k: v.decode("utf-8", "replace") if isinstance(v, bytes) else v for k, v in r.items()}
            for r in table.to_pylist()]


def discover_catalog(src: CatalogSource) -> Iterator[Candidate | Failure]:
    try:
        rows = _read_table(src.path, src.format)
    except Exception as e:
        yield _fail(src.name, _hash_id(src.path), f"cannot read catalog {src.path}: {e}", type(e).__name__,
                    path=src.path)
        return
    base = posixpath.dirname(src.path) if fs.is_remote(src.path) else os.path.dirname(os.path.abspath(fs.local(src.path)))
    f = src.fields
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "__error__" in row:
            why = row["__error__"] if isinstance(row, dict) else f"not an object ({type(row).__name__})"
            yield _fail(src.name, f"row{i}", f"catalog row {i}: {why}")
            continue
        url, path = row.get(f.url) or None, row.get(f.path) or None
        vid = str(row.get(f.video_id) or _hash_id(str(url or path or i)))
        if not url and not path:
            yield _fail(src.name, vid, f"catalog row {i} has neither {f.url!r} nor {f.path!r}")
            continue
        try:
            path, actions = (_under(base, p) for p in (path, row.get(f.actions) or None))
        except ValueError as e:
            yield _fail(src.name, vid, f"catalog row {i}: {e}", "PathOutsideCatalog")
            continue
        yield Candidate(
            source=src.name, video_id=vid, title=str(row.get(f.title) or ""),
            description=str(row.get(f.description) or ""), url=str(url) if url else None,
            path=str(path) if path else None, duration_s=_float(row.get(f.duration)),
            extra={**{k: row.get(getattr(f, k)) for k in SITE_FIELDS if row.get(getattr(f, k)) not in (None, "")},
                   **_actions_of(actions)},
        )


def _under(base: str, path: Any) -> Any:
    """A catalog's relative path (a video, a sidecar) made relative to the catalog's folder;
    ValueError where it leaves that folder (`../../etc/passwd`). An absolute path or a URL is
    taken as it is (a scheme is checked against download.allowed_schemes where it is read)."""
    if path and "://" not in str(path) and not os.path.isabs(str(path)):
        rel = posixpath.normpath(str(path))
        if rel == ".." or rel.startswith("../"):
            raise ValueError(f"path {str(path)[:200]!r} leaves the catalog's folder {base}")
        return posixpath.join(base, rel) if fs.is_remote(base) else os.path.join(base, rel)
    return path


def _actions_of(location: Any, remote: bool = False) -> dict[str, str]:
    """The candidate's `extra` entry naming its actions sidecar (none without a location). A
    `remote` one (what a site answered) counts only as an http(s) URL: nothing a site says
    becomes a path on this machine."""
    if not location or (remote and not re.match(r"^https?://", str(location), re.I)):
        return {}
    return {ACTIONS_KEY: str(location)}


# --------------------------------------------------------------------------------- urls
def discover_urls(src: UrlsSource) -> Iterator[Candidate | Failure]:
    urls = list(src.urls)
    if src.path:
        try:
            urls += [ln.strip() for ln in fs.read_bytes(src.path).decode("utf-8").splitlines()
                     if ln.strip() and not ln.lstrip().startswith("#")]
        except Exception as e:
            yield _fail(src.name, _hash_id(src.path), f"cannot read URL list {src.path}: {e}", type(e).__name__)
    seen = set()
    for u in urls:
        if u in seen:
            continue
        seen.add(u)
        yield Candidate(source=src.name, video_id=_hash_id(u), url=u, title="")


# -------------------------------------------------------------------------------- files
_SEP_RE = re.compile(r"[_.\-]+")


def discover_files(src: FilesSource) -> Iterator[Candidate | Failure]:
    pattern = src.glob if "://" in src.glob else os.path.abspath(src.glob)
    try:
        matches = fs.list_files(pattern)
    except Exception as e:
        yield _fail(src.name, _hash_id(src.glob), f"cannot list {src.glob}: {e}", type(e).__name__, path=src.glob)
        return
    for path, size in matches:
        stem, ext = posixpath.splitext(posixpath.basename(path))
        if ext.lower() == ".json":
            continue  # sidecars
        title, desc, meta = _SEP_RE.sub(" ", stem).strip(), "", {}
        for sidecar in (posixpath.splitext(path)[0] + ".json", posixpath.splitext(path)[0] + ".info.json"):
            try:
                if fs.exists(sidecar):
                    meta = json.loads(fs.read_bytes(sidecar))
                    title = str(meta.get("title") or title)
                    desc = str(meta.get("description") or "")
                    # a yt-dlp .info.json says where the file came from
                    meta = {**site_provenance(meta), "url": meta.get("webpage_url")}
                    break
            except Exception:
                pass  # a bad sidecar only costs the nicer title
        yield Candidate(source=src.name, video_id=file_id(path), path=path, title=title,
                        description=desc, extra={"size_bytes": size, **meta})


# ------------------------------------------------------------------------------ lerobot
def discover_lerobot(src: LeRobotSource) -> Iterator[Candidate | Failure]:
    """LeRobot datasets as video only: every episode × camera is a candidate; actions ignored.

    v3.0 packs many episodes in one mp4 and gives each its span (from/to timestamps);
    v2.x has one mp4 per episode.
    """
    root = src.root.rstrip("/")
    try:
        with open(os.path.join(root, "meta", "info.json")) as fh:
            info = json.load(fh)
    except Exception as e:
        yield _fail(src.name, _hash_id(root), f"not a LeRobot dataset ({root}/meta/info.json): {e}", type(e).__name__,
                    path=root)
        return
    cams = [k for k, v in info.get("features", {}).items() if isinstance(v, dict) and v.get("dtype") == "video"]
    if src.cameras:
        cams = [c for c in cams if c in src.cameras]
    name = os.path.basename(root)
    template = info.get("video_path", "")
    version = str(info.get("codebase_version", ""))
    try:
        episodes = _lerobot_episodes(root, version)
    except Exception as e:
        yield _fail(src.name, _hash_id(root), f"cannot read episodes of {root}: {e}", type(e).__name__, path=root)
        return
    for ep in episodes:
        for cam in cams:
            try:
                yield _lerobot_candidate(src, root, name, info, version, template, ep, cam)
            except (KeyError, ValueError, TypeError, IndexError) as e:
                yield _fail(src.name, _hash_id(f"{root}:{ep}:{cam}"),
                            f"LeRobot episode {ep.get('episode_index')!r} camera {cam}: bad metadata ({type(e).__name__}: {e})")


def _lerobot_candidate(src, root, name, info, version, template, ep, cam) -> Candidate:
    idx = int(ep["episode_index"])
    tasks = ep.get("tasks") or []
    task = tasks[0] if isinstance(tasks, list) and tasks else str(tasks or "")
    # the whole camera name, so cameras never collide (safe_id hashes what is too long)
    cam_id = re.sub(r"[^A-Za-z0-9_-]+", "-", cam.removeprefix("observation.images."))
    vid = f"ep{idx:06d}_{cam_id}"
    if version.startswith("v3"):
        rel = template.format(video_key=cam, chunk_index=int(ep[f"videos/{cam}/chunk_index"]),
                              file_index=int(ep[f"videos/{cam}/file_index"]))
        start, end = float(ep[f"videos/{cam}/from_timestamp"]), float(ep[f"videos/{cam}/to_timestamp"])
    else:
        chunk = idx // int(info.get("chunks_size", 1000))
        rel = template.format(video_key=cam, episode_chunk=chunk, episode_index=idx)
        start = end = None
    # clip keys and start_s of v3 episodes are times in the shared file, not in the episode
    return Candidate(
        source=src.name, video_id=vid, path=os.path.join(root, rel), title=f"{name} {task}".strip(),
        description=f"LeRobot {name} episode {idx} camera {cam}", start_s=start, end_s=end,
        duration_s=(end - start) if start is not None else _float(ep.get("length", 0)) / max(1, info.get("fps", 1)),
        extra={"episode_index": idx, "camera": cam},
    )


def _lerobot_episodes(root: str, version: str) -> list[dict[str, Any]]:
    if version.startswith("v3"):
        import glob

        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        for f in sorted(glob.glob(os.path.join(root, "meta", "episodes", "**", "*.parquet"), recursive=True)):
            rows += pq.read_table(f).to_pylist()
        return sorted(rows, key=lambda r: int(r["episode_index"]))
    with open(os.path.join(root, "meta", "episodes.jsonl")) as fh:
        return [json.loads(ln) for ln in fh if ln.strip()]


# --------------------------------------------------------------------------------- rlds
def discover_rlds(src: RldsSource) -> Iterator[Candidate | Failure]:
    """RLDS datasets (ingest/rlds.py) as video only: every episode of the split is a candidate
    naming its TFRecord file and its place there; nothing is read but dataset_info.json (files
    it does not describe are counted by their record headers). Actions ignored."""
    try:
        files = rlds.split_files(src.root, src.split)
    except Exception as e:
        yield _fail(src.name, _hash_id(src.root), f"cannot list {src.root}: {e}", type(e).__name__, path=src.root)
        return
    info = rlds.dataset_info(src.root)
    name = str(info.get("name") or posixpath.basename(posixpath.dirname(src.root.rstrip("/"))) or "rlds")
    for shard, path, count in rlds.episode_counts(info, src.split, files):
        if isinstance(count, Exception):
            yield _fail(src.name, _hash_id(path), f"cannot read {path}: {count}", type(count).__name__, path=path)
            continue
        for record in range(count):
            yield Candidate(
                source=src.name, video_id=f"{src.split}-{shard:05d}-{record:05d}", path=path,
                title=f"{name} {src.split} {shard:05d}/{record}",
                description=f"RLDS {name} split {src.split} file {shard} episode {record} camera {src.image_key}",
                extra={rlds.RECORD: record, rlds.IMAGE_KEY: src.image_key, rlds.CONTROL_HZ: src.control_hz},
            )


def check_sources(sources: list) -> None:
    """PreflightError (ingest/config.py) for a source found unusable before any work starts:
    an RLDS split without files or without its image feature; a files glob that matches no
    file (a typo in a path would otherwise run to an empty output and exit 0) unless the
    source allows it (`allow_empty`)."""
    for i, src in enumerate(sources):
        if isinstance(src, RldsSource):
            rlds.check_rlds_source(src, f"sources.{i}")
        if isinstance(src, FilesSource) and not src.allow_empty:
            pattern = src.glob if "://" in src.glob else os.path.abspath(src.glob)
            try:
                found = any(not p.lower().endswith(".json") for p, _ in fs.list_files(pattern))
            except Exception:  # noqa: BLE001 — a listing that fails is the discovery's failure row
                continue
            if not found:
                raise PreflightError(f"sources.{i}.glob", f"{pattern} matches no file; fix the path (a relative "
                                     "one is relative to the config file) or set allow_empty: true on the source")


DISCOVER = {"search": discover_search, "catalog": discover_catalog, "urls": discover_urls,
            "files": discover_files, "lerobot": discover_lerobot, "rlds": discover_rlds}


def discover(src) -> Iterator[Candidate | Failure]:
    """The candidates of one source config (any type), at most `src.limit` items."""
    items = DISCOVER[src.type](src)
    for n, item in enumerate(items):
        if src.limit is not None and n >= src.limit:
            return
        yield item


class Discover:
    """The discovery stage: a source config in, its candidates and failures out."""

    def __init__(self, count: Count = no_count):
        self.count = count

    def __call__(self, src) -> Iterator[Candidate | Failure]:
        for item in discover(src):
            if isinstance(item, Candidate):
                self.count("candidates")
            yield item


SITE_FIELDS = ("channel", "uploader", "upload_date", "license")


def _float(v: Any) -> float | None:
    try:
        return float(v) if v is not None and v != "" else None
    except (TypeError, ValueError):
        return None
