"""The sections of pipeline.yaml that define the dataset: the clip format, shards, output.

Defaults live here once; `pipeline.yaml` documents them and a test compares the two.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from genie_pipeline.shards.clip import ClipSpec


class Section(BaseModel):
    """A config section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ClipsConfig(Section):
    fps: int = Field(default=10, ge=1)
    width: int = Field(default=160, ge=16)
    height: int = Field(default=90, ge=16)
    seconds: float = Field(default=16, gt=0)
    # pad: keep the whole frame, letterbox/pillarbox; crop: fill, cut edges; stretch: distort
    aspect: Literal["pad", "crop", "stretch"] = "pad"
    crf: int = Field(default=23, ge=0, le=51)
    keyframe_interval: int = Field(default=16, ge=1)
    max_clips_per_video: int | None = Field(default=None, ge=1)

    @property
    def frames(self) -> int:
        return int(round(self.fps * self.seconds))

    @property
    def spec(self) -> ClipSpec:
        return ClipSpec(fps=self.fps, width=self.width, height=self.height, frames=self.frames,
                        keyframe_interval=self.keyframe_interval, crf=self.crf)


class ShardsConfig(Section):
    target_mb: float = Field(default=64, gt=0)
    max_clips: int = Field(default=2000, ge=1)
    val_fraction: float = Field(default=0.05, ge=0, lt=1)
    seed: int = 0
    # shard writers running in parallel (each rolls its own tars)
    parallelism: int = Field(default=4, ge=1)
    keep_clip_store: bool = True


class OutputConfig(Section):
    dir: str = "out/ingest"
