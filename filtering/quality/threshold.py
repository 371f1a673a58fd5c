"""Refilter: re-apply a quality threshold to an ingest output without decoding any source.

kept/reason come from each clip's stored quality_score (or from new scores, `score_manifest`),
then shards and manifest are brought into agreement by `shards.commit.reshard` under the
output's lock, one manifest part at a time.
"""
from __future__ import annotations

import math
from typing import Any

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.commit import reshard
from genie_pipeline.shards.config import ShardsConfig
from genie_pipeline.shards.dedupe import apply_reelections, reelect
from genie_pipeline.shards.reader import has_table, iter_part_batches, table_files


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
             rows: list[dict] | None = None, snapshot_meta: dict | None = None) -> dict[str, Any]:
    """Apply `threshold` to the output's manifest (with the new scores of `rows`, the manifest
    as `score_manifest` returns it, where given) and make the shards agree
    (`shards.commit.reshard`), streaming the manifest part by part. A duplicate group whose
    kept clip the threshold rejects keeps its best member that passes (shards.dedupe.reelect).
    `spec`: the clip spec for an output whose stats.json records none. Returns threshold,
    clips, kept_before, kept_after, the changes (kept, rejected, unscored) and the output's new
    stats. `snapshot_meta`: what the new snapshot records of the command (shards/snapshots.py)."""
    if not 0 <= threshold <= 1:
        raise QualityError(f"threshold: must be between 0 and 1, got {threshold}")
    out_dir = str(out_dir)
    if not has_table(out_dir, "manifest"):
        raise QualityError(f"{out_dir} has no manifest table: is it an ingest output directory?")
    scores = None if rows is None else {r["key"]: r.get("quality_score") for r in rows}
    with fs.output_lock(out_dir, "refilter"):  # no ingest commits between reading and rewriting
        return _refilter(out_dir, threshold, shards, spec, scores, snapshot_meta)


def _refilter(out_dir: str, threshold: float, shards: ShardsConfig, spec: ClipSpec | None,
              scores: dict | None, snapshot_meta: dict | None = None) -> dict[str, Any]:
    before, unscored, scored = 0, 0, False
    for r in _rows(out_dir, scores, None):
        before += bool(r["kept"])
        scored = scored or _score(r) is not None
        unscored += r.get("reason") in ("", None) and _score(r) is None
    if not scored:
        raise QualityError(f"no clip in the manifest of {out_dir} has a quality_score: run the ingest with "
                           "filters.quality.mode score_only or filter first")
    if not fs.isdir(fs.join(out_dir, "clips")):
        raise QualityError(f"{out_dir} has no clip store (clips/) to rewrite shards from: refilter needs "
                           "shards.keep_clip_store: true at ingest")
    new_rep_of = reelect(lambda: _rows(out_dir, scores, threshold),
                         lambda r: _score(r) is None or _score(r) >= threshold)

    def decide(part: list[dict]) -> None:
        _rescore(part, scores)
        apply_threshold(part, threshold)
        apply_reelections(part, new_rep_of)

    stats, moved = reshard(out_dir, decide, int(shards.target_mb * 2**20), shards.max_clips, spec,
                           {**(snapshot_meta or {}), "threshold": threshold})
    return {"threshold": threshold, "clips": stats["clips"], "kept_before": before, "kept_after": stats["clips_kept"],
            **moved, "unscored": unscored, "stats": stats}


_RANKING = ["key", "video_key", "duration_s", "kept", "reason", "quality_score", "duplicate_of"]


def _rescore(rows: list[dict], scores: dict[str, float] | None) -> None:
    if scores is not None:
        for r in rows:
            r["quality_score"] = scores.get(r["key"], r.get("quality_score"))


def _rows(out_dir: str, scores: dict | None, threshold: float | None):
    """The manifest's ranking columns, row by row, with the new scores and (unless None) the
    threshold applied: one record batch in memory at a time."""
    for path in table_files(out_dir, "manifest"):
        for b in iter_part_batches(path, _RANKING):
            rows = b.to_pylist()
            _rescore(rows, scores)
            if threshold is not None:
                apply_threshold(rows, threshold)
            yield from rows
