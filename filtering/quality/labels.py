"""Labels: what a label file holds, and one label per clip from many labellers.

`load_labels(path)` reads a label database (SQLite, written by the labelling page), a
Parquet export or a Label Studio JSON export, and says clearly what is wrong with a file
that is none of these. `resolve_labels` takes the majority per clip; `label_counts` is the
labelling page's progress; `label_set_hash` names a label set in a model's metadata.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.label.labelstudio import parse_labelstudio
from genie_pipeline.filtering.quality.label.store import VALID, LabelStore

LABELS = ("good", "bad")


# -------------------------------------------------------------------------------- files
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
        try:
            with LabelStore(p, readonly=True) as st:
                return st.current_labels()
        except sqlite3.DatabaseError as e:
            raise QualityError(f"label file {p} is corrupted: {e}") from None
    if head.startswith(b"PAR1"):
        return _parquet_labels(p)
    if p.suffix.lower() == ".json" or head.lstrip()[:1] in (b"[", b"{"):
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


# ------------------------------------------------------------------------------- voting
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


def label_counts(current: list[dict[str, Any]], labeller: str | None = None) -> dict[str, Any]:
    """Progress from the current labels (`LabelStore.current_labels()`): clips with a
    good/bad label (any labeller; a clip labelled by two counts once, as the majority),
    and this labeller's own numbers."""
    resolved = resolve_labels(current)
    labelled_keys = {e["key"] for e in current if e["label"] != "skip"}
    out = {"labelled": len(labelled_keys), "good": sum(v == "good" for v in resolved.values()),
           "bad": sum(v == "bad" for v in resolved.values()),
           "skipped": len({e["key"] for e in current if e["label"] == "skip"} - labelled_keys),
           "labellers": sorted({e["labeller"] for e in current})}
    if labeller is not None:
        mine = [e for e in current if e["labeller"] == labeller]
        out["mine"] = {lab: sum(e["label"] == lab for e in mine) for lab in VALID}
    return out


def label_set_hash(labels: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in sorted(labels):
        h.update(f"{k}\t{labels[k]}\n".encode())
    return h.hexdigest()
