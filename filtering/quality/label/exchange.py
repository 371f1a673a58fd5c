"""Labels to and from files: Parquet (one row per clip and labeller) and Label Studio JSON.

    genie-pipeline label OUT --export labels.parquet    (or .json: Label Studio tasks)
    genie-pipeline label OUT --export ls.json --base-url http://host:8767/ --annotator ann=ann@x.org
    genie-pipeline label OUT --import ls-export.json    Label Studio JSON / JSON_MIN, or our Parquet
"""
from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Mapping

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.label.labelstudio import export_tasks, parse_labelstudio
from genie_pipeline.filtering.quality.label.store import LabelStore
from genie_pipeline.filtering.quality.labels import load_labels
from genie_pipeline.shards.reader import ClipIndex


def export_labels(store: LabelStore, path: str, base_url: str | None = None,
                  annotators: Mapping[str, int | str] | None = None) -> int:
    """Current labels to Parquet (one row per clip and labeller) or, for a .json path, Label
    Studio tasks with clip URLs under `base_url` and labellers mapped to Label Studio users by
    `annotators` (`labelstudio.export_tasks`); written atomically. Returns how many labels
    were written."""
    dest = Path(path)
    is_json = dest.suffix.lower() == ".json"
    if not is_json and (base_url is not None or annotators):
        raise QualityError(f"a base URL and annotators apply to a Label Studio export (.json), not {dest.name}")
    rows = store.current_labels()
    tmp = dest.with_name(dest.name + ".tmp")
    if is_json:
        tmp.write_text(json.dumps(export_tasks(rows, base_url=base_url, annotators=annotators), indent=1))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema([("key", pa.string()), ("video_id", pa.string()), ("video_key", pa.string()),
                            ("source", pa.string()), ("title", pa.string()), ("label", pa.string()),
                            ("labeller", pa.string()), ("labelled_at", pa.timestamp("us", tz="UTC")),
                            ("origin", pa.string())])
        table = pa.Table.from_pylist([{**{k: r.get(k) for k in schema.names if k != "labelled_at"},
                                       "labelled_at": dt.datetime.fromtimestamp(r["ts"], dt.timezone.utc)}
                                      for r in rows], schema=schema)
        pq.write_table(table, tmp)
    os.replace(tmp, dest)
    return len(rows)


def import_labels(store: LabelStore, index: ClipIndex, path: str) -> int:
    """Labels of `index`'s clips from a Label Studio export (.json) or any file `load_labels`
    reads, into `store`; an event already there is skipped. Returns how many were added."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise QualityError(f"cannot read Label Studio export {p}: {e}") from None
        events = parse_labelstudio(data, known=index.clips.keys(), source=str(p))
    else:
        events = [{**e, "ts": e.get("ts") or _epoch(e.get("labelled_at"))} for e in load_labels(p)]
    unknown = sorted({e["key"] for e in events if e["key"] not in index})
    if unknown:
        raise QualityError(f"{p}: {len(unknown)} labelled clip(s) are not in {index.root}: "
                           + ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else ""))
    store.upsert_clips(index[k] for k in {e["key"] for e in events})
    return store.add_many(events, origin="import")


def _epoch(v):
    if v is None:
        return None
    return v.timestamp() if hasattr(v, "timestamp") else float(v)
