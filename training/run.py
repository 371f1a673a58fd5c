"""The training run: both phases over the shards behind the inputs, into one run directory.

    train_main(cfg, stage="all", inputs=["out/ingest"])   # what `genie-pipeline train` calls

The run directory holds `run.json` (configs, inputs, shard list with sizes, the manifests'
row counts and checksums, every invocation, the last summary), `metrics.csv`, TensorBoard
logs, samples, the phases' checkpoints and, after phase 2, `genie.pt` for play and eval.
It may be a bucket (`gs://…/run`, `s3://…/run`): training then writes a local staging copy
whose checkpoints, logs and samples are uploaded as each checkpoint is saved, and a run
started again with the same out_dir resumes from the bucket (see `checkpoint.RunMirror`).
Settings that cannot work raise `TrainingError` (dotted `train.…` key);
`check_train_config` runs every check that needs only the config, before any data is read.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from genie_pipeline.models.config import GenieConfig, config_to_dict
from genie_pipeline.shards import fs, snapshots
from genie_pipeline.shards.reader import ShardSet, resolve_inputs

from . import checkpoint as ckpt_lib
from . import distributed as dist_lib
from .config import PHASES, TrainConfig
from .errors import TrainingError, TrainInterrupted
from .checks import build_model_config, check_train_config  # noqa: F401 — callers import them from here
from .trainer import PhaseTrainer, check_parallel

STAGES = (*PHASES, "all")


# ============================================================================ run files
def _file_size(path: str) -> int | None:
    try:
        with fs.open_read(path) as f:
            f.seek(0, io.SEEK_END)
            return f.tell()
    except Exception:  # noqa: BLE001 — a size is only recorded; a shard that cannot be read is the loader's to count
        return None


def _stats_sha256(shard: str) -> str | None:
    """The sha256 the `.stats.json` beside a shard records (a shard given as a tar or glob: not
    pinned, so only recorded); None where there is none."""
    try:
        return json.loads(fs.read_bytes(shard[: -len(".tar")] + ".stats.json")).get("sha256")
    except Exception:  # noqa: BLE001 — no stats file (a shard from elsewhere): no hash recorded
        return None


def describe_manifest(out_dir: str, snapshot: str | None = None) -> dict:
    """What run.json records of an ingest output's manifest (as `snapshot` has it, where
    given): its table folder, a sha256 over its part files (in order), rows, kept rows, rows
    per split."""
    from genie_pipeline.shards.reader import iter_part_batches, table_dir, table_files

    info: dict[str, Any] = {"path": table_dir(out_dir, "manifest"), **({"snapshot": snapshot} if snapshot else {})}
    try:
        digest, rows, kept, splits = hashlib.sha256(), 0, 0, {}
        parts = ([snapshots.part_path(out_dir, rel) for rel in snapshots.read(out_dir, snapshot)["tables"]["manifest"]]
                 if snapshot else table_files(out_dir, "manifest"))
        for path in parts:
            digest.update(fs.read_bytes(path))
            for b in iter_part_batches(path, ["kept", "split"]):
                rows += b.num_rows
                kept += sum(bool(x) for x in b["kept"].to_pylist())
                for sp in b["split"].to_pylist():
                    splits[str(sp)] = splits.get(str(sp), 0) + 1
        info.update(sha256=digest.hexdigest(), rows=rows, kept=kept, splits=splits)
    except Exception as e:  # noqa: BLE001 — recorded, not fatal: training reads the shards, not the manifest
        info["error"] = f"{type(e).__name__}: {e}"
    return info


def count_clips(shards: list[str]) -> int | None:
    """Clips in the shards, from the stats file beside each (None where one is missing)."""
    from genie_pipeline.shards.reader import stats_name

    n = 0
    for s in shards:
        try:
            n += int(json.loads(fs.read_bytes(fs.join(os.path.dirname(s), stats_name(os.path.basename(s)))))["n_samples"])
        except Exception:  # noqa: BLE001 — a count for the banner; the loader reports bad shards
            return None
    return n


def _read_run_json(out_dir: Path) -> dict:
    path = out_dir / "run.json"
    try:
        return json.loads(fs.read_bytes(str(path))) if path.exists() else {}
    except ValueError:
        return {}


def _write_run_json(out_dir: Path, data: dict) -> Path:
    path = out_dir / "run.json"
    fs.write_bytes(str(path), json.dumps(data, indent=2, default=str).encode())
    return path


def write_run_json(out_dir: Path, cfg: TrainConfig, mcfg: GenieConfig, shardset: ShardSet, stage: str,
                   info: dist_lib.DistInfo, resume: bool) -> Path:
    """run.json at the start of an invocation: this invocation appended to the earlier ones."""
    old = _read_run_json(out_dir)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    invocations = list(old.get("invocations", []))
    invocations.append({"time": now, "stage": stage, "resume": resume, "world_size": info.world_size,
                        "device": str(info.device), "argv": sys.argv})
    return _write_run_json(out_dir, {
        **old,
        "created": old.get("created", now),
        "updated": now,
        "train_config": cfg.model_dump(mode="json"),
        "model_config": config_to_dict(mcfg),
        "inputs": shardset.inputs,
        "split": cfg.split,
        "manifests": [describe_manifest(m, shardset.snapshots.get(m)) for m in shardset.manifests],
        # the snapshot each ingest output was pinned to: a resumed run (and eval) reads the same one
        "snapshots": shardset.snapshots,
        "shards": [{"path": s, "bytes": _file_size(s), "sha256": shardset.sha256.get(s) or _stats_sha256(s)}
                   for s in shardset.shards],
        "world_size": info.world_size,
        "torch": torch.__version__,
        "invocations": invocations,
    })


def export_genie(out_dir: Path, mcfg: GenieConfig) -> Path:
    """`OUT_DIR/genie.pt`: tokenizer + LAM + dynamics weights and the model config (for play/eval)."""
    ck = ckpt_lib.load(ckpt_lib.latest_path(out_dir, "dynamics"))
    bundle = {"format": ckpt_lib.FORMAT, "kind": "genie", "model_config": config_to_dict(mcfg),
              "tokenizer": ck["model"]["tokenizer"], "lam": ck["model"]["lam"], "dynamics": ck["model"]["dynamics"],
              "steps": {"dynamics": ck["step"]}}
    path = out_dir / "genie.pt"
    ckpt_lib.save_atomic(bundle, path)
    return path


# ============================================================================ the run
def train_main(cfg: TrainConfig, stage: str = "all", inputs: list[str] | None = None,
               out_dir: str | os.PathLike | None = None, resume: bool = False) -> dict:
    """Train `stage` ("tokenizer", "dynamics" or "all") on the shards behind `inputs` (default
    `cfg.data`) into `out_dir` (default `cfg.out_dir`); under torchrun every rank calls it.
    Returns the run's summary (also stored in run.json).

    Raises `TrainingError` (dotted `train.…` key) for settings that cannot work, among them an
    out_dir that already holds a checkpoint without `resume`, and `shards.reader.DataError`
    for missing inputs or corrupt data past `train.max_bad_shard_fraction`. A bucket out_dir
    (gs://, s3://) that cannot be written is a `StorageError` before anything is read; its
    checkpoints and logs are uploaded as each checkpoint is saved (`checkpoint.RunMirror`)."""
    if stage not in STAGES:
        raise TrainingError("stage", f"must be one of {STAGES}, got {stage!r}")
    out_arg = str(out_dir or cfg.out_dir)
    inputs = list(inputs or cfg.data)
    if not inputs:
        raise TrainingError("train.data", "no training inputs: give INPUTS or set train.data")
    mcfg = build_model_config(cfg)
    if fs.is_remote(out_arg):
        # a missing bucket, no credentials, no write permission: StorageError (exit 2) naming
        # it now, not at the first checkpoint after minutes or hours of training
        fs.check_writable(out_arg)
    info = dist_lib.setup(cfg.device)
    try:
        with ckpt_lib.staged_run_dir(out_arg, info.rank) as (out, mirror):
            try:
                summary = _train_into(cfg, mcfg, out, mirror, info, inputs, stage, resume)
            except BaseException as e:
                if mirror is None:
                    raise
                if info.is_main:
                    _push_after_failure(mirror)
                if isinstance(e, TrainingError):  # name the bucket's files, not the staging copy's
                    raise TrainingError(e.key, mirror.to_remote(e.message)) from None
                if isinstance(e, TrainInterrupted):
                    raise TrainInterrupted(mirror.to_remote(str(e))) from None
                raise
        return summary
    finally:
        dist_lib.teardown(info)


def _train_into(cfg: TrainConfig, mcfg: GenieConfig, out: Path, mirror: ckpt_lib.RunMirror | None,
                info: dist_lib.DistInfo, inputs: list[str], stage: str, resume: bool) -> dict:
    """`train_main` in the local folder `out` (for a bucket run dir its staging copy, pushed
    to the bucket by `mirror` at each checkpoint and here at the end); the summary, with the
    bucket's paths for a bucket run dir."""
    check_parallel(cfg, info.world_size)
    shardset = resolve_inputs(pin_inputs(inputs, _read_run_json(out) if resume else {}), cfg.split)
    shardset.inputs = list(inputs)  # as given: the pins are in shardset.snapshots
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_json(out, cfg, mcfg, shardset, stage, info, resume)
        clips = count_clips(shardset.shards)
        print(f"[train] {len(shardset.shards)} {cfg.split} shard(s), {clips if clips is not None else 'unknown'} "
              f"clips ({cfg.windows_per_clip} windows of {cfg.frames} frames taken from each clip opened) from "
              f"{', '.join(shardset.inputs)}; run directory {mirror.remote if mirror else out}", file=sys.stderr,
              flush=True)
    dist_lib.barrier()
    summary: dict[str, Any] = {"out_dir": str(out), "stage": stage, "world_size": info.world_size,
                               "device": str(info.device), "shards": len(shardset.shards),
                               "snapshots": shardset.snapshots,
                               "phases": _train_phases(cfg, mcfg, out, info, shardset.shards, stage, resume,
                                                       mirror, shardset.sha256)}
    if info.is_main and ckpt_lib.latest_path(out, "dynamics").exists() and "dynamics" in summary["phases"]:
        summary["genie_checkpoint"] = str(export_genie(out, mcfg))
    if mirror is not None:
        summary = mirror.to_remote(summary)
    if info.is_main:
        _write_run_json(out, {**_read_run_json(out), "summary": summary})
        if mirror is not None:  # genie.pt, run.json and the logs written since the last checkpoint
            mirror.push()
    summary["run_json"] = mirror.remote_path(out / "run.json") if mirror else str(out / "run.json")
    dist_lib.barrier()
    return summary


def pin_inputs(inputs: list[str], run_json: dict) -> list[str]:
    """Each ingest output among `inputs` as `OUT@<id>`: the snapshot `run_json` (a run being
    resumed) pinned it to, else its LATEST as rank 0 reads it now (every rank trains on the
    same snapshot although a commit may land between their reads). Inputs pinned already,
    and outputs without snapshots, stay as they are."""
    before = run_json.get("snapshots") or {}
    pins = {}
    for inp in inputs:
        if snapshots.split_pin(inp)[1] is None:
            snap = before.get(inp) or before.get(inp.rstrip("/")) or snapshots.latest_id(inp)
            if snap:
                pins[inp] = snap
    pins = dist_lib.all_gather_objects(pins)[0]
    return [f"{inp}@{pins[inp]}" if inp in pins else inp for inp in inputs]


def _push_after_failure(mirror: ckpt_lib.RunMirror) -> None:
    """Upload a failed run's logs (metrics, samples, run.json) for its post-mortem; a failure
    to upload them is reported, and never hides the error that stopped the run."""
    try:
        mirror.push()
    except Exception as e:  # noqa: BLE001 — the run's own error is the one to raise
        print(f"[train] could not upload the logs of the failed run to {mirror.remote}: {type(e).__name__}: {e}",
              file=sys.stderr)


def _train_phases(cfg: TrainConfig, mcfg: GenieConfig, out: Path, info: dist_lib.DistInfo, shards: list[str],
                  stage: str, resume: bool, mirror: ckpt_lib.RunMirror | None = None,
                  shard_sha256: dict[str, str] | None = None) -> dict[str, dict]:
    """Each phase of `stage` that has steps, in order: {phase: its summary}."""
    results: dict[str, dict] = {}
    for phase in PHASES if stage == "all" else (stage,):
        if (cfg.tokenizer_steps if phase == "tokenizer" else cfg.dynamics_steps) == 0:
            continue
        if mirror is not None and results:
            # only rank 0 writes checkpoints, into its own staging copy: the other ranks (on
            # other nodes too) take the phases' checkpoints rank 0 uploaded since they started
            dist_lib.barrier()
            if not info.is_main:
                for ph in PHASES:
                    mirror.pull(f"checkpoints/{ph}/latest.pt", refresh=True)
        trainer = PhaseTrainer(phase, cfg, mcfg, out, info, shards, resume=resume, shard_sha256=shard_sha256)
        results[phase] = trainer.run()
        del trainer  # free this phase's models (and DDP reducers) before the next phase builds its own
        if (phase == "tokenizer" and info.is_main and not results[phase].get("skipped")
                and ckpt_lib.latest_path(out, "dynamics").exists()):
            print(f"[train] warning: {out} holds a phase-2 checkpoint made with an earlier tokenizer; resuming "
                  "phase 2 keeps that tokenizer (start phase 2 in a new run dir to use this one)",
                  file=sys.stderr)
    return results
