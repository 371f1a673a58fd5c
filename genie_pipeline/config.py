"""`pipeline.yaml`: one typed schema, validated on load.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names the key instead of a silently ignored setting. `load_config` raises `ConfigError`,
which the CLI turns into exit status 2 with the dotted key and the problem.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import Field, ValidationError, model_validator

from genie_pipeline.filtering.config import FiltersConfig, KeywordsConfig
from genie_pipeline.ingest.config import DownloadConfig, RunnerConfig, Source
from genie_pipeline.shards.config import ClipsConfig, KeyedError, OutputConfig, Section, ShardsConfig
from genie_pipeline.training.config import TrainConfig


class ConfigError(Exception):
    """A bad configuration: `key` is the dotted path of the offending setting."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


class PipelineConfig(Section):
    sources: list[Source] = Field(default_factory=list)
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
                raise KeyedError(f"sources.{i}.name", f"duplicate source name {n!r}")
        for i, s in enumerate(self.sources):
            if s.keywords not in ("default", "none") and s.keywords not in self.keywords.sets:
                raise KeyedError(f"sources.{i}.keywords", f"no keyword set {s.keywords!r} in keywords.sets")
            # the videos of a source in a bucket are fetched from it: its scheme must be allowed
            for key in ("glob", "path", "root"):
                where = getattr(s, key, None)
                scheme = where.split("://", 1)[0].lower() if isinstance(where, str) and "://" in where else None
                if scheme and scheme != "file" and scheme not in self.download.allowed_schemes:
                    raise KeyedError(f"sources.{i}.{key}", f"scheme {scheme!r} is not in download.allowed_schemes "
                                     f"{self.download.allowed_schemes}: add it there to read videos from {where}")
        return self


# the discriminator tags pydantic puts into a source's error path ("sources.0.search.queries")
SOURCE_TYPES = frozenset(m.model_fields["type"].annotation.__args__[0] for m in get_args(get_args(Source)[0]))


def format_validation_error(e: ValidationError, prefix: str = "") -> ConfigError:
    """The first problem of a pydantic error as a ConfigError with its dotted key."""
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if len(loc) >= 3 and loc[0] == "sources" and loc[2] in SOURCE_TYPES:
        loc.pop(2)
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, KeyedError):
        return ConfigError(".".join(([prefix] if prefix else []) + loc + [ctx_err.key]), str(ctx_err))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against pipeline.yaml)"
    if err["type"] == "missing":
        msg = "required key is missing"
    return ConfigError(".".join(([prefix] if prefix else []) + loc) or "(top level)", msg)


def apply_sets(data: dict, sets: list[str]) -> dict:
    """`--set section.key=VALUE` overrides on the raw config (VALUE is YAML), before
    validation, so a bad key or value is reported like one in the file. A number in the
    path indexes a list (`sources.0.limit=5`)."""
    data = copy.deepcopy(data)
    for item in sets:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".") if sep else []
        if not parts or not all(parts):
            raise ConfigError("--set", f"wants SECTION.KEY=VALUE, got {item!r}")
        if parts[0] not in PipelineConfig.model_fields:
            raise ConfigError(key, f"unknown section {parts[0]!r} (sections: {', '.join(PipelineConfig.model_fields)})")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(key, f"bad value {raw!r}: {e}") from None
        node = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(".".join(parts[: i + 1]), f"no item {part} in this list")
                node = node[int(part)]
                continue
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise ConfigError(key, f"no item {last} in this list")
            node[int(last)] = value
        else:
            node[last] = value
    return data


def parse_config(data: Any, sets: list[str] = (), require_sources: bool = True) -> PipelineConfig:
    """Validate a config mapping (with `--set` overrides). `require_sources`: the commands
    that discover videos need at least one source; the others read outputs only."""
    if data is None and not require_sources:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "the config must be a mapping of sections")
    data = apply_sets(data, list(sets))
    if require_sources and not data.get("sources"):
        raise ConfigError("sources", "at least one source is needed to find videos" if "sources" in data
                          else "required key is missing")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise format_validation_error(e) from None


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError("(file)", f"cannot read {path}: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("(yaml)", f"{path} is not valid YAML: {e}") from None


def merge(base: Any, overlay: Any) -> Any:
    """`overlay` on top of `base`, mapping by mapping; any other value (a list too) replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in overlay.items()}}
    return copy.deepcopy(overlay)


def load_config(path: str | Path | None, sets: list[str] = (), output_dir: str | None = None,
                require_sources: bool = True, overlay: str | Path | None = None) -> PipelineConfig:
    """pipeline.yaml (None: every default), then an overlay file, `--set` overrides and
    `--output`, in that order."""
    data: Any = {} if path is None else read_yaml(path)
    if overlay is not None and isinstance(data, dict):
        data = merge(data, read_yaml(overlay) or {})
    cfg = parse_config(data, sets, require_sources)
    if output_dir is not None:
        cfg.output.dir = output_dir
    return cfg


def check_train(cfg: PipelineConfig, world_size: int | None = None) -> None:
    """The train section's cross-checks that need the model code (patch vs resolution,
    heads vs width, batch vs processes): run before a command trains, not hours into it."""
    from genie_pipeline.models.config import ModelConfigError
    from genie_pipeline.training.errors import TrainingError
    from genie_pipeline.training.run import check_train_config

    if world_size is None:
        import os

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        check_train_config(cfg.train, world_size)
    except (ModelConfigError, TrainingError) as e:
        raise ConfigError(e.key, e.message) from None
