"""The sections of pipeline.yaml that define the dataset: the clip format, shards, output.

Defaults live here once; `pipeline.yaml` documents them and a test compares the two.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from genie_pipeline.shards.clip import ClipSpec


MAX_CLIP_BYTES = 2 << 30


class KeyedError(ValueError):
    """A check across a section's fields that blames one of them: `key` is its dotted path
    inside the section being validated (the config loader prefixes the section's own)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


class Section(BaseModel):
    """A config section: unknown keys are errors, defaults are validated too, and no number
    is infinite or NaN (`target_mb: .inf` would never close a shard)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class ClipsConfig(Section):
    fps: int = Field(default=10, ge=1, le=240)
    width: int = Field(default=160, ge=16, le=7680)
    height: int = Field(default=90, ge=16, le=4320)
    seconds: float = Field(default=16, gt=0, le=3600)
    # pad: keep the whole frame, letterbox/pillarbox; crop: fill, cut edges; stretch: distort
    aspect: Literal["pad", "crop", "stretch"] = "pad"
    crf: int = Field(default=23, ge=0, le=51)
    keyframe_interval: int = Field(default=16, ge=1)
    # at most this many clips per video, spread evenly over it (not the first N: title screens)
    max_clips_per_video: int | None = Field(default=None, ge=1)
    # Off (the default): clips lie on the video's fixed grid of `seconds` and may hold hard cuts
    # (a level change, a respawn, a procgen reset are gameplay); each clip records its cuts'
    # frames (`cut_frames`) and readers never take a window across one; montages are rejected
    # by filters.heuristics. On: clips lie inside shots: a shot at least max(min_shot_s,
    # seconds) long gives consecutive clips from its first frame; the remainder shorter than a
    # clip is dropped, and so is every shorter shot (a video with none: NoShotLongEnough)
    split_at_cuts: bool = False
    min_shot_s: float = Field(default=0, ge=0, le=3600)

    @field_validator("width", "height")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even (h264 with 4:2:0 chroma), got {v}")
        return v

    @model_validator(mode="after")
    def _fits(self):
        if self.frames < 1:
            raise KeyedError("seconds", f"{self.seconds:g} s at {self.fps} FPS holds no frame")
        if self.keyframe_interval > self.frames:
            raise KeyedError("keyframe_interval", f"{self.keyframe_interval} > the {self.frames} frames of a clip")
        if self.frames * self.height * self.width * 3 > MAX_CLIP_BYTES:
            raise ValueError(f"one clip of {self.frames} frames at {self.width}x{self.height} is over "
                             f"{MAX_CLIP_BYTES >> 30} GiB decoded (a worker holds one in memory)")
        if self.min_shot_s * self.fps * self.height * self.width * 3 > MAX_CLIP_BYTES:
            raise KeyedError("min_shot_s", f"{self.min_shot_s:g} s at {self.width}x{self.height} is over "
                             f"{MAX_CLIP_BYTES >> 30} GiB decoded (a shot's frames are held until it is that long)")
        return self

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
    keep_clip_store: bool = True
    # balance caps on kept clips over the whole output (None: no cap), applied when a run
    # is committed; clips over a cap are rejected "cap:channel" etc., spread over videos
    max_clips_per_channel: int | None = Field(default=None, ge=1)
    max_clips_per_query: int | None = Field(default=None, ge=1)
    max_clips_per_source: int | None = Field(default=None, ge=1)

    @property
    def caps(self) -> dict[str, int | None]:
        return {"channel": self.max_clips_per_channel, "query": self.max_clips_per_query,
                "source": self.max_clips_per_source}


class OutputConfig(Section):
    dir: str = "out/ingest"
    # how long a detached job (ingest --detach, flex template) holds a bucket output: its commit
    # frees it; a job that dies holds it until then (delete OUT/.lock to free it at once)
    job_lease_h: float = Field(default=48, gt=0)
    # a command run after each commit of `genie-pipeline ingest` (split like a shell would, run
    # without one), with GENIE_SNAPSHOT, GENIE_OUTPUT and the counts in its environment
    on_commit: str | None = None
    # OUT/report.html after a run that changed something: drawn in a process of its own once
    # the run is committed (the ingest returns without waiting for it; a bucket output:
    # inline), or inline before the ingest returns
    report: Literal["background", "inline"] = "background"

    @field_validator("on_commit")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        import shlex

        if v is None:
            return v
        try:
            if not shlex.split(v):
                raise ValueError("an empty command")
        except ValueError as e:
            raise ValueError(f"not a command line ({e})") from None
        return v
