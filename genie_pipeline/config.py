"""`pipeline.yaml`: one typed schema, validated on load.

Every section is a pydantic model with `extra="forbid"`, so a misspelt key is an error that
names the key instead of a silently ignored setting. `load_config` raises `ConfigError`,
which the CLI turns into exit status 2 with the dotted key and the problem.
"""
from __future__ import annotations

import copy
import difflib
import os
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
    """The first problem of a pydantic error as a ConfigError with its dotted key; an unknown
    key comes first (a misspelt key also makes the one meant "missing"), with the known key
    it most resembles."""
    errors = e.errors()
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    if len(loc) >= 3 and loc[0] == "sources" and loc[2] in SOURCE_TYPES:
        loc.pop(2)
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, KeyedError):
        return ConfigError(".".join(([prefix] if prefix else []) + loc + [ctx_err.key]), str(ctx_err))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling against pipeline.yaml)"
        missing = [str(x["loc"][-1]) for x in errors if x["type"] == "missing" and x["loc"][:-1] == err["loc"][:-1]]
        near = difflib.get_close_matches(loc[-1], missing + _known_keys(err["loc"][:-1]), n=1, cutoff=0.6)
        if near:
            msg = f"unknown key; did you mean {near[0]!r}?"
    if err["type"] == "missing":
        msg = "required key is missing"
    return ConfigError(".".join(([prefix] if prefix else []) + loc) or "(top level)", msg)


def _known_keys(loc: tuple) -> list[str]:
    """The keys a config mapping at `loc` (a pydantic error location) accepts."""
    model: Any = PipelineConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if part in SOURCE_TYPES:
            model = next(m for m in get_args(get_args(Source)[0]) if part in m.model_fields["type"].annotation.__args__)
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        while not hasattr(model, "model_fields") and get_args(model):  # list[X], X | None
            model = next((a for a in get_args(model) if hasattr(a, "model_fields") or get_args(a)), None)
            if model is None:
                return []
    return list(getattr(model, "model_fields", {}))


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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last, so the
    first setting is silently lost)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(str(key), f"duplicate key (lines {seen[key].start_mark.line + 1} and "
                                            f"{key_node.start_mark.line + 1}): YAML would keep the last one silently")
            seen[key] = key_node
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError("(file)", f"cannot read {path}: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError("(yaml)", f"{path} is not valid YAML: {e}") from None
    except ConfigError as e:
        raise ConfigError(e.key, f"{e.message} in {path}") from None


# settings that name a file or folder: relative ones in a config file are relative to that
# file (a config works from any directory), those in --set to the current directory
PATH_KEYS = ("output.dir", "sources.*.glob", "sources.*.path", "sources.*.root", "download.scratch_dir",
             "download.cookiefile", "download.proxy_file", "filters.quality.model", "filters.quality.labels_db",
             "filters.quality.weights", "train.out_dir", "train.data.*", "train.tokenizer_checkpoint")


def resolve_paths(data: Any, base: Path) -> Any:
    """`data` (a config mapping read from a file in `base`) with its relative PATH_KEYS made
    absolute against `base`; URLs (`gs://…`) and absolute paths stay as they are."""
    if not isinstance(data, dict):
        return data
    data = copy.deepcopy(data)

    def fix(v):
        if not isinstance(v, str) or not v or "://" in v:
            return v
        v = os.path.expanduser(v)
        return v if os.path.isabs(v) else str(base / v)

    def walk(node, parts):
        head, rest = parts[0], parts[1:]
        keys = (range(len(node)) if isinstance(node, list) else []) if head == "*" else [head]
        for k in keys:
            if isinstance(node, dict) and k not in node:
                continue
            if rest:
                if isinstance(node[k], (dict, list)):
                    walk(node[k], rest)
            else:
                node[k] = fix(node[k])

    for key in PATH_KEYS:
        walk(data, key.split("."))
    return data


def merge(base: Any, overlay: Any) -> Any:
    """`overlay` on top of `base`, mapping by mapping; any other value (a list too) replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {**base, **{k: merge(base.get(k), v) for k, v in overlay.items()}}
    return copy.deepcopy(overlay)


def load_config(path: str | Path | None, sets: list[str] = (), output_dir: str | None = None,
                require_sources: bool = True, overlay: str | Path | None = None) -> PipelineConfig:
    """pipeline.yaml (None: every default), then an overlay file, `--set` overrides and
    `--output`, in that order."""
    data: Any = {} if path is None else resolve_paths(read_yaml(path), Path(path).resolve().parent)
    if overlay is not None and isinstance(data, dict):
        data = merge(data, resolve_paths(read_yaml(overlay) or {}, Path(overlay).resolve().parent))
    cfg = parse_config(data, sets, require_sources)
    if output_dir is not None:
        cfg.output.dir = output_dir
    return cfg


def check_train(cfg: PipelineConfig, world_size: int | None = None) -> None:
    """The train section's cross-checks that need the model code (patch vs resolution,
    heads vs width, batch vs processes): run before a command trains, not hours into it."""
    from genie_pipeline.models.config import ModelConfigError
    from genie_pipeline.training.errors import TrainingError
    from genie_pipeline.training.checks import check_train_config

    if world_size is None:
        import os

        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        check_train_config(cfg.train, world_size)
    except (ModelConfigError, TrainingError) as e:
        raise ConfigError(e.key, e.message) from None
