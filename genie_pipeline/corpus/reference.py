"""The sample corpus's reference labels, and `make demo`'s quality step that trains from them.

The corpus catalog says per video whether it is good or bad (`quality_label`), so the demo
needs no person: every clip gets its video's label (`reference_labels`), the classifier is
trained with whole games held out (`game_of`: every video of a test game, clean or degraded,
is unseen in training, so the AUC it prints is the one new footage meets), every clip of the ingest output is scored by the Beam stage,
and the shards are rewritten with the model's threshold (`refilter`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from genie_pipeline.filtering.quality import (LABELS, QualityError, refilter, resolve_labels, score_manifest,
                                              train_quality)
from genie_pipeline.filtering.quality.train import split_videos
from genie_pipeline.shards.reader import ClipIndex, has_table, read_rows


def reference_labels(ingest_out_dir: str, catalog_path: str) -> list[dict[str, Any]]:
    """Labels for every clip of an ingest output from the corpus catalog: each clip gets its
    video's `quality_label` (clip -> video through the manifest's video_id)."""
    ingest_out_dir = str(ingest_out_dir)
    if not has_table(ingest_out_dir, "manifest"):
        raise QualityError(f"{ingest_out_dir} has no manifest table: run the ingest first")
    by_video: dict[str, str] = {}
    try:
        lines = Path(catalog_path).read_text().splitlines()
    except OSError as e:
        raise QualityError(f"cannot read catalog {catalog_path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise QualityError(f"{catalog_path}:{n}: not JSON: {e}") from None
        label = entry.get("quality_label")
        if label is None:
            continue
        if label not in LABELS:
            raise QualityError(f"{catalog_path}:{n}: quality_label {label!r} is not good|bad")
        by_video[str(entry["id"])] = label
    rows = read_rows(ingest_out_dir, "manifest", columns=["key", "video_id", "video_key", "source"])
    labels = [{"key": r["key"], "video_id": r["video_id"], "label": by_video[str(r["video_id"])],
               "labeller": "reference", "labelled_at": None}
              for r in rows if str(r["video_id"]) in by_video]
    if not labels:
        raise QualityError(f"no clip of {ingest_out_dir} belongs to a video labelled in {catalog_path}")
    return labels


def game_of(row: dict[str, Any]) -> str:
    """What a held-out unit is: the video's game or robot setup (a montage of several games,
    `mixed`, or a video without one is its own unit)."""
    return str(row["id"]) if row.get("game") in (None, "mixed") else str(row["game"])


def games_by_video(catalog_path: str) -> dict[str, str]:
    """video id -> `game_of` its catalog row."""
    rows = [json.loads(x) for x in Path(catalog_path).read_text().splitlines() if x.strip()]
    return {str(r["id"]): game_of(r) for r in rows}


APPLY_MIN_ROC_AUC = 0.8  # demo_quality filters with a model only above this held-out ROC-AUC


def demo_quality(cfg, corpus: Path, progress: bool = True) -> str:
    """Train from `corpus`'s reference labels (model: filters.quality.model, else
    OUT/quality/model.pt), score every clip of cfg.output.dir, refilter with the model's
    threshold where its ROC-AUC on held-out games reaches APPLY_MIN_ROC_AUC (or with
    filters.quality.threshold, where set); a one-line summary."""
    out = cfg.output.dir
    qcfg = cfg.filters.quality
    catalog = str(Path(corpus) / "catalog.jsonl")
    ref = reference_labels(out, catalog)
    labels = resolve_labels(ref)
    split = split_videos({str(r["video_id"]): r["label"] for r in ref}, qcfg.val_fraction, qcfg.test_fraction,
                         qcfg.seed, group_of=games_by_video(catalog))
    model_path = Path(qcfg.model) if qcfg.model else Path(out) / "quality" / "model.pt"
    meta = train_quality(ClipIndex.open(out), labels, model_path, qcfg,
                         label_source="corpus reference labels", progress=progress, split=split)
    rows = score_manifest(out, qcfg.model_copy(update={"model": str(model_path)}))
    threshold = qcfg.threshold if qcfg.threshold is not None else meta["threshold"]
    part = "test" if meta["metrics"].get("test") else "val"  # val: too few games for a test part
    m = meta["metrics"][part]
    # a model that ranks clips of unseen games this poorly would cost more good clips than the
    # bad ones it catches (its precision threshold comes from a handful of validation clips):
    # every clip is scored and kept, unless the config names a threshold
    trusted = qcfg.threshold is not None or (m["roc_auc"] is not None and m["roc_auc"] >= APPLY_MIN_ROC_AUC)
    r = refilter(out, threshold if trusted else 0.0, cfg.shards, cfg.clips.spec, rows=rows)

    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    applied = (f"at threshold {threshold:.3f}" if trusted else
               f"at threshold {threshold:.3f}, which is not applied: ROC-AUC below {APPLY_MIN_ROC_AUC} on unseen "
               f"games (label more clips, or set filters.quality.threshold), so every clip is scored and kept")
    return (f"{model_path} — ROC-AUC {f(m['roc_auc'])} on {len(split[part])} videos of games it never trained on "
            f"({part}), precision {f(m['precision'])}, "
            f"recall {f(m['recall'])} {applied}; clips kept {r['kept_before']} -> {r['kept_after']}")
