"""`make demo`'s quality step: train from the corpus's reference labels, score, filter.

The sample corpus's catalog says per video whether it is good or bad (`quality_label`), so
the demo needs no person: every clip gets its video's label (`reference_labels`), the
classifier is trained with held-out videos, every clip of the ingest output is scored by
the Beam stage, and the shards are rewritten with the model's threshold (`refilter`).
"""
from __future__ import annotations

from pathlib import Path

from genie_pipeline.filtering.quality import apply_threshold, reference_labels, refilter, score_manifest
from genie_pipeline.shards.reader import ClipIndex
from genie_pipeline.filtering.quality_data import resolve_labels
from genie_pipeline.filtering.quality_train import train_quality


def demo_quality(cfg, corpus: Path, progress: bool = True) -> str:
    out = cfg.output.dir
    qcfg = cfg.filters.quality
    labels = resolve_labels(reference_labels(out, str(Path(corpus) / "catalog.jsonl")))
    model_path = Path(qcfg.model) if qcfg.model else Path(out) / "quality" / "model.pt"
    meta = train_quality(ClipIndex.open(out), labels, model_path, qcfg,
                         label_source="corpus reference labels", progress=progress)
    rows = score_manifest(out, qcfg.model_copy(update={"model": str(model_path)}))
    threshold = qcfg.threshold if qcfg.threshold is not None else meta["threshold"]
    r = refilter(out, threshold, cfg, rows=rows)
    m = meta["metrics"].get("test") or meta["metrics"]["val"]
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"
    return (f"{model_path} — held-out ROC-AUC {f(m['roc_auc'])}, precision {f(m['precision'])}, "
            f"recall {f(m['recall'])} at threshold {threshold:.3f}; clips kept {r['kept_before']} -> {r['kept_after']}")


__all__ = ["demo_quality", "apply_threshold"]
