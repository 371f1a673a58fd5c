"""Refilter: re-apply a quality threshold to an ingest output without decoding any source.

kept/reason come from each clip's stored quality_score (or from new scores, `score_manifest`),
then shards and manifest are rewritten from the clip store by `shards.commit.rebuild_shards`
under the output's lock.
"""
from __future__ import annotations

import math
from typing import Any

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.commit import rebuild_shards
from genie_pipeline.shards.config import ShardsConfig
from genie_pipeline.shards.dedupe import reelect
from genie_pipeline.shards.reader import read_rows, table_path


def apply_threshold(rows: list[dict], threshold: float) -> dict[str, int]:
    """Update kept/reason from quality_score in manifest rows (in place). Rows rejected for
    another reason keep it; rows without a score (never scored) are left as they are."""
    changed = {"kept": 0, "rejected": 0, "unscored": 0}
    for r in rows:
        if r.get("reason") not in ("", None, "quality"):
            continue
        s = _score(r)
        if s is None:
            if r.get("reason") != "quality":
                changed["unscored"] += 1
            continue
        keep = s >= threshold
        if keep and not r["kept"]:
            changed["kept"] += 1
        elif not keep and r["kept"]:
            changed["rejected"] += 1
        r["kept"], r["reason"] = bool(keep), "" if keep else "quality"
    return changed


def _score(r: dict) -> float | None:
    s = r.get("quality_score")
    return None if s is None or (isinstance(s, float) and math.isnan(s)) else s


def refilter(out_dir: str, threshold: float, shards: ShardsConfig, spec: ClipSpec | None,
             rows: list[dict] | None = None) -> dict[str, Any]:
    """Apply `threshold` to the output's manifest (or to `rows`, the manifest with new
    scores) and rewrite its shards. `spec`: the clip spec for an output whose stats.json
    records none. Returns threshold, clips, kept_before, kept_after, the changes (kept,
    rejected, unscored) and the output's new stats."""
    if not 0 <= threshold <= 1:
        raise QualityError(f"threshold: must be between 0 and 1, got {threshold}")
    out_dir = str(out_dir)
    manifest = table_path(out_dir, "manifest")
    if rows is None:
        if not fs.exists(manifest):
            raise QualityError(f"{out_dir} has no manifest.parquet: is it an ingest output directory?")
        rows = read_rows(out_dir, "manifest")
    if not any(r.get("quality_score") is not None and not math.isnan(r["quality_score"]) for r in rows):
        raise QualityError(f"no clip in {manifest} has a quality_score: run the ingest with "
                           "filters.quality.mode score_only or filter first")
    if not fs.isdir(fs.join(out_dir, "clips")):
        raise QualityError(f"{out_dir} has no clip store (clips/) to rewrite shards from: refilter needs "
                           "shards.keep_clip_store: true at ingest")
    before = sum(bool(r["kept"]) for r in rows)
    changed = apply_threshold(rows, threshold)
    # a group whose kept clip the threshold now rejects keeps its best member that passes
    changed["kept"] += reelect(rows, lambda r: _score(r) is None or _score(r) >= threshold)
    with fs.output_lock(out_dir, "refilter"):
        stats = rebuild_shards(out_dir, rows, int(shards.target_mb * 2**20), shards.max_clips, spec)
    return {"threshold": threshold, "clips": len(rows), "kept_before": before,
            "kept_after": sum(bool(r["kept"]) for r in rows), **changed, "stats": stats}
