"""The clip quality classifier: label clips, train, score at ingest, refilter.

    genie-pipeline label OUT          people label clips good/bad on a web page (label/)
    genie-pipeline train-quality OUT  ResNet18 on K frames per clip -> model.pt + model.json (train.py)
    ingest (filters.quality.mode)     ScoreQuality: quality_score per clip, reject below threshold (score.py)
    genie-pipeline refilter OUT       re-apply another threshold without decoding sources again (threshold.py)

This module is the public API. Importing it loads no torch and no Beam: the names whose
modules need them are imported on first use. (No module is named like a function here:
importing a submodule sets the package attribute of its name, which would hide the function.)
"""
from __future__ import annotations

import importlib

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.labels import LABELS, load_labels, resolve_labels

_LAZY = {
    "train_quality": "train",
    "read_metadata": "model", "load_quality_model": "model", "save_quality_model": "model",
    "score_manifest": "score", "ScoreQuality": "score",
    "refilter": "threshold", "apply_threshold": "threshold",
    "open_label_store": "label.store",
    "export_labels": "label.exchange", "import_labels": "label.exchange",
    "serve_labels": "label.server", "default_labeller": "label.server",
}

__all__ = ["QualityError", "QualityConfig", "LABELS", "load_labels", "resolve_labels", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
