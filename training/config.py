"""`train` section of pipeline.yaml.

Kept free of torch and the model code: `genie_pipeline.config` imports it to validate the
file. Checks that need the model code (patch vs resolution, heads vs width) or the number of
processes run in `training.checks.check_train_config`, which raises `TrainingError` with a
dotted `train.…` key.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from genie_pipeline.shards.config import Section

PHASES = ("tokenizer", "dynamics")  # phase 1 trains the tokenizer, phase 2 the LAM and dynamics model


class TrainConfig(Section):
    model_config = ConfigDict(protected_namespaces=())  # a `model` key is ours, not pydantic's

    # ------------------------------------------------------------------ model
    model: str = Field(
        default="tiny",
        description="named model config from genie_pipeline.models.config.NAMED_CONFIGS: tiny, small, base, paper, paper-11b",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="model config overrides, dotted keys or nested mappings, e.g. {'tokenizer.patch': 8}",
    )

    # ------------------------------------------------------------------- data
    data: list[str] = Field(
        default_factory=list,
        description="shard inputs: ingest output dirs (OUT: the shards of its LATEST snapshot; OUT@ID: of snapshot ID), shard dirs, "
        "tar files or globs; local or remote (gs://, s3://). Empty: the pipeline's output.dir. "
        "Inputs given on the command line replace this list.",
    )
    split: str = Field(default="train", description="which shards to train on: SPLIT-NNNNNN.tar")
    frames: int = Field(default=16, ge=2, description="frames per training window (Genie: 16); sets the model's frames")
    resolution: list[int] | None = Field(
        default=None,
        description="[height, width] to resize windows to (antialiased bilinear); null keeps the clips' size (90x160)",
    )
    windows_per_clip: int = Field(
        default=8, ge=1, description="random windows taken from each decoded clip (each clip is opened once)"
    )
    clips_per_group: int = Field(
        default=8, ge=1, description="clips decoded together whose windows are shuffled among each other"
    )
    shuffle_buffer: int = Field(
        default=256, ge=1, description="clip-level shuffle buffer (compressed clips, ~50 kB each) per loader worker"
    )
    num_workers: int = Field(default=2, ge=0, description="DataLoader worker processes per rank (0: in-process)")
    decoder: Literal["auto", "decord", "pyav", "torchcodec"] = Field(
        default="auto",
        description="clip decoder; auto picks the fastest installed one measured by benchmarks/train.py "
                    "(torchcodec, an optional extra, else pyav)",
    )
    tokenizer_checkpoint: str | None = Field(
        default=None,
        description="phase 2 (dynamics) starts from this tokenizer checkpoint; null: OUT_DIR/checkpoints/tokenizer/latest.pt",
    )
    max_bad_shard_fraction: float = Field(
        default=0.1, ge=0, le=1,
        description="stop with an error when more than this share of shards (or samples) is missing or corrupt",
    )

    # ----------------------------------------------------------- optimisation
    batch_size: int = Field(default=8, ge=1, description="global batch size (windows per step over all ranks)")
    tokenizer_steps: int = Field(default=1000, ge=0, description="optimizer steps of phase 1 (tokenizer)")
    dynamics_steps: int = Field(default=1000, ge=0, description="optimizer steps of phase 2 (LAM + dynamics)")
    lr: float = Field(default=3e-4, gt=0, le=10, description="peak learning rate (AdamW)")
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1, description="cosine decays to lr * min_lr_ratio")
    warmup_steps: int = Field(default=100, ge=0, description="linear warmup steps of each phase")
    weight_decay: float = Field(default=0.05, ge=0, description="AdamW decoupled weight decay (matrices only)")
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95], description="AdamW betas")
    grad_clip: float = Field(default=1.0, ge=0, description="clip the global grad norm to this (0: off)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto: bf16 autocast on GPUs that support it, fp32 on CPU; bf16: autocast also on CPU"
    )
    compile: bool = Field(default=False, description="torch.compile the models")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: cuda when available")
    strategy: Literal["auto", "none", "ddp", "fsdp"] = Field(
        default="auto",
        description="multi-process strategy under torchrun: auto = ddp when WORLD_SIZE > 1; fsdp shards large models",
    )
    threads: int = Field(default=0, ge=0, description="torch CPU threads per process (0: torch's default)")

    # ------------------------------------------------------- outputs / logging
    out_dir: str = Field(default="runs/genie", description="run directory: checkpoints, metrics.csv, TensorBoard, samples")
    checkpoint_every: int = Field(default=500, ge=1, description="write a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = Field(default=2, ge=1, description="step checkpoints kept per phase (latest.pt is always kept)")
    log_every: int = Field(default=10, ge=1, description="console / metrics.csv / TensorBoard every N steps")
    sample_every: int = Field(default=500, ge=1, description="save reconstructions / rollouts (PNG + GIF) every N steps")
    seed: int = Field(default=0, description="seed of model init, masking and the data order")

    @field_validator("resolution")
    @classmethod
    def _resolution(cls, v):
        if v is not None and (len(v) != 2 or min(v) < 1):
            raise ValueError("must be [height, width] with positive sizes")
        return v

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if len(v) != 2 or not all(0 <= b < 1 for b in v):
            raise ValueError("must be two numbers in [0, 1)")
        return v
