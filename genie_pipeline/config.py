"""`pipeline.yaml`: one typed schema, validated on load.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names the key instead of a silently ignored setting. `load_config` raises `ConfigError`,
which the CLI turns into exit status 2 with the dotted key and the problem.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from genie_pipeline.filtering.config import FiltersConfig, KeywordsConfig
from genie_pipeline.ingest.config import DownloadConfig, RunnerConfig, Source
from genie_pipeline.shards.config import ClipsConfig, OutputConfig, Section, ShardsConfig
from genie_pipeline.training.config import TrainConfig


class ConfigError(Exception):
    """A bad configuration: `key` is the dotted path of the offending setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


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
