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
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

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
