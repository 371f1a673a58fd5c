"""Command line: `genie-pipeline train` (wired by the top-level CLI) and `python -m training`.

    genie-pipeline train --config pipeline.yaml [--stage tokenizer|dynamics|all] [--resume] [INPUTS...]
    torchrun --nproc_per_node 2 -m training --config pipeline.yaml --stage all out/ingest

INPUTS are ingest output dirs, shard dirs, tars or globs (local or fsspec URLs); they replace
`train.data`; with neither, the pipeline's `output.dir` is used.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml
from pydantic import ValidationError

from .config import TrainConfig

STAGES = ("tokenizer", "dynamics", "all")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """Add the `train` arguments to a (sub)parser (the lead's CLI adds --config itself)."""
    parser.add_argument("inputs", nargs="*", metavar="INPUTS",
                        help="ingest output dirs, shard dirs, .tar files or globs (local or gs://, s3://...); "
                             "default: train.data, else the pipeline's output.dir")
    parser.add_argument("--stage", choices=STAGES, default="all",
                        help="tokenizer (phase 1), dynamics (phase 2: LAM + dynamics on the frozen tokenizer) or all")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest checkpoints in the run directory (exactly)")
    parser.add_argument("--run-dir", default=None, help="run directory (default: train.out_dir)")
    parser.add_argument("--set", dest="train_set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a train setting, e.g. --set batch_size=16 --set overrides.tokenizer.patch=8 "
                             "(VALUE is YAML)")


def apply_sets(cfg: TrainConfig, sets: list[str]) -> TrainConfig:
    """`KEY=VALUE` overrides (dotted keys; `overrides.X.Y` goes into the model overrides)."""
    from genie_pipeline.config import ConfigError

    data: dict[str, Any] = cfg.model_dump()
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("train", f"--set wants KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"train.{key}", f"bad value {raw!r}: {e}") from None
        parts = key.split(".")
        if parts[0] == "overrides" and len(parts) > 1:
            data["overrides"][".".join(parts[1:])] = value
        elif len(parts) == 1:
            data[key] = value
        else:
            raise ConfigError(f"train.{key}", "unknown key")
    return validate_train(data)


def validate_train(data: dict) -> TrainConfig:
    from genie_pipeline.config import ConfigError

    try:
        return TrainConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = "unknown key (check the spelling against pipeline.yaml)" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"train.{loc}" if loc else "train", msg) from None


def run_train(args: argparse.Namespace, pipeline_cfg: Any = None) -> int:
    """Run training for parsed `args`; `pipeline_cfg` is the loaded PipelineConfig (or None).
    ConfigError propagates (the CLI maps it to exit 2); data errors print and return 1."""
    from genie_pipeline.shards.reader import DataError
    from .trainer import train_main

    cfg = pipeline_cfg.train if pipeline_cfg is not None else TrainConfig()
    cfg = apply_sets(cfg, list(getattr(args, "train_set", []) or []))
    inputs = list(args.inputs or cfg.data)
    if not inputs and pipeline_cfg is not None:
        inputs = [pipeline_cfg.output.dir]
    try:
        summary = train_main(cfg, stage=args.stage, inputs=inputs, out_dir=args.run_dir, resume=args.resume)
    except DataError as e:
        print(f"error: training data: {e}", file=sys.stderr)
        return 1
    if summary.get("world_size", 1) == 1 or _rank() == 0:
        print(json.dumps(summary, indent=2, default=str))
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def load_config_file(path: str):
    """A pipeline.yaml (full config) or a YAML file with only a `train:` section."""
    from genie_pipeline.config import load_config

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if isinstance(data, dict) and "sources" not in data:
        unknown = set(data) - {"train"}
        if unknown:
            return load_config(path)  # let the full schema name the problem
        return _TrainOnly(validate_train(data.get("train") or {}))
    return load_config(path)


class _TrainOnly:
    def __init__(self, train: TrainConfig):
        self.train = train
        self.output = argparse.Namespace(dir="out/ingest")


def main(argv: list[str] | None = None) -> int:
    from genie_pipeline.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m training", description="Train Genie (tokenizer, LAM, dynamics)")
    parser.add_argument("--config", default=None, help="pipeline.yaml (its train: section), or a YAML with only train:")
    add_train_args(parser)
    args = parser.parse_args(argv)
    try:
        pipeline_cfg = load_config_file(args.config) if args.config else None
        return run_train(args, pipeline_cfg)
    except ConfigError as e:
        print(f"config error: {e.key}: {e.message}", file=sys.stderr)
        return 2
