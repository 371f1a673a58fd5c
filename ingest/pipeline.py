"""The ingest pipeline on Apache Beam. The graph reads like the flow:

    Discover → Reshuffle → KeywordFilter → SkipDone → OnePerVideo → DownloadAndCut → ScoreQuality
             → AssignSplit → Curate → WriteShards   (+ candidates, failures, per-video results)

The stages are Beam-free (sources.Discover, process.KeywordVerdict, process.VideoProcessor);
`StageFn` is the one adapter that runs them: it builds a stage per worker, routes its
`Failure`s to the dead letters and turns its counts into Beam metrics. `DownloadAndCut`
persists each video's clips to the clip store, so only small records cross stage
boundaries; the driver then commits the run (shards/commit.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import resource
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from genie_pipeline.filtering.config import DedupeConfig, FiltersConfig, KeywordsConfig
from genie_pipeline.ingest.config import DownloadConfig, RunnerConfig, Source, check_remote_run
from genie_pipeline.ingest import progress
from genie_pipeline.ingest.process import KeywordVerdict, VideoProcessor
from genie_pipeline.ingest.sources import Discover, check_sources
from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.commit import check_spec, commit_run, recover
from genie_pipeline.shards.dedupe import curate
from genie_pipeline.shards.config import ClipsConfig, OutputConfig, ShardsConfig
from genie_pipeline.shards.reader import read_rows
from genie_pipeline.shards.records import Candidate, Failure, ShardRecord, VideoResult, from_row
from genie_pipeline.shards.report import Threshold, write_report
from genie_pipeline.shards.store import read_store_result
from genie_pipeline.shards.writer import ShardRoller, write_shards_for, writer_of

NS = "ingest"
FAILURES = "failures"


class IngestConfig(Protocol):
    """The sections of pipeline.yaml the ingest reads (the app's PipelineConfig has them)."""

    sources: list[Source]
    keywords: KeywordsConfig
    download: DownloadConfig
    clips: ClipsConfig
    filters: FiltersConfig
    shards: ShardsConfig
    runner: RunnerConfig
    output: OutputConfig


def _quiet_worker() -> None:
    """Beam's local worker processes log every bundle at INFO to the console; keep warnings."""
    if not os.environ.get("GENIE_VERBOSE"):
        logging.getLogger().setLevel(logging.WARNING)


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(NS, name).inc(n)
    progress.note(name, n)  # the launcher's live progress (local runs; a no-op on Dataflow)


def _dead_letter(f: Failure) -> beam.pvalue.TaggedOutput:
    """A failure row to the FAILURES output, counted by stage; a video's failure (download
    onwards) by its error type too, which the run summary breaks down."""
    _count(f"failed_{f.stage}")
    if f.stage != "discover":
        _count(f"failed_{f.error_type}")
    return beam.pvalue.TaggedOutput(FAILURES, f)


# -------------------------------------------------------------------------------- stages
class StageFn(beam.DoFn):
    """Runs a Beam-free stage: `factory(count=...)` builds it once per worker, in `setup()`
    (a stage may hold a downloader or compiled filters); per element it returns an item, a
    Failure, or an iterator of them. Failures go to the FAILURES output, items go on."""

    def __init__(self, factory: Callable[..., Callable[[Any], Any]]):
        self.factory = factory  # pickled to the workers: a class or a functools.partial

    def setup(self):
        _quiet_worker()
        self.stage = self.factory(count=_count)

    def process(self, element):
        out = self.stage(element)
        for item in out if isinstance(out, Iterator) else (out,):
            yield _dead_letter(item) if isinstance(item, Failure) else item


def one_per_video(item):
    """Two candidates naming one video (a catalog listing an id twice) would race on its
    scratch file and clip store: keep one, deterministically, and record the others."""
    vkey, cands = item
    cands = sorted(cands, key=lambda c: (c.url or "", c.path or "", c.title))
    yield cands[0]
    for c in cands[1:]:
        yield _dead_letter(Failure(
            video_key=vkey, video_id=c.video_id, source=c.source, stage="discover", error_type="DuplicateVideo",
            message=f"another candidate has the same id {c.video_id!r}; kept {cands[0].url or cands[0].path}",
            url=c.url))


def assign_split(v: VideoResult, val_fraction: float, seed: int) -> VideoResult:
    """By video, never by clip: neighbouring clips of one video would leak across splits."""
    h = zlib.crc32(f"{seed}:{v.video_key}".encode()) / 2**32
    v.split = "val" if h < val_fraction else "train"
    for c in v.clips:
        c.split = v.split
    return v


def curate_step(p: beam.Pipeline, videos, out: str, dedupe: DedupeConfig, shards: ShardsConfig):
    """Near duplicates and balance caps over the whole output (shards/dedupe.py), decided
    once from every clip of this run and the committed manifest (read by a worker, so a
    large manifest never passes through the graph), then applied to each video before any
    shard is written: a rejected clip never reaches a shard and no committed shard changes."""
    max_distance = dedupe.max_distance if dedupe.enabled else None
    earlier = p | "Output" >> beam.Create([out]) | "CommittedClips" >> beam.Map(
        lambda o: [{k: r.get(k) for k in CURATE_COLUMNS} for r in read_rows(o, "manifest")])
    decisions = (videos
                 | "ClipRows" >> beam.FlatMap(lambda v: [{k: getattr(c, k) for k in CURATE_COLUMNS} for c in v.clips])
                 | "AllClips" >> beam.combiners.ToList()
                 | "Curate" >> beam.Map(lambda new, old: curate(new, old, max_distance=max_distance, caps=shards.caps),
                                        beam.pvalue.AsSingleton(earlier)))
    return videos | "ApplyCuration" >> beam.Map(apply_curation, beam.pvalue.AsSingleton(decisions))


# the manifest columns curation reads
CURATE_COLUMNS = ("key", "video_key", "source", "start_s", "duration_s", "kept", "quality_score", "fingerprint",
                  "channel", "query")


def apply_curation(v: VideoResult, decisions: dict) -> VideoResult:
    """`v` with the decided clips rejected; a copy where anything changes (Beam elements are
    never mutated in place: the curation branch reads the same ones)."""
    if not any(c.key in decisions for c in v.clips):
        return v
    clips = []
    for c in v.clips:
        if c.key in decisions:
            reason, duplicate_of = decisions[c.key]
            c = dataclasses.replace(c, kept=False, reason=reason, duplicate_of=duplicate_of)
            _count(f"clips_rejected_{reason.replace(':', '_')}")
        clips.append(c)
    return dataclasses.replace(v, clips=clips)


def by_shard_writer(v: VideoResult, parallelism: int):
    """A video's kept clips, grouped by the writer each goes to (by clip, so a long video is
    spread over every writer of its split), as ((split, writer), part of the video)."""
    parts: dict[int, list] = {}
    for c in v.clips:
        if c.kept:
            parts.setdefault(writer_of(c.key, parallelism), []).append(c)
    for writer, clips in sorted(parts.items()):
        yield (v.split, writer), dataclasses.replace(v, clips=clips)


def write_shards(item, tmp_dir: str, shards: ShardsConfig, spec: ClipSpec):
    """One writer per (split, writer): rolls its own tars under shards/_tmp/RUN/ and yields
    each finished shard (its keys say which clips it holds)."""
    (split, writer), parts = item
    roller = ShardRoller(tmp_dir, f"{split}-b{writer:03d}", split, int(shards.target_mb * 2**20),
                         shards.max_clips, spec)
    for x in write_shards_for(sorted(parts, key=lambda v: v.video_key), roller):
        if isinstance(x, ShardRecord):
            _count("shards_written")
            _count("clips_sharded", len(x.keys))
            yield x


# ----------------------------------------------------------------------------- pipeline
@dataclass
class RunPaths:
    out: str
    run_dir: str
    tmp_shards: str
    scratch: str


def _jsonl(name: str, path: str):
    return (f"Json{name}" >> beam.Map(lambda x: json.dumps(x.to_json() if hasattr(x, "to_json") else x.row(),
                                                           sort_keys=True, default=str))
            | f"Write{name}" >> beam.io.WriteToText(path, file_name_suffix=".jsonl"))


def build_pipeline(p: beam.Pipeline, cfg: IngestConfig, paths: RunPaths, skip: set[str],
                   staged: list[str], workers: int) -> None:
    found = (p | "Sources" >> beam.Create(cfg.sources)
               | "Discover" >> beam.ParDo(StageFn(Discover)).with_outputs(FAILURES, main="candidates"))
    verdicts = functools.partial(KeywordVerdict, cfg.keywords, {s.name: s.keywords for s in cfg.sources})
    candidates = (found.candidates
                  | "Reshuffle" >> beam.Reshuffle()
                  | "KeywordFilter" >> beam.ParDo(StageFn(verdicts)))
    candidates | "Candidates" >> _jsonl("Candidates", f"{paths.run_dir}/candidates")

    unique = (candidates
              | "KeptByKeywords" >> beam.Filter(lambda c: c.keyword_verdict == "keep")
              | "SkipDone" >> beam.Filter(lambda c, skip: c.video_key not in skip, skip)
              | "ByVideo" >> beam.Map(lambda c: (c.video_key, c))
              | "GroupByVideo" >> beam.GroupByKey()
              | "OnePerVideo" >> beam.FlatMap(one_per_video).with_outputs(FAILURES, main="candidates"))
    processor = functools.partial(VideoProcessor, cfg.download, cfg.clips, cfg.filters.heuristics,
                                  paths.out, paths.scratch)
    cut = (unique.candidates
           | "DownloadAndCut" >> beam.ParDo(StageFn(processor)).with_outputs(FAILURES, main="videos"))
    # videos cut by an earlier run that was stopped before it committed
    resumed = (p | "Staged" >> beam.Create(staged) | "LoadStaged" >> beam.Map(read_store_result))
    videos = (cut.videos, resumed) | "AllVideos" >> beam.Flatten()

    if cfg.filters.quality.mode != "off":
        from genie_pipeline.filtering.quality import ScoreQuality

        videos = videos | "ScoreQuality" >> ScoreQuality(cfg.filters.quality, workers)
    s = cfg.shards
    videos = videos | "AssignSplit" >> beam.Map(assign_split, s.val_fraction, s.seed)
    videos = curate_step(p, videos, paths.out, cfg.filters.dedupe, s)
    videos | "Videos" >> _jsonl("Videos", f"{paths.run_dir}/videos")
    shards = (videos
              | "ByShardWriter" >> beam.FlatMap(by_shard_writer, s.parallelism)
              | "GroupForShards" >> beam.GroupByKey()
              | "WriteShards" >> beam.FlatMap(write_shards, paths.tmp_shards, s, cfg.clips.spec))
    shards | "Shards" >> _jsonl("Shards", f"{paths.run_dir}/shards")
    ((found[FAILURES], unique[FAILURES], cut[FAILURES]) | "AllFailures" >> beam.Flatten()
     | "Failures" >> _jsonl("Failures", f"{paths.run_dir}/failures"))


def pipeline_options(runner_cfg: RunnerConfig, extra_args: list[str]) -> tuple[Any, PipelineOptions, int]:
    """(runner, options, local worker count) from the runner section and command-line Beam
    flags; `--runner X` on the command line wins over the config."""
    r = runner_cfg
    args = list(r.options) + list(extra_args)
    runner_name = r.name
    for i, a in enumerate(args):
        if a.startswith("--runner="):
            runner_name = a.split("=", 1)[1]
        elif a == "--runner" and i + 1 < len(args):
            runner_name = args[i + 1]
    args = [a for i, a in enumerate(args) if not (a.startswith("--runner") or (i > 0 and args[i - 1] == "--runner"))]
    workers = 1
    if runner_name == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        runner = FnApiRunner()
        workers = r.direct_num_workers if r.running_mode != "in_memory" else 1
        args += [f"--direct_num_workers={r.direct_num_workers}", f"--direct_running_mode={r.running_mode}"]
    else:
        runner = runner_name
    # worker processes log every bundle at INFO; keep a local run's console readable
    args += ["--pickle_library=cloudpickle", "--default_sdk_harness_log_level=WARNING"]
    return runner, PipelineOptions(args), workers


def _read_jsonl(pattern: str) -> list[dict]:
    rows = []
    for path in fs.glob(pattern):
        for line in fs.read_bytes(path).decode().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def plan_resume(out: str, retry_failed: bool) -> tuple[set[str], list[str]]:
    """(video keys to skip, clip stores to load instead of re-cutting)."""
    recover(out)
    videos = read_rows(out, "videos")
    skip = {r["video_key"] for r in videos if r["status"] == "done" or (r["status"] == "failed" and not retry_failed)}
    committed = {r["video_key"] for r in videos if r["status"] == "done"}
    staged = []
    for path in fs.glob(fs.join(out, "clips", "*.tar")):
        vkey = os.path.basename(path)[: -len(".tar")]
        if vkey not in committed:
            staged.append(path)
            skip.add(vkey)
    return skip, staged


def preflight(cfg: IngestConfig, beam_args: list[str]) -> None:
    """What can be found wrong before an ingest starts (PreflightError): a remote runner
    without its options or given paths on this machine, a source that cannot work."""
    q = cfg.filters.quality
    # every path the workers read or write
    paths = {"output.dir": cfg.output.dir, "download.cookiefile": cfg.download.cookiefile,
             "filters.quality.model": q.model if q.mode != "off" else None}
    for i, s in enumerate(cfg.sources):
        paths.update({f"sources.{i}.{k}": getattr(s, k) for k in ("root", "glob", "path") if hasattr(s, k)})
    check_remote_run(cfg.runner, beam_args, paths)
    check_sources(cfg.sources)


def run_ingest(cfg: IngestConfig, extra_beam_args: list[str] | None = None,
               retry_failed: bool = False) -> dict:
    """Run the ingest into cfg.output.dir and commit it; returns the output's stats.json.

    Videos already done (or failed, unless `retry_failed`) are skipped; `extra_beam_args` are
    Beam pipeline flags. Raises shards.fs.OutputBusy if another run holds the output, and
    shards.reader.DataError if it holds clips of another spec than cfg.clips."""
    preflight(cfg, extra_beam_args or [])
    out = cfg.output.dir
    if not fs.is_remote(out):
        out = os.path.abspath(out)
    check_spec(out, cfg.clips.spec)
    with fs.output_lock(out, "ingest"):
        return _run_ingest(cfg, out, extra_beam_args, retry_failed)


def _run_ingest(cfg: IngestConfig, out: str, extra_beam_args: list[str] | None, retry_failed: bool) -> dict:
    fs.makedirs(out)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    paths = RunPaths(out=out, run_dir=fs.join(out, "_runs", run_id), tmp_shards=fs.join(out, "shards", "_tmp", run_id),
                     scratch=cfg.download.scratch_dir or os.path.join(out if not fs.is_remote(out) else "/tmp", "_scratch"))
    # leftovers of runs killed before their commit: their clip stores are kept (resume), the
    # rest is redone
    skip, staged = plan_resume(out, retry_failed)
    fs.rmtree(fs.join(out, "shards", "_tmp"))
    fs.rmtree(fs.join(out, "_runs"))
    for d in (paths.run_dir, paths.tmp_shards, fs.join(out, "clips"), fs.join(out, "shards")):
        fs.makedirs(d)

    runner, options, workers = pipeline_options(cfg.runner, extra_beam_args or [])
    wall0, cpu0 = time.time(), cpu_seconds()
    print(f"ingest: {len(cfg.sources)} source(s) → {out} ({len(skip)} video(s) already done or staged)",
          file=sys.stderr, flush=True)
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, cfg, paths, skip, staged, workers)
    try:
        result = _run_job(p, runner, already=len(skip))
    except Exception as e:
        env = fs.environment_error(e) or _worker_environment_error(e)
        if env is None:
            raise
        # nothing is committed; the clip stores already written are picked up by the next run
        raise env from None
    counters = {m.key.metric.name: m.committed for m in result.metrics().query()["counters"]
                if m.key.metric.namespace == NS}
    stats = {"run_id": run_id, "wall_s": round(time.time() - wall0, 2), "cpu_s": round(cpu_seconds() - cpu0, 2),
             "counters": counters, "runner": cfg.runner.name, "workers": workers}
    merged = _commit(cfg, paths, stats)
    # before the clip store goes: the report's contact sheets show rejected clips from it.
    # The run is committed by now; a report that cannot be drawn must not fail it.
    try:
        print(f"ingest: report {write_report(out, report_thresholds(cfg.filters))}", file=sys.stderr, flush=True)
    except Exception as e:  # noqa: BLE001 — `genie-pipeline report OUT` redraws it and shows the error
        print(f"ingest: report not written ({type(e).__name__}: {e}); the run is committed", file=sys.stderr,
              flush=True)
    if not cfg.download.keep and cfg.download.scratch_dir is None:
        fs.rmtree(paths.scratch)
    if not cfg.shards.keep_clip_store and cfg.filters.quality.mode == "off":
        fs.rmtree(fs.join(out, "clips"))
    return merged


def _run_job(p: beam.Pipeline, runner: Any, already: int):
    """Run the job to its end and return Beam's result. Where the workers run on this machine
    (FnApiRunner, DirectRunner) they report progress through a file the launcher tails
    (ingest/progress.py); elsewhere (Dataflow) the job's Beam counters are the progress."""
    if isinstance(runner, str) and runner != "DirectRunner":
        result = p.run()
        result.wait_until_finish()
        return result
    with tempfile.TemporaryDirectory(prefix="genie-progress-") as tmp, \
            progress.Progress(os.path.join(tmp, "progress.log"), already=already):
        result = p.run()
        result.wait_until_finish()
    return result


def report_thresholds(filters: FiltersConfig) -> dict[str, Threshold]:
    """The thresholds the report draws on its score histograms, from the filters section (the
    quality threshold: filters.quality.threshold, else the model's stored one, if any)."""
    h = filters.heuristics
    out = {"motion": Threshold(h.min_motion, "filters.heuristics.min_motion", "above"),
           "dark_fraction": Threshold(h.max_dark_fraction, "filters.heuristics.max_dark_fraction", "below"),
           "unique_fraction": Threshold(h.min_unique_fraction, "filters.heuristics.min_unique_fraction", "above"),
           "cuts_per_min": Threshold(h.max_cuts_per_min, "filters.heuristics.max_cuts_per_min", "below")}
    q = filters.quality
    threshold = q.threshold
    if threshold is None and q.model and os.path.exists(q.model):
        from genie_pipeline.filtering.quality import read_metadata

        threshold = read_metadata(q.model).get("threshold")
    if threshold is not None:
        out["quality_score"] = Threshold(float(threshold), "filters.quality.threshold", "above")
    return out


_WORKER_OSERROR = re.compile(r"(?:OSError|PermissionError): \[Errno (\d+)\] ([^\[\]:]+)(?::\s*'([^']*)')?")


def _worker_environment_error(e: Exception) -> OSError | None:
    """A worker's disk-full (or read-only, …) error, which Beam hands back only as the text of
    a RuntimeError, as the OSError it was."""
    m = _WORKER_OSERROR.search(str(e))
    if m and int(m.group(1)) in fs.ENVIRONMENT_ERRNOS:
        return OSError(int(m.group(1)), m.group(2).strip(), m.group(3))
    return None


def _commit(cfg: IngestConfig, paths: RunPaths, stats: dict) -> dict:
    """Merge what the job wrote under _runs/RUN into the output (shards/commit.py)."""
    run_dir, out = paths.run_dir, paths.out
    return commit_run(
        out,
        candidates=[from_row(Candidate, r) for r in _read_jsonl(f"{run_dir}/candidates*")],
        failures=[from_row(Failure, r) for r in _read_jsonl(f"{run_dir}/failures*")],
        videos=[VideoResult.from_json(r) for r in _read_jsonl(f"{run_dir}/videos*")],
        shard_records=[ShardRecord(**r) for r in _read_jsonl(f"{run_dir}/shards*")],
        stats=stats,
        spec=cfg.clips.spec,
        sources=[s.name for s in cfg.sources],
        cleanup=[fs.join(out, "_runs"), fs.join(out, "shards", "_tmp"), fs.join(out, "_commit")],
    )


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def summary_table(stats: dict) -> str:
    run = stats.get("last_run", {})
    c = run.get("counters", {})
    rows = [
        ("candidates found", c.get("candidates", 0)),
        ("kept by keywords", c.get("keyword_kept", 0)),
        ("rejected by keywords", c.get("keyword_rejected", 0)),
        *((f"  {k[17:]}", v) for k, v in sorted(c.items()) if k.startswith("keyword_rejected_") and v),
        ("downloaded", c.get("downloaded", 0)),
        ("videos cut", c.get("videos_done", 0)),
        ("clips cut", c.get("clips_cut", 0)),
        ("clips sharded", c.get("clips_sharded", 0)),
        ("shards written", c.get("shards_written", 0)),
    ]
    stages = ("discover", "download", "probe", "decode", "cut", "encode")
    rows += [(f"failed at {k[7:]}", v) for k, v in sorted(c.items()) if k[7:] in stages and v]
    rows += [(f"  failure type {k[7:]}", v) for k, v in sorted(c.items())
             if k.startswith("failed_") and k[7:] not in stages and v]
    rows += [(f"rejected: {k[15:]}", v) for k, v in sorted(c.items()) if k.startswith("clips_rejected_") and v]
    lines = ["", "this run", "-" * 44] + [f"{k:<34}{v:>10}" for k, v in rows]
    lines += ["", "output totals", "-" * 44]
    for k in ("candidates", "videos_done", "videos_failed", "clips", "clips_kept", "clips_train", "clips_val",
              "hours_in", "hours_out"):
        lines.append(f"{k:<34}{stats.get(k, 0):>10}")
    lines.append(f"{'wall s / cpu s':<34}{run.get('wall_s', 0):>5} / {run.get('cpu_s', 0)}")
    return "\n".join(lines)
