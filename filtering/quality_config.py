"""`filters.quality` section of pipeline.yaml (the ResNet18 quality classifier stage).

Covers the whole quality loop: the labelling page (`genie-pipeline label`), training
(`genie-pipeline train-quality`), the scoring stage of the ingest pipeline and `refilter`.
Kept free of imports from genie_pipeline (genie_pipeline.config imports this module).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    # ---------------------------------------------------------------- scoring (ingest stage)
    # off: no scoring; score_only: store quality_score, keep everything; filter: reject below threshold
    mode: Literal["off", "score_only", "filter"] = "off"
    model: str | None = None  # path to the model file written by `genie-pipeline train-quality`
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: the one stored with the model
    batch_size: int = Field(default=16, ge=1, description="clips per RunInference batch (x frames_per_clip images)")
    channels_last: bool = True
    # bf16 autocast for inference: auto = only where training measured that it keeps accuracy
    bf16: Literal["auto", "on", "off"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="per worker; default cores // workers")

    # ------------------------------------------------------------- input spec (training)
    # K frames sampled per clip (the scoring stage uses the K stored with the model)
    frames_per_clip: int = Field(default=4, ge=1, le=64)
    pooling: Literal["mean_prob", "mean_logit", "min_prob"] = "mean_prob"

    # ----------------------------------------------------------------------- labelling
    labels_db: str | None = None  # default: OUT/labels.sqlite
    label_target: int = Field(default=1000, ge=1, description="clips in the labelling sample")

    # ------------------------------------------------------------------------ training
    arch: Literal["resnet18", "timm-resnet18"] = "resnet18"
    weights: str | None = None  # optional local backbone weights (torch.load(weights_only=True))
    target_precision: float = Field(default=0.9, gt=0, le=1)
    epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=5, ge=1, description="epochs without validation improvement before stopping")
    train_batch_size: int = Field(default=16, ge=2, description="clips per training step")
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    augment: bool = True
    val_fraction: float = Field(default=0.2, ge=0, lt=1, description="videos for early stopping and the threshold")
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="held-out videos, reported only")
    seed: int = 0
