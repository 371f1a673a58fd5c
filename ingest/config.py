"""The `sources`, `download` and `runner` sections of pipeline.yaml."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from genie_pipeline.shards.config import Section

SOURCE_NAME_RE = re.compile(r"^[a-z0-9]{1,16}$")


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


# ------------------------------------------------------------------------------- runner
class RunnerConfig(Section):
    name: str = "FnApiRunner"
    direct_num_workers: int = Field(default=2, ge=1)
    running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "multi_processing"
    # any Beam pipeline options, e.g. ["--project=p", "--region=us-central1", "--temp_location=gs://b/tmp"]
    options: list[str] = Field(default_factory=list)
