"""`genie-pipeline label`: the web page where people label clips good/bad.

    genie-pipeline label OUT                        serve a stratified sample of OUT's clips
    genie-pipeline label OUT --export labels.parquet    (or .json: Label Studio tasks)
    genie-pipeline label OUT --import ls-export.json    Label Studio JSON / JSON_MIN

OUT is an ingest output directory or any folder of mp4 clips. Labels go to a SQLite
database (default OUT/labels.sqlite), one transaction per label.
"""
from __future__ import annotations

import getpass
import json
import os
import sys
from pathlib import Path

DEFAULT_PORT = 8765


def add_label_args(p) -> None:
    p.add_argument("input", help="ingest output directory, or a folder of mp4 clips")
    p.add_argument("--db", default=None, help="label database (default: INPUT/labels.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("GENIE_LABEL_TOKEN"),
                   help="access token, required for a non-loopback --host (env GENIE_LABEL_TOKEN)")
    p.add_argument("--target", type=int, default=1000, help="clips in the labelling sample (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--resample", action="store_true", help="draw a new sample (labels are kept)")
    p.add_argument("--labeller", default=None, help="default labeller name shown on the page (default: login name)")
    p.add_argument("--export", metavar="FILE", default=None,
                   help="write the labels to FILE (.parquet, or .json for Label Studio) and exit")
    p.add_argument("--import", dest="import_", metavar="FILE", default=None,
                   help="read labels from a Label Studio JSON export (or our Parquet export) and exit")


def _default_labeller() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return ""


def open_store(input_dir: str, db: str | None):
    from genie_pipeline.filtering.label.store import LabelStore

    path = Path(db) if db else (Path(input_dir) / "labels.sqlite" if Path(input_dir).is_dir() else Path(input_dir).with_suffix(".labels.sqlite"))
    path.parent.mkdir(parents=True, exist_ok=True)
    return LabelStore(path)


def export_labels(store, out: str, clip_url: str = "/clip/{key}.mp4") -> int:
    """Current labels to Parquet (one row per clip and labeller) or Label Studio JSON."""
    import datetime as dt

    rows = store.current_labels()
    dest = Path(out)
    tmp = dest.with_name(dest.name + ".tmp")
    if dest.suffix.lower() == ".json":
        from genie_pipeline.filtering.label.labelstudio import export_tasks

        tmp.write_text(json.dumps(export_tasks(rows, clip_url), indent=1))
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


def import_labels(store, index, path: str) -> int:
    from genie_pipeline.filtering.quality_data import QualityError
    from genie_pipeline.filtering.quality_data import load_labels

    p = Path(path)
    if p.suffix.lower() == ".json":
        from genie_pipeline.filtering.label.labelstudio import parse_labelstudio

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
    store.upsert_clips({"key": c.key, "video_id": c.video_id, "video_key": c.video_key, "source": c.source,
                        "title": c.title, "stratum": c.stratum}
                       for c in (index[k] for k in {e["key"] for e in events}))
    return store.add_many(events, origin="import")


def _epoch(v):
    if v is None:
        return None
    return v.timestamp() if hasattr(v, "timestamp") else float(v)


def run_label(args) -> int:
    from genie_pipeline.filtering.label.server import LabelApp, make_server
    from genie_pipeline.shards.reader import ClipIndex

    index = ClipIndex.open(args.input)
    store = open_store(args.input, args.db)
    try:
        if args.export:
            n = export_labels(store, args.export)
            print(f"exported {n} labels to {args.export}")
            return 0
        if args.import_:
            n = import_labels(store, index, args.import_)
            print(f"imported {n} new labels from {args.import_} into {store.path}")
            return 0
        app = LabelApp(index, store, target=args.target, token=args.token,
                       labeller_default=args.labeller if args.labeller is not None else _default_labeller())
        keys = app.prepare_sample(seed=args.seed, resample=args.resample)
        try:
            srv = make_server(app, args.host, args.port)
        except PermissionError as e:
            from genie_pipeline.filtering.quality_data import config_error

            raise config_error("--token", str(e)) from None
        host, port = srv.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/" + (f"?token={args.token}" if args.token else "")
        print(f"labelling {len(keys)} clips of {len(index)} from {args.input}; labels in {store.path}")
        print(f"open {url}  (Ctrl-C to stop)", flush=True)
        try:
            srv.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            srv.server_close()
        return 0
    finally:
        store.close()


def main(argv=None) -> int:
    """`python -m filtering.label INPUT ...` (the same as `genie-pipeline label`)."""
    import argparse

    p = argparse.ArgumentParser(prog="genie-pipeline label", description=__doc__.split("\n")[0])
    add_label_args(p)
    args = p.parse_args(argv)
    try:
        return run_label(args)
    except Exception as e:  # noqa: BLE001
        from genie_pipeline.filtering.quality_data import QualityError

        try:
            from genie_pipeline.config import ConfigError
        except ImportError:  # pragma: no cover
            ConfigError = QualityError  # noqa: N806
        if isinstance(e, (QualityError, ConfigError, ValueError, OSError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
