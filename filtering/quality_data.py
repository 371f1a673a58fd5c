"""Where labelled clips come from: an ingest output or a folder of mp4 clips; label files.

`ClipIndex.open(path)` accepts
- an ingest output directory: `manifest.parquet` rows, each clip read from its video's clip
  store `clips/{video_key}.tar` (every clip, kept or not) or else from its shard;
- a directory of clip store tars or WebDataset shards without a manifest;
- any folder of `.mp4` clips (searched recursively): the key is made from the file name,
  the video is the sub-folder, or the file name without a trailing `_NNN` start index.

Clip bytes are read with one seek into the tar (member offsets are indexed once per tar).

`load_labels(path)` reads a label database (SQLite, written by the labelling page), a
Parquet export or a Label Studio JSON export, and says clearly what is wrong with a file
that is none of these.
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
import tarfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

LABELS = ("good", "bad")


class QualityError(Exception):
    """A problem with labels, clips or a model file, with a message meant for the user."""


def config_error(key: str, msg: str) -> Exception:
    """genie_pipeline.config.ConfigError(key, msg) (the CLI prints it and exits 2); imported
    late: genie_pipeline.config imports filtering.quality_config."""
    try:
        from genie_pipeline.config import ConfigError
    except ImportError:  # pragma: no cover
        return QualityError(f"{key}: {msg}")
    return ConfigError(key, msg)


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
        root = Path(path)
        if not root.exists():
            raise QualityError(f"{root} does not exist")
        if root.is_file():
            if root.suffix == ".mp4":
                return cls(root.parent, [_file_clip(root.parent, root)], "files")
            raise QualityError(f"{root} is a file: give an ingest output directory or a folder of mp4 clips")
        if (root / "manifest.parquet").exists():
            return cls(root, _ingest_clips(root), "ingest")
        stores = sorted((root / "clips").glob("*.tar")) if (root / "clips").is_dir() else []
        if stores:
            return cls(root, _store_clips(stores), "store")
        shards = sorted(root.glob("shards/*.tar")) or sorted(root.glob("*.tar"))
        if shards:
            return cls(root, _shard_clips(shards), "shards")
        mp4s = sorted(p for p in root.rglob("*.mp4") if p.is_file())
        if mp4s:
            return cls(root, _file_clips(root, mp4s), "files")
        raise QualityError(f"{root} holds no clips: expected an ingest output (manifest.parquet, clips/, "
                           "shards/) or a folder of .mp4 clips")

    # ------------------------------------------------------------------------ reading
    def read(self, key: str) -> bytes:
        c = self.clips[key]
        if c.member is None:
            return Path(c.path).read_bytes()
        idx = self._index(c.path)
        if c.member not in idx:
            raise QualityError(f"{c.member} is not in {c.path}")
        off, size = idx[c.member]
        with open(c.path, "rb") as f:
            f.seek(off)
            return f.read(size)

    def _index(self, tar_path: str) -> dict[str, tuple[int, int]]:
        with self._lock:
            idx = self._tar_index.get(tar_path)
            if idx is None:
                with tarfile.open(tar_path, "r") as tar:
                    idx = {m.name: (m.offset_data, m.size) for m in tar.getmembers() if m.isfile()}
                self._tar_index[tar_path] = idx
            return idx

    def readable(self, key: str) -> bool:
        c = self.clips.get(key)
        if c is None:
            return False
        if c.member is None:
            return Path(c.path).is_file()
        try:
            return c.member in self._index(c.path)
        except (OSError, tarfile.TarError):
            return False


def _ingest_clips(root: Path) -> list[ClipInfo]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(root / "manifest.parquet").to_pylist()
    except Exception as e:  # noqa: BLE001
        raise QualityError(f"cannot read {root / 'manifest.parquet'}: {e}") from None
    strata = _candidate_strata(root)
    out = []
    for r in rows:
        channel, game = strata.get(r["video_key"], ("", ""))
        store = root / "clips" / f"{r['video_key']}.tar"
        if store.exists():
            path, member = str(store), f"{r['key']}.mp4"
        elif r.get("shard"):
            shard = Path(r["shard"])
            path = str(shard if shard.is_absolute() else root / "shards" / shard.name)
            member = f"{r['key']}.mp4"
        else:
            path, member = str(store), f"{r['key']}.mp4"  # missing: reported when read
        out.append(ClipInfo(key=r["key"], video_id=str(r["video_id"]), video_key=r["video_key"],
                            source=r.get("source") or "", title=r.get("title") or "",
                            channel=str(r.get("channel") or channel), game=str(r.get("game") or game),
                            split=r.get("split") or "train", kept=bool(r.get("kept", True)),
                            reason=r.get("reason") or "", path=path, member=member,
                            extra={"quality_score": r.get("quality_score")}))
    return out


def _candidate_strata(root: Path) -> dict[str, tuple[str, str]]:
    """video_key -> (channel, game) from candidates.parquet's `extra` where discovery recorded
    them (a search result's channel/uploader; a catalog's game, else the search query)."""
    import pyarrow.parquet as pq

    path = root / "candidates.parquet"
    if not path.exists():
        return {}
    try:
        rows = pq.read_table(path, columns=["video_key", "extra"]).to_pylist()
    except Exception:  # noqa: BLE001 — strata are a nicety; the sample works without them
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
            m = tar.getmember("_video.json") if "_video.json" in tar.getnames() else None
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


# -------------------------------------------------------------------------------- labels
def load_labels(path: str | Path) -> list[dict[str, Any]]:
    """Label events from a label database (.sqlite/.db), a Parquet export or a Label Studio
    JSON export: dicts with key, label (good|bad|skip), labeller, labelled_at."""
    p = Path(path)
    if not p.exists():
        raise QualityError(f"label file {p} does not exist (label clips with `genie-pipeline label` first)")
    if p.is_dir():
        raise QualityError(f"label file {p} is a directory")
    head = p.read_bytes()[:16]
    if head.startswith(b"SQLite format 3"):
        from genie_pipeline.filtering.label.store import LabelStore

        try:
            with LabelStore(p, readonly=True) as st:
                return st.current_labels()
        except sqlite3.DatabaseError as e:
            raise QualityError(f"label file {p} is corrupted: {e}") from None
    if head.startswith(b"PAR1"):
        return _parquet_labels(p)
    if p.suffix.lower() == ".json" or head.lstrip()[:1] in (b"[", b"{"):
        from genie_pipeline.filtering.label.labelstudio import parse_labelstudio

        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise QualityError(f"label file {p} is corrupted (not valid JSON: {e})") from None
        return parse_labelstudio(data, source=str(p))
    if p.suffix.lower() in (".sqlite", ".db", ".sqlite3", ".parquet"):
        raise QualityError(f"label file {p} is corrupted: not a {p.suffix[1:]} file")
    raise QualityError(f"label file {p}: unknown format (expected a label database, Parquet or Label Studio JSON)")


def _parquet_labels(p: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(p).to_pylist()
    except Exception as e:  # noqa: BLE001
        raise QualityError(f"label file {p} is corrupted: {e}") from None
    if rows and not {"key", "label"} <= set(rows[0]):
        raise QualityError(f"label file {p} has no key/label columns")
    for r in rows:
        if r["label"] not in LABELS + ("skip",):
            raise QualityError(f"label file {p}: label {r['label']!r} for {r['key']} is not good|bad|skip")
    return rows


def resolve_labels(events: list[dict[str, Any]]) -> dict[str, str]:
    """One label per clip: the majority of its labellers' good/bad labels; ties and skips
    give none."""
    votes: dict[str, Counter] = {}
    for e in events:
        if e["label"] in LABELS:
            votes.setdefault(e["key"], Counter())[e["label"]] += 1
    out = {}
    for key, c in votes.items():
        if c["good"] != c["bad"]:
            out[key] = "good" if c["good"] > c["bad"] else "bad"
    return out


def label_set_hash(labels: dict[str, str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in sorted(labels):
        h.update(f"{k}\t{labels[k]}\n".encode())
    return h.hexdigest()


def is_nan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))
