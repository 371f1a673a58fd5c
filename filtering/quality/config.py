"""`filters.quality` section of pipeline.yaml (the ResNet18 quality classifier stage).

Covers the whole quality loop: the labelling page (`genie-pipeline label`), training
(`genie-pipeline train-quality`), the scoring stage of the ingest pipeline and `refilter`.
Pydantic only: `genie_pipeline.filtering.config` assembles it into the `filters` section.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from genie_pipeline.shards.config import Section


class QualityConfig(Section):
    # ---------------------------------------------------------------- scoring (ingest stage)
    # off: no scoring; score_only: store quality_score, keep everything; filter: reject below threshold
    mode: Literal["off", "score_only", "filter"] = "off"
    model: str | None = None  # path to the model file written by `genie-pipeline train-quality`
    threshold: float | None = Field(default=None, ge=0, le=1)  # default: the one stored with the model
    batch_size: int = Field(default=16, ge=1, description="clips per forward pass of the classifier (x frames_per_clip images)")
    channels_last: bool = True
    # bf16 autocast for inference: auto = where training measured that it keeps accuracy and the
    # device the worker scores on computes bf16 natively (decided on the worker)
    bf16: Literal["auto", "on", "off"] = "auto"
    # int8 trunk on CPU (post-training quantization calibrated on frames stored with the model; about
    # 1.7x faster): auto = where training measured that it keeps accuracy (a model trained before
    # this setting existed has no calibration frames and scores in fp32); on = fail where it cannot
    int8: Literal["auto", "on", "off"] = "auto"
    # where the classifier runs, decided on each worker: auto = CUDA where that worker has a usable
    # GPU, else CPU; cuda = fail the job on a worker without one (never score on CPU by surprise)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # torch intra-op threads: per scoring process (default: the worker's cores // its SDK processes,
    # 1 on Dataflow); training (default torch's)
    torch_threads: int | None = Field(default=None, ge=1)

    # ------------------------------------------------------------- input spec (training)
    # K frames sampled per clip (the scoring stage uses the K stored with the model)
    frames_per_clip: int = Field(default=4, ge=1, le=64)
    # clip score: mean frame probability (mean_prob), mean_logit, min_prob, or the clip head that
    # also sees how the K frames differ (learned); auto: the best on validation (ties: mean_prob)
    pooling: Literal["auto", "mean_prob", "mean_logit", "min_prob", "learned"] = "auto"

    # ----------------------------------------------------------------------- labelling
    labels_db: str | None = None  # what `label` writes and train-quality reads (default OUT/labels.sqlite)
    # `label --active`: this share of the sample are the clips `model` is least sure of (the rest stratified)
    active_share: float = Field(default=0.5, ge=0, le=1)

    # ------------------------------------------------------------------------ training
    arch: Literal["resnet18", "timm-resnet18"] = "resnet18"
    weights: str | None = None  # optional local backbone weights (torch.load(weights_only=True))
    target_precision: float = Field(default=0.9, gt=0, le=1)
    epochs: int = Field(default=30, ge=1)
    patience: int = Field(default=5, ge=1, description="epochs without validation improvement before stopping")
    min_epochs: int = Field(default=8, ge=1, description="no early stop before this epoch")
    train_batch_size: int = Field(default=16, ge=2, description="clips per training step")
    steps_per_epoch: int | None = Field(default=None, ge=1, description="default: one pass over the training clips, at least 8")
    learning_rate: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    head_learning_rate: float = Field(default=0.03, gt=0, description="the clip head (pooling: learned)")
    head_weight_decay: float = Field(default=0.01, ge=0, description="the clip head's AdamW weight decay")
    # frame head loss: every frame takes its clip's label (frame), or multiple instance (mil: a bad
    # clip needs one bad frame, a good clip only good ones)
    frame_loss: Literal["frame", "mil"] = "mil"
    # Emulated bf16 (a CPU without AVX512-BF16/AMX) is many times slower than fp32, so `auto`
    # uses it only where the CPU computes bf16 natively.
    train_bf16: bool | Literal["auto"] = Field(
        default="auto", description="bf16 autocast for the trunk while training (fp32 weights); auto: only on a CPU "
                                    "with native bf16")
    augment: bool = True
    train_frame_pool: int = Field(default=10, ge=1, description="frames decoded per training clip; each step "
                                  "takes K of them near the scoring positions (P=10: every keyframe of a clip)")
    # self-supervised pretraining (filtering/quality/pretrain.py): train-quality first trains the
    # trunk contrastively on the input's clips, labelled or not, starting from `weights` when given
    pretrain_steps: int = Field(default=0, ge=0, description="contrastive pretraining steps before fine-tuning (0: off)")
    pretrain_clips: int = Field(default=2000, ge=4, description="unlabelled clips pretraining draws from (at most)")
    pretrain_batch_size: int = Field(default=32, ge=2, description="clips per pretraining step (two views each)")
    pretrain_learning_rate: float = Field(default=1e-3, gt=0)
    pretrain_temperature: float = Field(default=0.2, gt=0, description="NT-Xent temperature")
    val_fraction: float = Field(default=0.2, ge=0, lt=1, description="videos for early stopping and the threshold")
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="held-out videos, reported only")
    seed: int = 0
