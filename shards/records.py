"""Records passed between pipeline stages and written to the output: the Parquet tables'
rows and schemas, and each WebDataset sample's json.

Plain dataclasses (picklable, cheap for Beam to move): a whole source video never crosses a
stage boundary, only these rows and small clip files.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from genie_pipeline.shards.clip import ClipSpec

SAFE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def safe_id(raw: str) -> str:
    """An id usable in a clip key and a file name; anything else is hashed.

    Titles, URLs and file names never become paths: only this function's output does.
    """
    raw = str(raw)
    if SAFE_ID_RE.match(raw) and not raw.startswith("-"):
        return raw
    return "h" + hashlib.sha1(raw.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# lone surrogates (JSON "\ud800", undecodable file-name bytes) and control characters other
# than tab/newline: Parquet, JSON consumers and terminals reject or misrender them
# and the bidirectional overrides and isolates (U+202A-202E, U+2066-2069), which make a title
# shown in a page or a terminal read as something else (an "mp4.exe" spelled backwards)
_UNSAFE_TEXT = re.compile(r"[\ud800-\udfff\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
MAX_TITLE = 1000  # characters of a title or description kept: a 10 MB title was copied into every clip's json
_SECRET_PARAM = re.compile(r"^(x-amz-.*|x-goog-.*|.*token.*|.*secret.*|.*passw.*|sig|signature|key|api_?key|auth.*|"
                           r"credential.*|session.*)$", re.I)


def clean_text(v: Any) -> Any:
    """`v` with every character a table or terminal cannot hold replaced by U+FFFD; non-str
    values are returned as they are. Idempotent."""
    return _UNSAFE_TEXT.sub("\ufffd", v) if isinstance(v, str) else v


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"<>]+@")
_TEXT_PARAM = re.compile(r"(?<![\w.-])([\w.-]+)=([^&\s'\"<>#,;)]+)")


def redact(text: Any) -> Any:
    """`text` fit for a row, a log line or the report: every `scheme://user:password@` (also
    `s3://KEY:SECRET@`) becomes `scheme://REDACTED@` and the value of every `name=value` whose
    name carries credentials (token, sig, X-Amz-Signature, key, password, …) becomes REDACTED,
    wherever it stands in the text (an error message quoting a URL). Then `clean_text`.
    Non-str values are returned as they are. Idempotent. The one redaction of the project:
    applied where text enters a record (Failure, VideoResult, Candidate.row), in the download
    log and in the report."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(r"\1REDACTED@", text)
    text = _TEXT_PARAM.sub(lambda m: f"{m.group(1)}=REDACTED" if _SECRET_PARAM.match(m.group(1)) else m.group(0), text)
    return clean_text(text)


def _capped(text: Any) -> Any:
    return text[:MAX_TITLE] + "…" if isinstance(text, str) and len(text) > MAX_TITLE else text


def redact_url(url: str | None) -> str | None:
    """The URL as a table may store it: no user:password@, and the values of query parameters
    that carry credentials (tokens, signatures, keys) replaced by REDACTED."""
    if not url:
        return url
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return clean_text(url)
    netloc = parts.netloc.rsplit("@", 1)[1] if "@" in parts.netloc else parts.netloc
    params = [q.partition("=") for q in parts.query.split("&") if q]
    query = "&".join(f"{k}=REDACTED" if _SECRET_PARAM.match(urllib.parse.unquote(k)) else k + sep + v
                     for k, sep, v in params)
    return clean_text(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))


def printable_path(path: str | None) -> str | None:
    """A path as a table stores it: a location with a scheme redacted as a URL (s3://KEY:SECRET@,
    a signed URL), undecodable file-name bytes shown as \\xNN escapes (the candidate itself
    keeps the real path to open)."""
    if path is None:
        return None
    if "://" in path:
        return redact_url(path)
    import os

    return clean_text(os.fsencode(path).decode("utf-8", "backslashreplace"))


def video_key(source: str, video_id: str) -> str:
    return f"{source}_{safe_id(video_id)}"


def clip_key(vkey: str, start_ms: int) -> str:
    # WebDataset splits keys at the first dot, so keys hold no dot
    return f"{vkey}_{start_ms:09d}"


@dataclass
class Candidate:
    """One discovered video, before any download."""

    source: str
    video_id: str
    title: str = ""
    description: str = ""
    url: str | None = None  # remote (yt-dlp) or None
    path: str | None = None  # local or FileSystem path (gs://…)
    duration_s: float | None = None
    start_s: float | None = None  # a span inside the file (LeRobot v3 episodes)
    end_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # filled by the keyword filter
    keyword_verdict: str = ""  # keep | reject
    keyword_reason: str = ""
    matched_terms: list[str] = field(default_factory=list)

    def __post_init__(self):
        # the one place discovered text is made safe: every title, id and extra value that
        # reaches a stage, the clip store or a table went through here (the path stays exact:
        # it must still open the file)
        self.video_id, self.title, self.description, self.url = (
            clean_text(self.video_id), clean_text(_capped(self.title)), clean_text(_capped(self.description)),
            clean_text(self.url))
        if isinstance(self.extra, dict):
            self.extra = {clean_text(k): clean_text(v) for k, v in self.extra.items()}

    @property
    def video_key(self) -> str:
        return video_key(self.source, self.video_id)

    def provenance(self, found: dict[str, Any] | None = None) -> dict[str, str | None]:
        """The PROVENANCE columns of this video's clips: what discovery recorded in `extra`,
        completed by what the download `found` (yt-dlp's metadata); None where nobody says."""
        known = {**{k: v for k, v in (found or {}).items() if v not in (None, "")},
                 **{k: v for k, v in self.extra.items() if k in PROVENANCE and v not in (None, "")}}
        known["url"] = redact_url(self.url or known.get("url"))
        return {k: None if known.get(k) is None else clean_text(str(known[k])) for k in PROVENANCE}

    def row(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["video_key"] = self.video_key
        d["url"], d["path"] = redact_url(self.url), printable_path(self.path)
        if not isinstance(d["extra"], str):  # already JSON when read back from a run's parts
            d["extra"] = _json(d["extra"])
        return d


@dataclass
class ClipRow:
    """One clip, kept or rejected: a row of the manifest table."""

    key: str
    video_key: str
    video_id: str
    source: str
    title: str
    start_s: float
    duration_s: float
    n_frames: int
    bytes: int = 0
    split: str = "train"
    kept: bool = True
    reason: str = ""  # why rejected: static | black | slideshow | cuts | quality
    shard: str | None = None
    # heuristic scores (filtering/heuristics.py)
    motion: float = 0.0
    dark_fraction: float = 0.0
    unique_fraction: float = 0.0
    cuts_per_min: float = 0.0
    quality_score: float | None = None  # None: not scored (NULL in the table)
    # shots: the clip's shot index in its video and the hard cuts inside the clip
    shot: int = 0
    cuts: int = 0
    # near duplicates: a perceptual hash (16 hex digits) and the clip this one duplicates
    fingerprint: str | None = None
    duplicate_of: str | None = None
    # provenance, from the site or catalog where it says (None: unknown)
    url: str | None = None
    channel: str | None = None
    uploader: str | None = None
    upload_date: str | None = None  # YYYY-MM-DD
    license: str | None = None
    query: str | None = None  # the search query that found the video
    # the agent's true actions, where the source recorded them (a simulator's sidecar): one per
    # step between consecutive frames (n_frames - 1), ids in `action_space` ("ale:Pitfall:18")
    true_actions: list[int] | None = None
    action_space: str | None = None
    # hard cuts inside the clip: the index (0 = the clip's first frame) of each frame that starts
    # a new shot, so readers place windows between them (None: not recorded, outputs before v4)
    cut_frames: list[int] | None = None
    returns_per_min: float = 0.0  # shots per minute going back to earlier footage (a montage)

    def __post_init__(self):  # stores written before text was cleaned at discovery still commit
        self.title = clean_text(self.title)
        if self.quality_score is not None and self.quality_score != self.quality_score:
            self.quality_score = None  # outputs written before NULL meant unscored held NaN

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# failures an identity (an address, a proxy) causes, not the video: a later run tries the video
# again without --retry-failed (its `videos` row says "deferred", its failure row retry "next_run")
RETRY_LATER = frozenset({"BotWall", "HTTP429", "HostBackoff", "ProxyError"})


@dataclass
class Failure:
    """A dead letter: what went wrong with which video, at which stage; `retry` says whether
    a later run tries it again by itself (next_run: a wall or a failing proxy) or not (no)."""

    video_key: str
    video_id: str
    source: str
    stage: str  # discover | download | probe | decode | cut | encode | score | shard
    error_type: str
    message: str
    url: str | None = None
    retry: str = ""
    # which video, for a source without URLs (files, catalogs of paths): its title and path
    title: str = ""
    path: str | None = None

    def __post_init__(self):
        self.video_id, self.message = clean_text(self.video_id), redact(self.message)
        self.title, self.path = clean_text(_capped(self.title)), printable_path(self.path)
        self.retry = self.retry or ("next_run" if self.error_type in RETRY_LATER else "no")

    def row(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "url": redact_url(self.url)}


@dataclass
class VideoResult:
    """Per-video outcome; its clips live in the clip store `OUT/clips/{video_key}.tar`."""

    video_key: str
    video_id: str
    source: str
    title: str
    status: str  # done | failed | skipped
    clips: list[ClipRow] = field(default_factory=list)
    seconds_in: float = 0.0
    seconds_out: float = 0.0
    error: str = ""
    store: str | None = None  # path of the clip store tar
    split: str = "train"
    path: str | None = None  # the file it was cut from, as a table shows it (printable_path); None for a URL

    def __post_init__(self):
        self.title, self.error, self.path = clean_text(self.title), redact(self.error), printable_path(self.path)

    def row(self) -> dict[str, Any]:
        return {
            "video_key": self.video_key, "video_id": self.video_id, "source": self.source,
            "title": self.title, "status": self.status, "n_clips": len(self.clips),
            "n_kept": sum(c.kept for c in self.clips), "seconds_in": self.seconds_in,
            "seconds_out": self.seconds_out, "error": self.error, "split": self.split, "path": self.path,
        }

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "VideoResult":
        d = dict(d)
        d["clips"] = [from_row(ClipRow, c) for c in d.get("clips", [])]
        return from_row(cls, d)


@dataclass
class ShardRecord:
    """A finished shard under its temporary name, with the stats written beside it."""

    path: str  # temporary location
    split: str
    order: str  # sort key for final numbering (deterministic across runs)
    keys: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


PROVENANCE = ("url", "channel", "uploader", "upload_date", "license", "query")
# written into every table's Parquet metadata; readers take older outputs without the newer columns
SCHEMA_VERSION = 5  # 3: true_actions, action_space; 4: cut_frames, returns_per_min; 5: path (videos), title, path (failures)


def from_row(cls, row: dict[str, Any]):
    """A record dataclass from a table row or JSON object, of this or an older schema: fields
    the row lacks take their defaults, columns the record does not know are ignored."""
    return cls(**{k: row[k] for k in cls.__dataclass_fields__ if k in row})


def sample_json(c: ClipRow, spec: ClipSpec) -> dict:
    """The `{key}.json` of a WebDataset sample."""
    return {
        "key": c.key, "video_key": c.video_key, "video_id": c.video_id, "source": c.source,
        "title": c.title, "start_s": c.start_s, "duration_s": c.duration_s, "fps": spec.fps,
        "n_frames": c.n_frames, "width": spec.width, "height": spec.height, "split": c.split,
        "scores": {"motion": c.motion, "dark_fraction": c.dark_fraction,
                   "unique_fraction": c.unique_fraction, "cuts_per_min": c.cuts_per_min,
                   "quality_score": c.quality_score, "returns_per_min": c.returns_per_min},
        "shot": c.shot, "cuts": c.cuts, "cut_frames": c.cut_frames, "fingerprint": c.fingerprint, "duplicate_of": c.duplicate_of,
        "provenance": {k: getattr(c, k) for k in PROVENANCE},
        "true_actions": c.true_actions, "action_space": c.action_space,
    }



def clip_from_sample(meta: dict, shard: str, nbytes: int) -> ClipRow:
    """The manifest row of a kept clip from its sample's JSON (`sample_json`'s inverse), the
    clip in `shard`, its mp4 `nbytes` long: how a commit restores the rows of a part it lost."""
    scores, prov = meta.get("scores") or {}, meta.get("provenance") or {}
    return from_row(ClipRow, {**{k: v for k, v in meta.items() if k not in ("scores", "provenance")},
                              **scores, **{k: prov.get(k) for k in PROVENANCE},
                              "kept": True, "reason": "", "shard": shard, "bytes": nbytes})

# ---------------------------------------------------------------------- table schemas
_STR, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()
SCHEMAS = {
    "manifest": pa.schema([("key", _STR), ("video_key", _STR), ("video_id", _STR), ("source", _STR),
                           ("title", _STR), ("start_s", _F), ("duration_s", _F), ("n_frames", _I),
                           ("bytes", _I), ("split", _STR), ("kept", _B), ("reason", _STR), ("shard", _STR),
                           ("motion", _F), ("dark_fraction", _F), ("unique_fraction", _F),
                           ("cuts_per_min", _F), ("quality_score", _F), ("shot", _I), ("cuts", _I),
                           ("fingerprint", _STR), ("duplicate_of", _STR),
                           *((k, _STR) for k in ("url", "channel", "uploader", "upload_date", "license", "query")),
                           ("true_actions", pa.list_(pa.int16())), ("action_space", _STR),
                           ("cut_frames", pa.list_(pa.int32())), ("returns_per_min", _F)]),
    "videos": pa.schema([("video_key", _STR), ("video_id", _STR), ("source", _STR), ("title", _STR),
                         ("status", _STR), ("n_clips", _I), ("n_kept", _I), ("seconds_in", _F),
                         ("seconds_out", _F), ("error", _STR), ("split", _STR), ("path", _STR)]),
    "failures": pa.schema([("video_key", _STR), ("video_id", _STR), ("source", _STR), ("stage", _STR),
                           ("error_type", _STR), ("message", _STR), ("url", _STR),
                           ("retry", _STR), ("title", _STR), ("path", _STR)]),
    "candidates": pa.schema([("video_key", _STR), ("source", _STR), ("video_id", _STR), ("title", _STR),
                             ("description", _STR), ("url", _STR), ("path", _STR), ("duration_s", _F),
                             ("start_s", _F), ("end_s", _F), ("extra", _STR), ("keyword_verdict", _STR),
                             ("keyword_reason", _STR), ("matched_terms", pa.list_(_STR))]),
}
TABLES = tuple(SCHEMAS)
assert [f.name for f in SCHEMAS["manifest"]] == list(ClipRow.__dataclass_fields__)


def _json(v: Any) -> str:
    import json

    return json.dumps(v, sort_keys=True, default=str)
