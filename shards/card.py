"""`OUT/README.md`: the output's dataset card, in the Hugging Face dataset-card layout (a YAML
header a hub reads: licence, size, tags, the splits' files; then prose), rewritten at every
commit of the output (an ingest's, refilter's) from stats.json, the manifest and what the
caller knows of the config: sources, licences, counts, clip spec, filters and thresholds, how
to load it. It describes; nothing reads it back."""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from genie_pipeline.shards import fs
from genie_pipeline.shards.reader import iter_part_batches, read_stats, table_files

CARD = "README.md"
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]


def size_category(n: int) -> str:
    return next((name for bound, name in _SIZES if n < bound), "n>100M")


def _kept_by_source(out_dir: str) -> tuple[dict[str, dict[str, float]], Counter]:
    """{source: {clips, hours}} of the kept clips, and their licences (as sources state them)."""
    per: dict[str, dict[str, float]] = {}
    licenses: Counter = Counter()
    for path in table_files(out_dir, "manifest"):
        for b in iter_part_batches(path, ["source", "kept", "duration_s", "license"]):
            d = b.to_pydict()
            for i, kept in enumerate(d["kept"]):
                if not kept:
                    continue
                s = per.setdefault(d["source"][i] or "?", {"clips": 0, "hours": 0.0})
                s["clips"] += 1
                s["hours"] += (d["duration_s"][i] or 0) / 3600
                licenses[(d.get("license") or [None] * len(d["kept"]))[i] or "not stated"] += 1
    return per, licenses


def card_text(out_dir: str, details: dict[str, Any] | None = None) -> str:
    """The card. `details`: {"sources": [{"name", "type", "where"}], "thresholds": {score: text},
    "dedupe": text, "keywords": text} from the config of the run that commits."""
    details = details or {}
    stats = read_stats(out_dir)
    spec = stats.get("clip_spec") or {}
    per, licenses = _kept_by_source(out_dir)
    n = int(stats.get("clips_kept", 0))
    lic = sorted(licenses.items(), key=lambda x: -x[1])
    header = {
        "license": "other",
        "pretty_name": f"genie-pipeline clips ({n} clips)",
        "size_categories": [size_category(n)],
        "task_categories": ["other"],
        "tags": ["video", "world-model", "genie", "webdataset"],
        # a split only where it has shards: a pattern matching nothing fails a hub's loader
        "configs": [{"config_name": "default", "data_files": [
            {"split": name, "path": f"shards/{split}-*.tar"} for split, name in (("train", "train"), ("val", "validation"))
            if stats.get(f"clips_{split}", 0)]}],
    }
    # each value as JSON, which is YAML: the header stays valid whatever a name holds
    lines = ["---"] + [f"{k}: {json.dumps(v)}" for k, v in header.items()] + ["---"]
    lines += [
        "", "# Video clips for world-model training", "",
        "Written by genie-pipeline (`genie-pipeline ingest`), rewritten at every commit of this folder.", "",
        "## Contents", "",
        "| | |", "|---|---|",
        f"| videos cut | {stats.get('videos_done', 0)} (failed: {stats.get('videos_failed', 0)}) |",
        f"| clips cut / kept | {stats.get('clips', 0)} / {n} |",
        f"| kept clips train / validation | {stats.get('clips_train', 0)} / {stats.get('clips_val', 0)} (split by video) |",
        f"| hours in / kept | {stats.get('hours_in', 0)} / {stats.get('hours_out', 0)} |",
        "", "## Clip format", "",
        f"Each sample is `KEY.mp4` (h264, {spec.get('width', '?')}x{spec.get('height', '?')}, {spec.get('fps', '?')} "
        f"FPS, {spec.get('frames', '?')} frames, a keyframe every {spec.get('keyframe_interval', '?')} frames, crf "
        f"{spec.get('crf', '?')}) and `KEY.json` (source, video id, start, split, every score). Keys are "
        "`[a-z0-9_-]` (`SOURCE_VIDEOID_STARTMS`); WebDataset cuts keys at the first dot.",
        "", "## Sources", "",
        "| source | type | where | kept clips | kept hours |", "|---|---|---|---|---|",
    ]
    srcs = {s["name"]: s for s in details.get("sources", [])}
    for name in sorted(set(srcs) | set(per)):
        s, k = srcs.get(name, {}), per.get(name, {"clips": 0, "hours": 0.0})
        lines.append(f"| {name} | {s.get('type', '?')} | {s.get('where', '')} | {int(k['clips'])} | {k['hours']:.2f} |")
    lines += ["", "## Licences", "",
              "As each source states it, per kept clip (`license` column of the manifest); check each before "
              "redistributing:", ""]
    lines += [f"- {name}: {count} clips" for name, count in lic] or ["- (no kept clips)"]
    lines += ["", "## Filters and thresholds", ""]
    for key in ("keywords", "dedupe"):
        if details.get(key):
            lines.append(f"- {key}: {details[key]}")
    lines += [f"- {score}: {text}" for score, text in sorted(details.get("thresholds", {}).items())]
    rejected = stats.get("clips_rejected") or {}
    if rejected:
        lines.append("- clips rejected, by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    lines += ["", "## Files", "",
              "- `shards/{train,val}-*.tar`: WebDataset shards; `shards/{split}.index.json`: their `wids` index; "
              "`shards/*.stats.json`: each shard's sample count and sha256 (`genie-pipeline verify` compares them)",
              "- `manifest/`, `videos/`, `failures/`, `candidates/`: Parquet tables (folders of part files; read a "
              "folder as one table)",
              "- `stats.json`: the counts above; `report.html`: the ingest report; `logs/`: one log per run",
              "", "## Loading", "", "```python", LOADING, "```", ""]
    return "\n".join(lines)


# the recipe the README shows, tested in tests/test_loading.py (keep the three in step)
LOADING = '''import json, glob, io
import av, numpy as np, webdataset as wds

def frames(mp4: bytes) -> np.ndarray:             # (T, H, W, 3) uint8
    with av.open(io.BytesIO(mp4)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])

ds = wds.WebDataset(sorted(glob.glob("OUT/shards/train-*.tar")), shardshuffle=False).map(
    lambda s: (frames(s["mp4"]), json.loads(s["json"])))

import wids                                        # random access by index
train = wids.ShardListDataset("OUT/shards/train.index.json")
clip = frames(train[0][".mp4"].read())

import pyarrow.dataset as pads, pandas as pd, duckdb
manifest = pads.dataset("OUT/manifest", format="parquet").to_table()
df = pd.read_parquet("OUT/manifest")
kept = duckdb.sql("SELECT source, count(*) n FROM 'OUT/manifest/*.parquet' WHERE kept GROUP BY source").df()'''


def write_card(out_dir: str, details: dict[str, Any] | None = None) -> str:
    path = fs.join(out_dir, CARD)
    fs.write_bytes(path, card_text(out_dir, details).encode())
    return path
