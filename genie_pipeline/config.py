"""`pipeline.yaml`: one typed schema, validated on load.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names the key instead of a silently ignored setting. `load_config` raises `ConfigError`,
which the CLI turns into exit status 2 with the dotted key and the problem.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from genie_pipeline.filtering.quality_config import QualityConfig
from genie_pipeline.training.config import TrainConfig

SOURCE_NAME_RE = re.compile(r"^[a-z0-9]{1,16}$")


class ConfigError(Exception):
    """A bad configuration: `key` is the dotted path of the offending setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------- keywords
class KeywordSet(Section):
    """Terms matched case-insensitively as whole words (a term may be several words)."""

    include: list[str] = Field(default_factory=list)
    require: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


DEFAULT_INCLUDE = [
    "platformer", "2d", "side-scroller", "side scroller", "mario", "super mario", "sonic",
    "mega man", "megaman", "celeste", "hollow knight", "cuphead", "shovel knight", "rayman",
    "donkey kong", "kirby", "castlevania", "metroid", "pitfall", "montezuma", "coinrun",
    "kangaroo", "spelunky", "super meat boy", "ori", "terraria", "contra", "retro",
]
DEFAULT_REQUIRE = [
    "speedrun", "speed run", "playthrough", "longplay", "gameplay", "walkthrough",
    "let's play", "lets play", "no commentary", "full game", "any%", "100%", "world record",
    "tas", "run",
]
DEFAULT_EXCLUDE = [
    "movie", "film", "unboxing", "trailer", "reaction", "review", "reviews", "podcast",
    "tutorial", "cosplay", "lego", "toy", "toys", "music video", "soundtrack", "ost",
    "compilation", "memes", "animation", "cartoon", "news", "interview", "asmr",
]


class KeywordsConfig(KeywordSet):
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    require: list[str] = Field(default_factory=lambda: list(DEFAULT_REQUIRE))
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    fields: list[Literal["title", "description"]] = Field(default_factory=lambda: ["title"])
    # Named term sets that a source selects with `keywords: NAME` (robotics data has its own
    # vocabulary, or none at all).
    sets: dict[str, KeywordSet] = Field(default_factory=dict)


# ------------------------------------------------------------------------------ sources
class SourceBase(Section):
    name: str = Field(description="short id used in clip keys: [a-z0-9]{1,16}")
    # "default" = the top-level keywords; "none" = keep everything; other = keywords.sets[NAME]
    keywords: str = "default"
    limit: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not SOURCE_NAME_RE.match(v):
            raise ValueError("must match [a-z0-9]{1,16} (it becomes part of clip keys)")
        return v


class SearchSource(SourceBase):
    type: Literal["search"]
    queries: list[str] = Field(min_length=1)
    prefix: str = "ytsearch"
    max_results: int = Field(default=50, ge=1)
    # passed to yt-dlp as `extractor_args`, e.g. {"geniecorpus": {"server": ["http://…"]}}
    extractor_args: dict[str, dict[str, list[str]]] = Field(default_factory=dict)


class CatalogFields(Section):
    video_id: str = "id"
    url: str = "url"
    path: str = "path"
    title: str = "title"
    description: str = "description"
    duration: str = "duration"


class CatalogSource(SourceBase):
    type: Literal["catalog"]
    path: str
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    fields: CatalogFields = Field(default_factory=CatalogFields)


class UrlsSource(SourceBase):
    type: Literal["urls"]
    urls: list[str] = Field(default_factory=list)
    path: str | None = None  # a text file, one URL a line

    @model_validator(mode="after")
    def _some(self):
        if not self.urls and not self.path:
            raise ValueError("give `urls` or `path`")
        return self


class FilesSource(SourceBase):
    type: Literal["files"]
    glob: str  # local glob or any Beam FileSystem pattern (gs://bucket/videos/*.mp4)


class LeRobotSource(SourceBase):
    type: Literal["lerobot"]
    root: str
    keywords: str = "none"
    cameras: list[str] = Field(default_factory=list)  # empty: every video key in info.json


Source = Annotated[
    Union[SearchSource, CatalogSource, UrlsSource, FilesSource, LeRobotSource],
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------- download
class DownloadConfig(Section):
    scratch_dir: str | None = None  # default: OUT/_scratch
    keep: bool = False
    # small is enough for 160×90; "b" fallbacks keep single-file sites working
    format: str = "b[height<=360]/bv*[height<=360]+ba/b/bv*+ba"
    max_filesize_mb: float = Field(default=500, gt=0)
    max_duration_s: float = Field(default=4 * 3600, gt=0)
    retries: int = Field(default=4, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    timeout_s: float = Field(default=30.0, gt=0)
    per_host_concurrency: int = Field(default=2, ge=1)
    per_host_rate: float = Field(default=2.0, gt=0, description="downloads started per second per host")
    cookiefile: str | None = None
    proxy: str | None = None
    allowed_schemes: list[str] = Field(default_factory=lambda: ["http", "https"])
    ytdlp_options: dict[str, Any] = Field(default_factory=dict)


# -------------------------------------------------------------------------------- clips
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


# ------------------------------------------------------------------------------ filters
class HeuristicsConfig(Section):
    enabled: bool = True
    min_motion: float = Field(default=0.1, ge=0, description="percent of pixels changing per frame below: static")
    max_dark_fraction: float = Field(default=0.8, ge=0, le=1, description="share of near-black/blank frames above: black")
    min_unique_fraction: float = Field(default=0.25, ge=0, le=1, description="share of frames that change below: slideshow")
    max_cuts_per_min: float = Field(default=30.0, ge=0, description="scene cuts per minute above: rapid cuts")


class FiltersConfig(Section):
    heuristics: HeuristicsConfig = Field(default_factory=HeuristicsConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)


# ------------------------------------------------------------------------------- shards
class ShardsConfig(Section):
    target_mb: float = Field(default=64, gt=0)
    max_clips: int = Field(default=2000, ge=1)
    val_fraction: float = Field(default=0.05, ge=0, lt=1)
    seed: int = 0
    # shard writers running in parallel (each rolls its own tars)
    parallelism: int = Field(default=4, ge=1)
    keep_clip_store: bool = True


# ------------------------------------------------------------------------------- runner
class RunnerConfig(Section):
    name: str = "FnApiRunner"
    direct_num_workers: int = Field(default=2, ge=1)
    running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "multi_processing"
    # any Beam pipeline options, e.g. ["--project=p", "--region=us-central1", "--temp_location=gs://b/tmp"]
    options: list[str] = Field(default_factory=list)


class OutputConfig(Section):
    dir: str = "out/ingest"


class PipelineConfig(Section):
    sources: list[Source] = Field(min_length=1)
    keywords: KeywordsConfig = Field(default_factory=KeywordsConfig)
    download: DownloadConfig = Field(default_factory=DownloadConfig)
    clips: ClipsConfig = Field(default_factory=ClipsConfig)
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [s.name for s in self.sources]
        for i, n in enumerate(names):
            if names.index(n) != i:
                raise _KeyedError(f"sources.{i}.name", f"duplicate source name {n!r}")
        for i, s in enumerate(self.sources):
            if s.keywords not in ("default", "none") and s.keywords not in self.keywords.sets:
                raise _KeyedError(f"sources.{i}.keywords", f"no keyword set {s.keywords!r} in keywords.sets")
        return self


class _KeyedError(ValueError):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _format_validation_error(e: ValidationError) -> ConfigError:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    # drop pydantic's discriminator tag from the path ("sources.0.search.queries")
    if len(loc) >= 3 and loc[0] == "sources" and loc[2] in ("search", "catalog", "urls", "files", "lerobot"):
        loc.pop(2)
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, _KeyedError):
        return ConfigError(ctx_err.key, str(ctx_err))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against pipeline.yaml)"
    if err["type"] == "missing":
        msg = "required key is missing"
    return ConfigError(".".join(loc) or "(top level)", msg)


def parse_config(data: Any) -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "the config must be a mapping of sections")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise _format_validation_error(e) from None


def load_config(path: str | Path, output_dir: str | None = None) -> PipelineConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError("(file)", f"cannot read {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("(yaml)", f"{path} is not valid YAML: {e}") from None
    cfg = parse_config(data)
    if output_dir is not None:
        cfg.output.dir = output_dir
    return cfg
