"""The ingest pipeline on Apache Beam. The graph reads like the flow:

    Discover → Reshuffle → KeywordFilter → SkipDone → OnePerVideo → DownloadAndCut → ScoreQuality
             → AssignSplit → WriteShards            (+ candidates, failures, per-video results)

A whole source video never crosses a stage boundary: `DownloadAndCut` fetches, decodes, cuts
and encodes in one step and persists the video's clips to the clip store (the unit of
resume); only small records move on. The driver then commits the run (shards/commit.py).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
import uuid
import zlib
from dataclasses import dataclass
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from genie_pipeline.filtering.heuristics import score_clip, verdict
from genie_pipeline.filtering.keywords import filter_for
from genie_pipeline.config import PipelineConfig
from genie_pipeline.ingest.download import Downloader, DownloadFailed
from genie_pipeline.ingest.sources import discover
from genie_pipeline.ingest.video import VideoError, iter_clips, probe
from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipFormatError, encode_clip
from genie_pipeline.shards.commit import commit_run, recover
from genie_pipeline.shards.reader import read_rows
from genie_pipeline.shards.records import Candidate, ClipRow, Failure, ShardRecord, VideoResult, clip_key
from genie_pipeline.shards.store import read_store_result, store_path, write_store
from genie_pipeline.shards.writer import ShardRoller, write_shards_for

log = logging.getLogger("genie_pipeline.ingest")
NS = "ingest"
FAILURES = "failures"


def _quiet_worker() -> None:
    """Beam's local worker processes log every bundle at INFO to the console; keep warnings."""
    if not os.environ.get("GENIE_VERBOSE"):
        logging.getLogger().setLevel(logging.WARNING)


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(NS, name).inc(n)


# -------------------------------------------------------------------------------- stages
def discover_source(src) -> Iterable[Any]:
    for item in discover(src):
        if isinstance(item, Failure):
            _count("failed_discover")
            yield beam.pvalue.TaggedOutput(FAILURES, item)
        else:
            _count("candidates")
            yield item


class KeywordFilterFn(beam.DoFn):
    """Records the verdict and matched terms on every candidate; filters compiled once per worker."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg

    def setup(self):
        _quiet_worker()
        self.filters = {s.name: filter_for(self.cfg.keywords, s.keywords) for s in self.cfg.sources}

    def process(self, c: Candidate):
        v = self.filters[c.source](c.title, c.description)
        c.keyword_verdict = "keep" if v.keep else "reject"
        c.keyword_reason, c.matched_terms = v.reason, list(v.matched)
        _count("keyword_kept" if v.keep else "keyword_rejected")
        yield c


class DownloadAndCut(beam.DoFn):
    """Candidate → VideoResult (clips in the clip store) or a dead letter."""

    def __init__(self, cfg: PipelineConfig, out_dir: str, scratch_dir: str):
        self.cfg, self.out_dir, self.scratch_dir = cfg, out_dir, scratch_dir

    def setup(self):
        _quiet_worker()
        self.downloader = Downloader(self.cfg.download, self.scratch_dir)

    def _fail(self, c: Candidate, stage: str, error_type: str, message: str):
        _count(f"failed_{stage}")
        _count(f"failed_{error_type}")
        return beam.pvalue.TaggedOutput(FAILURES, Failure(
            video_key=c.video_key, video_id=c.video_id, source=c.source, stage=stage,
            error_type=error_type, message=message[:2000], url=c.url))

    def process(self, c: Candidate):
        t0 = time.time()
        try:
            fetched = self.downloader.fetch(c)
        except DownloadFailed as e:
            yield self._fail(c, "download", e.error_type, str(e))
            return
        except Exception as e:  # a yt-dlp or filesystem surprise must not kill the job
            yield self._fail(c, "download", type(e).__name__, str(e))
            return
        _count("downloaded")
        try:
            yield from self._cut(c, fetched.path, t0)
        except VideoError as e:
            yield self._fail(c, e.stage, "VideoError", str(e))
        except ClipFormatError as e:
            yield self._fail(c, "encode", "VideoError", str(e))
        except Exception as e:  # a bug or an exotic file must not kill the job
            yield self._fail(c, "cut", type(e).__name__, str(e))
        finally:
            if fetched.temporary:
                fs.remove(fetched.path)

    def _cut(self, c: Candidate, path: str, t0: float):
        info = probe(path)
        span = (c.end_s - c.start_s) if c.start_s is not None and c.end_s is not None else info.duration_s
        if span == span and span > self.cfg.download.max_duration_s:
            yield self._fail(c, "probe", "TooLong", f"{span:.0f} s > download.max_duration_s")
            return
        ccfg, hcfg = self.cfg.clips, self.cfg.filters.heuristics
        clips: list[ClipRow] = []
        data: list[tuple[str, bytes]] = []
        offset = c.start_s or 0.0
        for index, frames in iter_clips(path, ccfg, c.start_s, c.end_s):
            start_s = index * ccfg.seconds
            key = clip_key(c.video_key, int(round((offset + start_s) * 1000)))
            scores = score_clip(frames, ccfg.fps)
            reason = verdict(scores, hcfg)
            mp4 = encode_clip(frames, ccfg.spec)
            clips.append(ClipRow(key=key, video_key=c.video_key, video_id=c.video_id, source=c.source,
                                 title=c.title, start_s=offset + start_s, duration_s=ccfg.seconds,
                                 n_frames=len(frames), bytes=len(mp4), kept=not reason, reason=reason,
                                 **scores.as_dict()))
            data.append((key, mp4))
            _count("clips_cut")
            _count("clips_kept_heuristics" if not reason else f"clips_rejected_{reason}")
        if not clips:
            yield self._fail(c, "cut", "TooShort",
                             f"{span:.1f} s of video gives no full {ccfg.seconds:g} s clip")
            return
        result = VideoResult(video_key=c.video_key, video_id=c.video_id, source=c.source, title=c.title,
                             status="done", clips=clips, seconds_in=float(span if span == span else 0),
                             seconds_out=len(clips) * ccfg.seconds, store=store_path(self.out_dir, c.video_key))
        write_store(result.store, result, data)
        _count("videos_done")
        print(f"  done {c.video_key}: {len(clips)} clips ({sum(x.kept for x in clips)} kept) "
              f"in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        yield result


def one_per_video(item):
    """Two candidates naming one video (a catalog listing an id twice) would race on its
    scratch file and clip store: keep one, deterministically, and record the others."""
    vkey, cands = item
    cands = sorted(cands, key=lambda c: (c.url or "", c.path or "", c.title))
    yield cands[0]
    for c in cands[1:]:
        _count("failed_discover")
        yield beam.pvalue.TaggedOutput(FAILURES, Failure(
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


class WriteShards(beam.DoFn):
    """One writer per (split, bucket): rolls its own tars under shards/_tmp/RUN/."""

    def __init__(self, cfg: PipelineConfig, tmp_dir: str):
        self.cfg, self.tmp_dir = cfg, tmp_dir

    def process(self, item):
        (split, bucket), videos = item
        s, c = self.cfg.shards, self.cfg.clips
        roller = ShardRoller(self.tmp_dir, f"{split}-b{bucket:03d}", split, int(s.target_mb * 2**20),
                             s.max_clips, c.spec)
        for x in write_shards_for(iter(sorted(videos, key=lambda v: v.video_key)), roller):
            if isinstance(x, ShardRecord):
                _count("shards_written")
                _count("clips_sharded", len(x.keys))
                yield beam.pvalue.TaggedOutput("shards", x)
            else:
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


def build_pipeline(p: beam.Pipeline, cfg: PipelineConfig, paths: RunPaths, skip: set[str],
                   staged: list[str], workers: int) -> None:
    found = (p | "Sources" >> beam.Create(cfg.sources)
               | "Discover" >> beam.FlatMap(discover_source).with_outputs(FAILURES, main="candidates"))
    candidates = (found.candidates
                  | "Reshuffle" >> beam.Reshuffle()
                  | "KeywordFilter" >> beam.ParDo(KeywordFilterFn(cfg)))
    candidates | "Candidates" >> _jsonl("Candidates", f"{paths.run_dir}/candidates")

    unique = (candidates
           | "KeptByKeywords" >> beam.Filter(lambda c: c.keyword_verdict == "keep")
           | "SkipDone" >> beam.Filter(lambda c, skip: c.video_key not in skip, skip)
           | "ByVideo" >> beam.Map(lambda c: (c.video_key, c))
           | "GroupByVideo" >> beam.GroupByKey()
           | "OnePerVideo" >> beam.FlatMap(one_per_video).with_outputs(FAILURES, main="candidates"))
    dupes = unique[FAILURES]
    cut = (unique.candidates
           | "DownloadAndCut" >> beam.ParDo(DownloadAndCut(cfg, paths.out, paths.scratch))
                                     .with_outputs(FAILURES, main="videos"))
    # videos cut by an earlier run that was stopped before it committed
    resumed = (p | "Staged" >> beam.Create(staged) | "LoadStaged" >> beam.Map(read_store_result))
    videos = (cut.videos, resumed) | "AllVideos" >> beam.Flatten()

    if cfg.filters.quality.mode != "off":
        from genie_pipeline.filtering.quality import ScoreQuality

        videos = videos | "ScoreQuality" >> ScoreQuality(cfg.filters.quality, workers)
    scored = videos
    s = cfg.shards
    sharded = (scored
               | "AssignSplit" >> beam.Map(assign_split, s.val_fraction, s.seed)
               | "ByShardWriter" >> beam.Map(lambda v: ((v.split, zlib.crc32(v.video_key.encode()) % s.parallelism), v))
               | "GroupForShards" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShards(cfg, paths.tmp_shards)).with_outputs("shards", main="videos"))
    sharded.videos | "Videos" >> _jsonl("Videos", f"{paths.run_dir}/videos")
    sharded.shards | "Shards" >> _jsonl("Shards", f"{paths.run_dir}/shards")
    ((found[FAILURES], dupes, cut[FAILURES]) | "AllFailures" >> beam.Flatten()
     | "Failures" >> _jsonl("Failures", f"{paths.run_dir}/failures"))


def pipeline_options(cfg: PipelineConfig, extra_args: list[str]) -> tuple[Any, PipelineOptions, int]:
    r = cfg.runner
    args = list(r.options) + list(extra_args)
    runner_name = r.name
    for i, a in enumerate(args):  # `--runner X` on the command line wins over the config
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


def run_ingest(cfg: PipelineConfig, extra_beam_args: list[str] | None = None,
               retry_failed: bool = False) -> dict:
    out = cfg.output.dir
    if not fs.is_remote(out):
        out = os.path.abspath(out)
    with fs.output_lock(out, "ingest"):
        return _run_ingest(cfg, out, extra_beam_args, retry_failed)


def _run_ingest(cfg: PipelineConfig, out: str, extra_beam_args: list[str] | None, retry_failed: bool) -> dict:
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

    runner, options, workers = pipeline_options(cfg, extra_beam_args or [])
    wall0, cpu0 = time.time(), cpu_seconds()
    print(f"ingest: {len(cfg.sources)} source(s) → {out} ({len(skip)} video(s) already done or staged)",
          file=sys.stderr, flush=True)
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, cfg, paths, skip, staged, workers)
    result = p.run()
    result.wait_until_finish()
    counters = {m.key.metric.name: m.committed for m in result.metrics().query()["counters"]
                if m.key.metric.namespace == NS}
    wall, cpu = time.time() - wall0, cpu_seconds() - cpu0

    merged = commit_run(
        out,
        candidates=[Candidate(**_pick(Candidate, r)) for r in _read_jsonl(f"{paths.run_dir}/candidates*")],
        failures=[Failure(**_pick(Failure, r)) for r in _read_jsonl(f"{paths.run_dir}/failures*")],
        videos=[VideoResult.from_json(r) for r in _read_jsonl(f"{paths.run_dir}/videos*")],
        shard_records=[ShardRecord(**r) for r in _read_jsonl(f"{paths.run_dir}/shards*")],
        stats={"run_id": run_id, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "counters": counters,
               "runner": cfg.runner.name, "workers": workers},
        spec=cfg.clips.spec,
        sources=[s.name for s in cfg.sources],
        cleanup=[fs.join(out, "_runs"), fs.join(out, "shards", "_tmp"), fs.join(out, "_commit")],
    )
    if not cfg.download.keep:
        fs.rmtree(paths.scratch) if cfg.download.scratch_dir is None else None
    if not cfg.shards.keep_clip_store and cfg.filters.quality.mode == "off":
        fs.rmtree(fs.join(out, "clips"))
    return merged


def _pick(cls, row: dict) -> dict:
    return {k: row[k] for k in cls.__dataclass_fields__ if k in row}


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
