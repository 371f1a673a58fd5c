"""What a training config must satisfy before any data is read: the model config it asks
for builds, the batch splits over the processes, the strategy allows the options. Nothing here
imports torch, so the CLI refuses a bad config at once (`genie_pipeline.config.check_train`).
Each failure is a `TrainingError` naming the `train.…` key to change."""
from __future__ import annotations

import copy
from typing import Any

from genie_pipeline.models.config import GenieConfig, ModelConfigError, get_config

from .config import TrainConfig
from .errors import TrainingError


def build_model_config(cfg: TrainConfig) -> GenieConfig:
    """The model config a training config asks for: the named config, `train.overrides` (dotted
    keys or nested mappings), `train.frames` and `train.resolution`. Bad sizes raise
    `TrainingError` with the `train.…` key to change."""
    overrides = copy.deepcopy(cfg.overrides)
    flat_keys = _flat_keys(overrides)
    if "frames" in flat_keys and _flat_get(overrides, "frames") != cfg.frames:
        raise TrainingError("train.overrides.frames", f"conflicts with train.frames={cfg.frames}; set train.frames only")
    extra: dict[str, Any] = {"frames": cfg.frames}
    if cfg.resolution:
        for k in ("image_height", "image_width"):
            if k in flat_keys:
                raise TrainingError(f"train.overrides.{k}", "set the image size with train.resolution")
        extra["image_height"], extra["image_width"] = int(cfg.resolution[0]), int(cfg.resolution[1])
    try:
        return get_config(cfg.model, {**overrides, **extra})
    except ModelConfigError as e:
        raise TrainingError(_train_key(e.key, cfg), e.message) from None


def _train_key(key: str, cfg: TrainConfig) -> str:
    """The train.… key behind a model config key."""
    if key == "name":
        return "train.model"
    if key == "frames":
        return "train.frames"
    if key in ("image_height", "image_width") and cfg.resolution:
        return "train.resolution"
    return f"train.overrides.{key}"


def _flat_keys(d: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a nested override mapping (`stated_params` is a value, not a section)."""
    out = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key != "stated_params":
            out |= _flat_keys(v, key + ".")
        else:
            out.add(key)
    return out


def _flat_get(d: dict, key: str):
    if key in d:
        return d[key]
    head, _, rest = key.partition(".")
    return _flat_get(d[head], rest) if rest and isinstance(d.get(head), dict) else None


def check_train_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Every check that needs only the config and the number of processes: the model config
    builds, the batch splits over the processes, the strategy allows the options."""
    build_model_config(cfg)
    check_parallel(cfg, world_size)


def check_parallel(cfg: TrainConfig, world_size: int) -> None:
    """The settings that depend on the number of processes."""
    if cfg.batch_size % world_size:
        raise TrainingError("train.batch_size",
                            f"global batch {cfg.batch_size} does not split over {world_size} processes")
    if cfg.strategy == "fsdp" and cfg.compile:
        raise TrainingError("train.compile", "torch.compile with fsdp is not supported here; use one of them")
