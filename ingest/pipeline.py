"""The ingest pipeline on Apache Beam, one job from discovery to commit. The graph reads like the flow:

    Discover → Reshuffle → KeywordFilter ─┐
    ResumeMarkers (done/failed/staged, read from OUT's tables by a worker) ─┴→ GroupByVideo → Route
      → DownloadAndCut (or a staged clip store loaded) → ScoreQuality → AssignSplit
      → WriteAsCut (shards written in the bundle that cut the videos, many videos per shard)
        → what a bundle cannot mix: SpreadVideos → WriteShards (one per worker) → WriteTails (one per split)
      → Curate (near duplicates and caps over the whole output: a join of fingerprint bands by
        partition over the workers, committed manifest parts read in parallel, two rounds)
        → ApplyDecisions (manifest rows) → PurgeShards (the shards that hold a rejected clip)
      → table parts (candidates, failures, videos, manifest) → CommitRun (the job's last step)

The stages are Beam-free (sources.Discover, process.KeywordVerdict, process.VideoProcessor);
`StageFn` is the one adapter that runs them: it builds a stage per worker, routes its
`Failure`s to the dead letters and turns its counts into Beam metrics. `DownloadAndCut`
persists each video's clips to the clip store, so only small records cross stage
boundaries. Nothing about earlier runs is pickled into the graph: its size does not grow with
the output. The commit (shards/commit.py commit_parts) runs on a worker once everything is
written, so a job commits whether or not its launcher is still there.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pickle
import re
import resource
import signal
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from genie_pipeline.filtering.config import DedupeConfig, FiltersConfig, KeywordsConfig
from genie_pipeline.ingest.config import DownloadConfig, PreflightError, RunnerConfig, Source, check_remote_run
from genie_pipeline.ingest import beam_memo, progress
from genie_pipeline.ingest.download import check_pot_provider, check_secret_files
from genie_pipeline.ingest.politeness import job_worker_processes
from genie_pipeline.ingest.process import KeywordVerdict, VideoProcessor
from genie_pipeline.ingest.sources import Discover, check_sources
from genie_pipeline.shards import fs, objstore, snapshots
from genie_pipeline.shards.card import write_card
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.commit import (PartWriter, check_spec, commit_parts, failed_video_row, recover,
                                          rewrite_without, shard_stats_file, small_shards)
from genie_pipeline.shards.dedupe import (CAPS, ENTRY, QUERY, RunClips, add_clip, cap_counts, cap_group, entries_in,
                                          entry_counts, first_round, join_parts, match, nearest_new, over_cap, salted,
                                          salts, second_round)
from genie_pipeline.shards.config import ClipsConfig, OutputConfig, ShardsConfig
from genie_pipeline.shards.lease import acquire_job, describe, live_holder, release_job
from genie_pipeline.shards.lease import holder as lease_holder
from genie_pipeline.shards.reader import (DataError, iter_part_batches, iter_tar_samples, live_shards, read_stats,
                                          table_files, table_rows)
from genie_pipeline.shards.records import Candidate, ClipRow, Failure, VideoResult, from_row, redact_url
from genie_pipeline.shards.report import REPORT, Threshold, write_report, write_report_detached
from genie_pipeline.shards.store import read_store_result
from genie_pipeline.shards.writer import ShardMixer, StreamingShards, spread

beam_memo.install()  # Beam's repeated per-job introspection, once (ingest/beam_memo.py)

NS = "ingest"
FAILURES = "failures"
MANIFEST, LEFTOVER, COMPACTED, PURGE, REJECTED = "manifest", "leftover", "compacted", "purge", "rejected"


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
            url=c.url, title=c.title, path=c.path))


def split_draw(video_key: str, seed: int) -> float:
    """A video's draw in [0, 1): it goes to val where the draw is below shards.val_fraction."""
    return zlib.crc32(f"{seed}:{video_key}".encode()) / 2**32


def assign_split(v: VideoResult, val_fraction: float, seed: int, split: str | None = None) -> VideoResult:
    """By video, never by clip: neighbouring clips of one video would leak across splits."""
    v.split = split or ("val" if split_draw(v.video_key, seed) < val_fraction else "train")
    for c in v.clips:
        c.split = v.split
    return v


HELD = "held"
# a run whose draw puts at least this many videos in val is not held: that all of them fail
# (a video drawn to val may fail to download or give no clip) is not worth the streaming
HOLD_BELOW_VAL_VIDEOS = 20


def drawn_to_val(item, val_fraction: float, seed: int) -> tuple[int, int]:
    """(1, 1 where the draw puts it in val) for a video of the run, a candidate or a Staged store."""
    vkey = item.video_key if isinstance(item, Candidate) else os.path.basename(item.store)[: -len(".tar")]
    return 1, int(split_draw(vkey, seed) < val_fraction)


def val_guard(out: str, run: tuple[int, int], val_fraction: float) -> dict:
    """Whether this run's videos wait for each other before their split is set (`hold`): where
    the output has no val shard yet and the draw puts fewer than HOLD_BELOW_VAL_VIDEOS of
    this run's `run` = (videos, videos drawn to val) in val (none, or ones that may all
    fail), the run may be the one that must give val its first video (`guaranteed_val`).
    `earlier`: the output's videos with clips, which count towards the two videos the
    guarantee needs."""
    n_run, n_val = run
    if (val_fraction <= 0 or n_val >= HOLD_BELOW_VAL_VIDEOS or not n_run
            or live_shards(fs.join(out, "shards"), "val")):
        return {"hold": False, "earlier": 0}
    earlier = 0
    for path in table_files(out, "videos"):
        try:
            for b in iter_part_batches(path, ["status", "n_kept"]):
                earlier += sum(st == "done" and (k or 0) > 0 for st, k in zip(b["status"].to_pylist(),
                                                                               b["n_kept"].to_pylist()))
        except DataError:
            continue  # the commit moves it aside; the run's own videos still count
    return {"hold": True, "earlier": earlier}


def split_or_hold(v: VideoResult, val_fraction: float, seed: int):
    """The split as drawn, for the shard writers at once; or, where the run holds its videos
    (val_guard: CutOrLoad marked the video's split HELD), the video tagged HELD for
    `guaranteed_val`."""
    if v.split == HELD:
        yield beam.pvalue.TaggedOutput(HELD, v)
    else:
        yield assign_split(v, val_fraction, seed)


def guaranteed_val(item, val_fraction: float, seed: int, guard: dict):
    """The held videos of a run (val_guard), with their splits: as drawn, except that where
    no video with clips was drawn to val (none was, or those drawn failed) and the output then
    has at least two videos with clips (its earlier ones and these) and no val shard, the
    video with clips nearest to being drawn (the lowest draw) goes to val, so that eval and
    early stopping have data. Deterministic for a set of videos; only this run's videos are
    placed (a committed video keeps its split)."""
    _, vids = item
    vids = sorted(vids, key=lambda v: (split_draw(v.video_key, seed), v.video_key))
    with_clips = [v for v in vids if any(c.kept for c in v.clips)]
    drawn_val = with_clips and split_draw(with_clips[0].video_key, seed) < val_fraction
    pick = (with_clips[0].video_key if with_clips and not drawn_val and guard["earlier"] + len(with_clips) >= 2
            else None)
    for v in vids:
        if v.video_key == pick:
            _count("videos_val_guaranteed")
        yield assign_split(v, val_fraction, seed, "val" if v.video_key == pick else None)


def curation_decisions(p: beam.Pipeline, videos, out: str | beam.PCollection, dedupe: DedupeConfig,
                       shards: ShardsConfig):
    """(clip key, (reason, duplicate_of)) for each clip of this run that curation rejects:
    near duplicates and balance caps over the whole output (shards/dedupe.py), as a join
    spread over the workers. The committed manifest's parts are read by as many workers
    (nothing of earlier runs passes through the graph); each partition of the fingerprints
    (shards/dedupe.py: band, sub-block, prefix, and a share of one a crowd overfills) is
    matched on one worker; two rounds over the neighbour
    lists decide; each cap group is counted on one worker. It waits for every video of the
    run, a barrier on clip rows only: the shards are written meanwhile, and the few that
    hold a rejected clip are rewritten without it (`purge_shard`) before the commit
    publishes them. `out`: the output's path, or a PCollection of it (the job's
    `TakeOutput` step, so that nothing reads the output before the job holds it)."""
    max_distance = dedupe.max_distance if dedupe.enabled else None
    caps = {name: shards.caps[name] for name in CAPS if shards.caps.get(name) is not None}
    if max_distance is None and not caps:
        return p | "NoCuration" >> beam.Create([])
    clips = videos | "ClipRows" >> beam.FlatMap(lambda v: [{k: getattr(c, k) for k in CURATE_COLUMNS} for c in v.clips])
    if isinstance(out, str):
        out = p | "Output" >> beam.Create([out])
    # the committed clips' count (from the manifest parts' footers) sizes the join's bands
    committed_clips = beam.pvalue.AsSingleton(out | "CommittedClips" >> beam.Map(lambda o: table_rows(o, "manifest")))
    run = beam.pvalue.AsSingleton(
        clips | "RunClips" >> beam.CombineGlobally(RunSummary())
        | "RunAndCommitted" >> beam.Map(lambda acc, n: RunClips.build(acc[0], acc[1], clips=n + acc[2][0],
                                                                      max_distance=max_distance or 0, new=acc[2][0]),
                                        committed_clips))
    committed = (out | "ManifestParts" >> beam.FlatMap(lambda o: table_files(o, "manifest"))
                 | "SpreadParts" >> beam.Reshuffle()
                 | "ReadCommitted" >> beam.FlatMap(committed_entries, run, max_distance, list(caps))
                 .with_outputs(COUNTS, main="entries"))
    decisions = []
    if max_distance is not None:
        batches = (clips | "ClipBatches" >> beam.BatchElements(min_batch_size=64, max_batch_size=4096)
                   | "JoinBatches" >> beam.FlatMap(lambda rows, r: r.batches(rows, new=True), run))
        # the partitions a crowd of look-alikes overfills, from every partition's entry count;
        # the new clips' are counted from their batches, which are cut in the same stage that
        # keys them, so no copy of a first run's parts waits for the count
        split = beam.pvalue.AsSingleton(
            (committed.entries | "CommittedCounts" >> beam.Map(lambda kv: (kv[0], entries_in(kv[1]))),
             batches | "NewCounts" >> beam.FlatMap(entry_counts))
            | "PartitionCounts" >> beam.Flatten()
            | "PerPartition" >> beam.CombinePerKey(sum)
            | "AllPartitions" >> beam.combiners.ToDict()
            | "HotPartitions" >> beam.Map(salts))
        parts = ((committed.entries | "CommittedParts" >> beam.FlatMap(salted_part, split),
                  batches | "NewParts" >> beam.FlatMap(
                      lambda b, sp: (kv for item in join_parts(b, max_distance) for kv in salted_part(item, sp)),
                      split))
                 | "JoinParts" >> beam.Flatten())
        first = (parts
                 | "ByPartition" >> beam.GroupByKey()
                 | "Match" >> beam.FlatMap(match_partition, max_distance)
                 | "EdgesByClip" >> beam.GroupByKey()
                 | "FirstRound" >> beam.FlatMap(ask_neighbours).with_outputs(ASKS, main="decided"))
        second = (first[ASKS]
                  | "AsksByNeighbour" >> beam.GroupByKey()
                  | "SecondRound" >> beam.FlatMap(answer_askers)
                  | "AnswersByClip" >> beam.GroupByKey()
                  | "Representative" >> beam.Map(lambda kv: (kv[0], min(kv[1])[1])))
        decisions.append((first.decided, second) | "Duplicates" >> beam.Flatten()
                         | "DuplicateReason" >> beam.Map(lambda kv: (kv[0], ("duplicate", kv[1]))))
    if caps:
        survivors = clips | "KeptClips" >> beam.Filter(lambda r: r["kept"])
        if decisions:
            survivors = without(survivors, decisions[0], "Unduplicated")
        counts = committed[COUNTS] | "CommittedPerGroup" >> beam.CombinePerKey(sum)
        for name, cap in caps.items():
            label = name.title()
            over = ({"rows": survivors | f"By{label}" >> beam.Map(lambda r, n=name: ((n, cap_group(r, n)), r)),
                     "used": counts | f"Used{label}" >> beam.Filter(lambda kv, n=name: kv[0][0] == n)}
                    | f"Group{label}" >> beam.CoGroupByKey()
                    | f"Over{label}" >> beam.FlatMap(lambda kv, c=cap: over_cap(list(kv[1]["rows"]), sum(kv[1]["used"]), c))
                    | f"Reason{label}" >> beam.Map(lambda k, n=name: (k, (f"cap:{n}", None))))
            decisions.append(over)
            survivors = without(survivors, over, f"Within{label}")
    return decisions | "Decided" >> beam.Flatten()


ASKS, COUNTS = "asks", "counts"


def match_partition(item, max_distance: int):
    """One partition's edges. Its values are iterated twice: the entries are gathered first,
    then the queries stream past them (a GroupByKey's values can be iterated again, and on
    Dataflow they are paged in), so memory holds the entries, not the queries: a first run
    of millions of new clips queries each partition with most of them."""
    _, values = item
    entries = [b for tag, b in values if tag != QUERY]
    queries = [0]

    def stream():
        for tag, b in values:
            if tag != ENTRY:
                queries[0] += len(b)
                yield b
    yield from match(item[0], entries, stream(), max_distance)
    Metrics.distribution(NS, "dedupe_partition_entries").update(sum(len(b) for b in entries))
    Metrics.distribution(NS, "dedupe_partition_queries").update(queries[0])


def salted_part(item, split):
    """A join part under its GroupByKey key (`salted`), its pickled size and query rows
    counted: the join's shuffle, and the partitions a query reaches, in the job's metrics."""
    for kv in salted(item, split):
        Metrics.counter(NS, "dedupe_shuffle_bytes").inc(len(pickle.dumps(kv, pickle.HIGHEST_PROTOCOL)))
        if kv[1][0] != ENTRY:
            Metrics.counter(NS, "dedupe_query_rows").inc(len(kv[1][1]))
        yield kv


class RunSummary(beam.CombineFn):
    """What `RunClips` needs of the run's clip rows: (seconds per video, fingerprint
    versions, [clips])."""

    def create_accumulator(self):
        return defaultdict(float), set(), [0]

    def add_input(self, acc, row):
        add_clip(acc[:2], row)
        acc[2][0] += 1
        return acc

    def merge_accumulators(self, accs):
        seconds, versions, n = self.create_accumulator()
        for s, v, m in accs:
            for k, x in s.items():
                seconds[k] += x
            versions |= v
            n[0] += m[0]
        return seconds, versions, n

    def extract_output(self, acc):
        return acc


def committed_entries(path: str, run: RunClips, max_distance: int | None, caps: list[str]):
    """One committed manifest part for curation: its kept clips as join entries by
    partition, and (COUNTS) kept clips per cap group. Rows of videos this run redoes take no
    part. A part that cannot be read whole gives nothing (logged): the commit moves it aside
    with a failure row, so no clip of it may reject or count against a new one. A part of an
    older schema lacks columns (fingerprint, channel, query): they read as missing."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    entries = []
    try:
        for b in iter_part_batches(path, list(CURATE_COLUMNS)):
            names = set(b.schema.names)
            cols = {name: b.column(name).to_pylist() if name in names else [None] * b.num_rows
                    for name in CURATE_COLUMNS}
            if max_distance is not None:
                for batch in run.batches(new=False, columns=cols):
                    entries += join_parts(batch, max_distance)
            if caps:
                rows = [dict(zip(cols, values)) for values in zip(*cols.values())]
                rows = [r for r in rows if not run.redoes(r["video_key"])]
                for name in caps:
                    for group, n in cap_counts(rows, name).items():
                        counts[(name, group)] += n
    except DataError as e:
        logging.getLogger(__name__).warning("skipping: %s", e)
        return
    yield from entries
    for key, n in counts.items():
        yield beam.pvalue.TaggedOutput(COUNTS, (key, n))


def ask_neighbours(item):
    """First round for one clip with neighbours above it: its decision when one is committed;
    else it flags itself (it does not represent) and asks its nearest new neighbours (ASKS)."""
    q, edges = item
    edges = list(edges)
    yield beam.pvalue.TaggedOutput(ASKS, (q, None))
    rep = first_round(q, edges)
    if rep is not None:
        yield q, rep
        return
    for rank, nbr in nearest_new(edges):
        yield beam.pvalue.TaggedOutput(ASKS, (nbr, (q, rank)))


def answer_askers(item):
    nbr, values = item
    values = list(values)
    yield from second_round(nbr, [v for v in values if v is not None], has_edges=None in values)


def without(rows, rejected, label: str):
    """The clip rows whose key `rejected` ((key, decision) pairs) does not name."""
    return ({"row": rows | f"{label}Key" >> beam.Map(lambda r: (r["key"], r)), "out": rejected}
            | f"{label}Join" >> beam.CoGroupByKey()
            | label >> beam.FlatMap(lambda kv: [] if list(kv[1]["out"]) else list(kv[1]["row"])))


# the manifest columns curation reads
CURATE_COLUMNS = ("key", "video_key", "source", "start_s", "duration_s", "kept", "quality_score", "fingerprint",
                  "channel", "query")


def apply_decision(item):
    """One clip's manifest row and curation decision (if any): the row, rejected where
    decided; a rejected clip's shard is named (PURGE, (shard, key)) for `purge_shard`, and its
    video (REJECTED) for the video's kept count."""
    key, grouped = item
    decision = next(iter(grouped["decision"]), None)
    for row in grouped["row"]:
        if decision is None:
            yield row
            continue
        reason, duplicate_of = decision
        _count(f"clips_rejected_{reason.replace(':', '_')}")
        if row.get("shard"):
            yield beam.pvalue.TaggedOutput(PURGE, (row["shard"], key))
        yield beam.pvalue.TaggedOutput(REJECTED, row["video_key"])
        yield {**row, "kept": False, "reason": reason, "duplicate_of": duplicate_of, "shard": None}


def purge_shard(item):
    """A written shard without the clips curation rejected: rewritten in place (tar members
    copied, nothing decoded) where it holds any, deleted where it holds nothing else. A retry
    finds the same result: a rewritten shard loses nothing more, a deleted one is gone."""
    _, grouped = item
    drop = set(grouped["drop"])
    for rec in grouped["shard"]:
        if not drop:
            yield rec
            continue
        if not fs.exists(rec.path):  # deleted by an earlier attempt of this bundle
            continue
        _count("shards_purged")
        stats = rewrite_without(rec.path, rec.path, drop)
        _count("clips_sharded", (stats or {}).get("n_samples", 0) - rec.stats["n_samples"])
        if stats is None:
            _count("shards_written", -1)
            for path in (shard_stats_file(rec, "")[0], rec.path):
                fs.remove(path)
        else:
            yield dataclasses.replace(rec, stats=stats)


def spread_chunk(shards: ShardsConfig) -> int:
    """Clips per video part sent to a shard writer: a shard holds parts of at least 16 videos
    (fewer only where the run has fewer)."""
    return max(1, shards.max_clips // 16)


def to_writers(v: VideoResult, chunk: int, writers: int):
    """A video's kept clips in parts (writer.spread), each to one of `writers` writers of its
    split: ((split, writer), part). A long video is written by every writer."""
    for part in spread(v, chunk):
        yield (v.split, zlib.crc32(part.clips[0].key.encode()) % writers), part


@dataclass
class OldTail:
    """A video's clips in a small shard an earlier run left (`shard`), to be written again
    into this run's last shard of the split; its clips' bytes are read from that shard."""

    shard: str
    video: VideoResult


def old_tails(out: str, shards: ShardsConfig):
    """(split, OldTail) for the clips of each small shard of the output (commit.small_shards),
    their rows streamed from the manifest (only the matching rows are kept)."""
    import pyarrow.compute as pc

    shard_dir = fs.join(out, "shards")
    small = {n: k for split in ("train", "val")
             for n, k in small_shards(shard_dir, split, int(shards.target_mb * 2**20), shards.max_clips).items()}
    if not small:
        return
    found: dict[tuple[str, str], list] = {}
    wanted = pa.array(sorted(small), pa.string())
    def hits(b):
        return pc.fill_null(pc.is_in(b["shard"], value_set=wanted), False)

    for path in table_files(out, "manifest"):
        try:
            if not any(pc.any(hits(b)).as_py() for b in iter_part_batches(path, ["shard"])):
                continue  # most parts hold no clip of a small shard: only their shard column is read
            rows = [r for b in iter_part_batches(path) for r in b.filter(hits(b)).to_pylist()]
        except DataError as e:  # the commit moves it aside; its shards are not compacted this time
            logging.getLogger(__name__).warning("skipping: %s", e)
            continue
        for r in rows:
            found.setdefault((r["shard"], r["video_key"]), []).append(from_row(ClipRow, r))
    named: dict[str, int] = defaultdict(int)
    for (shard, _), clips in found.items():
        named[shard] += len(clips)
    for (shard, vkey), clips in sorted(found.items()):
        if named[shard] < small[shard]:  # rows of it are in a damaged part: the commit restores them from it
            continue
        c = clips[0]
        yield c.split, OldTail(shard, VideoResult(video_key=vkey, video_id=c.video_id, source=c.source,
                                                  title=c.title, status="done", clips=clips, split=c.split,
                                                  store=fs.join(shard_dir, shard)))


def mp4_members(v: VideoResult) -> dict[str, bytes]:
    """The clips in `v.store`, a clip store or a shard: every `{key}.mp4` member."""
    return {key: parts["mp4"] for key, parts in iter_tar_samples(v.store) if "mp4" in parts}


class WriteShards(beam.DoFn):
    """One writer's video parts into shards under shards/_tmp/RUN, interleaved so that each
    shard holds a sample of many videos (shards/writer.py StreamingShards). Yields each
    finished shard's record and, tagged MANIFEST, the rows of its clips. With `leftovers`,
    the clips of the writer's last, unfinished shard go out tagged LEFTOVER instead of being
    written as a small tail, for the one writer per split that finishes them all; that
    writer also takes the small shards earlier runs left (OldTail, where this run adds clips
    to the split) and names them, tagged COMPACTED, for the commit to replace."""

    def __init__(self, tmp_dir: str, run_id: str, shards: ShardsConfig, spec: ClipSpec, leftovers: bool):
        self.tmp_dir, self.run_id, self.shards, self.spec, self.leftovers = tmp_dir, run_id, shards, spec, leftovers

    def setup(self):
        _quiet_worker()

    def process(self, item):
        _, items = item
        parts = [x for x in items if isinstance(x, VideoResult)]
        tails = [x for x in items if isinstance(x, OldTail)]
        if not parts:
            # a run that adds nothing to the split rewrites nothing: every shard keeps its
            # name and bytes (a run.json naming them stays valid); the next run with new clips
            # compacts the small shards
            tails = []
        for name in sorted({t.shard for t in tails}):
            yield beam.pvalue.TaggedOutput(COMPACTED, (name, [c.key for t in tails if t.shard == name
                                                              for c in t.video.clips]))
        writer = shard_writer(self.tmp_dir, self.run_id, self.shards, self.spec)
        yield from emit_shards(writer.write(parts + [t.video for t in tails]))
        if self.leftovers:
            for v in writer.leftovers():
                yield beam.pvalue.TaggedOutput(LEFTOVER, v)
        else:
            yield from emit_shards(writer.close())


class WriteAsCut(beam.DoFn):
    """Shards written as the videos are cut, in the bundle that cut them (no shuffle before
    it): a ShardMixer pools each video's kept clips and writes a shard whenever it holds one
    of many videos. At the end of the bundle what is left, the pool and the open shard, goes
    out tagged LEFTOVER to the writers that see every bundle's leftovers (WriteShards)."""

    def __init__(self, tmp_dir: str, run_id: str, shards: ShardsConfig, spec: ClipSpec):
        self.tmp_dir, self.run_id, self.shards, self.spec = tmp_dir, run_id, shards, spec

    def setup(self):
        _quiet_worker()

    def start_bundle(self):
        self.mixer = ShardMixer(shard_writer(self.tmp_dir, self.run_id, self.shards, self.spec),
                                spread_chunk(self.shards))

    def process(self, v: VideoResult):
        yield from emit_shards(self.mixer.add(v))

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MIN_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue

        for part in self.mixer.leftovers():
            yield beam.pvalue.TaggedOutput(LEFTOVER, WindowedValue(part, MIN_TIMESTAMP, [GlobalWindow()]))


def shard_writer(tmp_dir: str, run_id: str, shards: ShardsConfig, spec: ClipSpec) -> StreamingShards:
    return StreamingShards(tmp_dir, run_id, int(shards.target_mb * 2**20), shards.max_clips, spec,
                           load_clips=mp4_members)


def emit_shards(finished):
    """Each finished shard's record (its stats file written beside it) and, tagged MANIFEST,
    the rows of its clips."""
    for rec, clips in finished:
        fs.write_bytes(*shard_stats_file(rec, os.path.basename(rec.path)))
        _count("shards_written")
        _count("clips_sharded", len(clips))
        yield dataclasses.replace(rec, keys=[])  # the manifest rows name the clips; the commit needs no keys
        for c in clips:
            yield beam.pvalue.TaggedOutput(MANIFEST, c.row())


class WriteParts(beam.DoFn):
    """Rows (dicts or records with `row()`) of one table into Parquet part files under
    `dest_dir`, a bundle's rows at a time (shards/commit.py PartWriter); yields (table, path)
    of each part. A part written by a bundle that is then retried is never yielded twice: the
    commit publishes only the parts it is handed."""

    def __init__(self, dest_dir: str, table: str, run_id: str):
        self.dest_dir, self.table, self.run_id = dest_dir, table, run_id

    def start_bundle(self):
        self.writer = PartWriter(self.dest_dir, self.table, self.run_id)

    def process(self, item):
        for path in self.writer.add(item if isinstance(item, dict) else item.row()):
            yield self.table, path

    def finish_bundle(self):
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MIN_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue

        for path in self.writer.flush():
            yield WindowedValue((self.table, path), MIN_TIMESTAMP, [GlobalWindow()])


def video_rows(item):
    """The `videos` row of each video of the run: its result (less the clips curation
    rejected), else (it failed before it was cut) its first failure."""
    _, grouped = item
    results, failures = list(grouped["videos"]), list(grouped["failures"])
    if results:
        row = results[0].row()
        row["n_kept"] -= sum(grouped["rejected"])  # by curation, after the clips were cut
        yield row
    elif failures:
        yield failed_video_row(failures[0])


# ----------------------------------------------------------------------------- resume
DONE, STAGED, REDO = "done", "staged", "redo"


def resume_markers(out: str, retry_failed: bool):
    """(video key, marker) for each video an earlier run finished (`done`: skip it), failed
    (`done` too unless `retry_failed`, then `redo`: process it and replace its rows; a deferred
    one, walled, is `redo` always) or cut
    without committing (`staged`, its clip store: load it instead of cutting again). Read by a
    worker from the output's tables, so the resume state never travels in the job graph.
    Where a `videos` part cannot be read, now or by an earlier run (the commit moves it to
    _corrupt/videos, with a failure row), the videos with clips in the manifest count as
    done: their clips are in shards already."""
    status: dict[str, str] = {}
    damaged = False
    for path in table_files(out, "videos"):
        try:
            for b in iter_part_batches(path, ["video_key", "status"]):
                status.update(zip(b["video_key"].to_pylist(), b["status"].to_pylist()))
        except DataError as e:
            logging.getLogger(__name__).warning("resume: %s", e)
            damaged = True
    if damaged or fs.exists(fs.join(out, "_corrupt", "videos")) or fs.isdir(fs.join(out, "_corrupt", "videos")):
        for path in table_files(out, "manifest"):
            try:
                for b in iter_part_batches(path, ["video_key"]):
                    status.update((k, "done") for k in b["video_key"].to_pylist() if k not in status)
            except DataError as e:
                logging.getLogger(__name__).warning("resume: %s", e)
    for vkey, st in status.items():
        # deferred (a wall, a failing proxy: not the video's fault) is retried by every run
        yield vkey, (DONE if st == "done" or not (retry_failed or st == "deferred") else REDO)
    for path, _ in fs.list_files(fs.join(out, "clips", "*.tar")):
        vkey = os.path.basename(path)[: -len(".tar")]
        if status.get(vkey) != "done":
            yield vkey, (STAGED, path)


def route(item):
    """One video's candidates and resume markers: nothing if done; its clip store (Staged) if
    staged; else its one candidate (one_per_video). A video with earlier rows is also marked REDO."""
    vkey, grouped = item
    markers, cands = list(grouped["markers"]), list(grouped["candidates"])
    if DONE in markers:
        return
    staged = sorted(m[1] for m in markers if isinstance(m, tuple) and m[0] == STAGED)
    if (staged or cands) and REDO in markers:  # only a video processed again replaces its rows
        yield beam.pvalue.TaggedOutput(REDO, vkey)
    if staged:
        yield Staged(staged[0])
    elif cands:
        yield from one_per_video((vkey, cands))


@dataclass(frozen=True)
class Staged:
    """A video cut by an earlier run that was stopped before it committed: its clip store."""

    store: str


class CutOrLoad:
    """The DownloadAndCut stage: a candidate is downloaded and cut (`cut`, a VideoProcessor
    factory); a Staged video is loaded from its clip store instead of cut again. One stage for
    both, so both reach the shard writers in the bundle that produced them: a Flatten of two
    branches makes a local runner store the whole collection before the next stage."""

    def __init__(self, cut: Callable[..., Callable[[Any], Any]], count: Callable[..., None]):
        self.cut = cut(count=count)

    def __call__(self, element):
        item, hold = element  # hold: the run holds its videos for the val guard (val_guard)
        out = read_store_result(item.store) if isinstance(item, Staged) else self.cut(item)
        if hold and isinstance(out, VideoResult):
            out.split = HELD
        return out


def take_output(out: str, run_id: str, job_lease_s: float | None) -> str:
    """The job's first step, which every step that reads or writes the output waits for;
    yields `out`. A job that outlives its launcher (`job_lease_s`: detached, a flex template)
    takes the output's lease here under its run id (shards/lease.py acquire_job), and fails
    with OutputBusy naming the holder where another run holds it, before anything is written
    or deleted; then it finishes a commit a killed run left half-done and drops the staging
    of other runs (they hold no lease: this job does). A retried step finds the lease its own
    and does the same again. Otherwise the launcher holds the output and did both before."""
    if job_lease_s is not None:
        acquire_job(fs.join(out, ".lock"), run_id, f"ingest job {run_id}", job_lease_s, fs.busy(out))
        clean_staging(out, run_id)
    return out


def card_details(cfg: IngestConfig) -> dict:
    """What the dataset card (shards/card.py) says of the config: sources, thresholds, dedupe."""
    def where(s) -> str:
        w = next((getattr(s, k) for k in ("glob", "root", "path") if getattr(s, k, None)), None)
        return redact_url(w) if w else ", ".join(getattr(s, "queries", []) or [])[:80]

    d = cfg.filters.dedupe
    return {"sources": [{"name": s.name, "type": s.type, "where": where(s)} for s in cfg.sources],
            "thresholds": {k: f"{t.name} = {t.value} (clips kept {t.keep} it)"
                           for k, t in report_thresholds(cfg.filters).items()},
            "dedupe": "on (near-duplicate clips rejected as `duplicate`)" if d.enabled else "off",
            "keywords": "include/require/exclude terms on titles (see pipeline.yaml keywords)"}


def commit_job(_, parts: list, shards: list, redone: list, compacted: list, out: str, run_id: str, spec: ClipSpec,
               cleanup: list[str], lease_owner: str | None = None, drop_stores: bool = False,
               snapshot_meta: dict | None = None, card: dict | None = None) -> Iterator[dict]:
    """The job's last step: publish this run (shards/commit.py commit_parts). It runs on a
    worker once every part and shard is written, so a job commits with no launcher alive.
    With `drop_stores` (shards.keep_clip_store off, no quality scoring to come) it then
    deletes the output's clip stores, in batches: every video in them is committed now, so
    nothing resumes from them (a retry of this step deletes what is left). A
    detached job then frees the output lease it took in its first step (`lease_owner`), and
    commits nothing where that lease is no longer its own (it lapsed and another run may be
    writing the output)."""
    if lease_owner is not None:
        held = lease_holder(fs.join(out, ".lock"))
        if (held or {}).get("owner") != lease_owner:
            if read_stats(out).get("last_run", {}).get("run_id") == run_id:
                # a retry of this step after it committed and freed the lease. (A bare return,
                # no comment on its line: Beam reads a `return …` line in a generator as a
                # value returned and warns "Using yield and return" at every ingest)
                return
            raise fs.OutputBusy(
                f"{out}: this job's lease on the output was lost (now held by "
                f"{describe(held) if held else 'nobody'}); run {run_id} is not committed: its clip stores "
                "stay, and the next run picks them up")
    by_table: dict[str, list[str]] = {}
    for table, path in parts:
        by_table.setdefault(table, []).append(path)
    # a source counts as discovered again when this run wrote candidates for it (its parts are
    # named by source): one whose listing failed keeps its earlier candidates
    stats = commit_parts(out, run_id=run_id, parts=by_table, shard_records=list(shards), spec=spec,
                         run_stats={"run_id": run_id, "committed_by": "job"}, cleanup=cleanup, redone=set(redone),
                         compacted=dict(compacted), snapshot_meta=snapshot_meta)
    write_card(out, card)  # after the commit: it describes what the output now holds
    yield stats
    if drop_stores:  # while the output is still this job's: a next run's stores must stay
        fs.rmtree(fs.join(out, "clips"))
    if lease_owner is not None:
        release_job(fs.join(out, ".lock"), lease_owner)


# ----------------------------------------------------------------------------- pipeline
@dataclass
class RunPaths:
    out: str
    run_id: str
    run_dir: str  # the run's table parts, OUT/_runs/RUN/{table}/
    tmp_shards: str
    scratch: str


def build_pipeline(p: beam.Pipeline, cfg: IngestConfig, paths: RunPaths, retry_failed: bool, workers: int,
                   job_workers: int, job_lease_s: float | None = None) -> None:
    """The whole ingest as one job, its commit included: run it and the output is updated.
    `workers`: worker processes on this machine (local runners); `job_workers`: worker
    processes of the whole job (ingest/politeness.py), which share the per-host download
    budget and write the shards. With `job_lease_s`, the job holds the output itself from its
    first step to its commit (`take_output`)."""
    # every root that reads or writes the output starts from `output` (or waits for it as a
    # side input): nothing runs before the job holds the output
    output = (p | "Output" >> beam.Create([paths.out])
              | "TakeOutput" >> beam.Map(take_output, paths.run_id, job_lease_s))
    found = (p | "Sources" >> beam.Create(cfg.sources)
               | "AfterTakeOutput" >> beam.Map(lambda src, _: src, beam.pvalue.AsSingleton(output))
               | "Discover" >> beam.ParDo(StageFn(Discover)).with_outputs(FAILURES, main="candidates"))
    verdicts = functools.partial(KeywordVerdict, cfg.keywords, {s.name: s.keywords for s in cfg.sources})
    candidates = (found.candidates
                  | "Reshuffle" >> beam.Reshuffle()
                  | "KeywordFilter" >> beam.ParDo(StageFn(verdicts)))

    markers = output | "ResumeMarkers" >> beam.FlatMap(resume_markers, retry_failed)
    kept = (candidates
            | "KeptByKeywords" >> beam.Filter(lambda c: c.keyword_verdict == "keep")
            | "ByVideo" >> beam.Map(lambda c: (c.video_key, c)))
    routed = ({"candidates": kept, "markers": markers}
              | "GroupByVideo" >> beam.CoGroupByKey()
              | "Route" >> beam.FlatMap(route).with_outputs(FAILURES, REDO, main="candidates"))
    # val is never left empty by the draw where the output has two videos with clips: a run
    # whose draw gives val few videos (none, or some that may fail) holds its videos until all
    # are cut and places one where none with clips is in val (val_guard).
    # The flag joins each video before it is cut: a side input read after cutting would part
    # the cutting from the shard writers it streams into (a local runner stores the whole
    # collection between them)
    s = cfg.shards
    drawn = (routed.candidates
             | "DrawnToVal" >> beam.Map(drawn_to_val, s.val_fraction, s.seed)
             | "RunDraws" >> beam.CombineGlobally(
                 lambda ds: functools.reduce(lambda a, b: (a[0] + b[0], a[1] + b[1]), ds, (0, 0))))
    guard = beam.pvalue.AsSingleton(output | "ValGuard" >> beam.Map(val_guard, beam.pvalue.AsSingleton(drawn),
                                                                    s.val_fraction))
    processor = functools.partial(VideoProcessor, cfg.download, cfg.clips, cfg.filters.heuristics,
                                  paths.out, paths.scratch, job_workers=job_workers)
    # candidates cut, and videos cut by an earlier run that was stopped before it committed loaded
    cut = (routed.candidates
           | "HoldFlag" >> beam.Map(lambda item, g: (item, g["hold"]), guard)
           | "DownloadAndCut" >> beam.ParDo(StageFn(functools.partial(CutOrLoad, processor)))
           .with_outputs(FAILURES, main="videos"))
    videos = cut.videos

    if cfg.filters.quality.mode != "off":
        from genie_pipeline.filtering.quality import ScoreQuality

        videos = videos | "ScoreQuality" >> ScoreQuality(cfg.filters.quality, workers)
    split = videos | "AssignSplit" >> beam.FlatMap(split_or_hold, s.val_fraction, s.seed).with_outputs(
        HELD, main="videos")
    held = (split[HELD]
            | "HoldVideos" >> beam.Map(lambda v: (None, v))
            | "AllHeld" >> beam.GroupByKey()
            | "GuaranteedVal" >> beam.FlatMap(guaranteed_val, s.val_fraction, s.seed, guard))
    videos = (split.videos, held) | "SplitVideos" >> beam.Flatten()

    # shards: written as videos are cut, in the cutting bundle (WriteAsCut); what a bundle
    # cannot mix goes in parts to every writer (one per worker of the job), and what those
    # leave unfinished to one writer per split
    spec = cfg.clips.spec
    live = (split.videos
            | "WriteAsCut" >> beam.ParDo(WriteAsCut(paths.tmp_shards, paths.run_id, s, spec))
            .with_outputs(MANIFEST, LEFTOVER, main="shards"))
    written = ((live[LEFTOVER], held) | "LeftoversAndHeld" >> beam.Flatten()
               | "SpreadVideos" >> beam.FlatMap(to_writers, spread_chunk(s), job_workers)
               | "ToWriters" >> beam.GroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShards(paths.tmp_shards, paths.run_id, s, spec, leftovers=True))
               .with_outputs(MANIFEST, LEFTOVER, main="shards"))
    earlier_tails = output | "OldTails" >> beam.FlatMap(old_tails, s)
    tails = ((written[LEFTOVER] | "LeftoversBySplit" >> beam.Map(lambda v: (v.split, v)), earlier_tails)
             | "AllTails" >> beam.Flatten()
             | "GroupLeftovers" >> beam.GroupByKey()
             | "WriteTails" >> beam.ParDo(WriteShards(paths.tmp_shards, paths.run_id, s, spec, leftovers=False))
             .with_outputs(MANIFEST, COMPACTED, main="shards"))
    # curation decided over the whole run, applied to the rows and the shards already written
    decisions = curation_decisions(p, videos, output, cfg.filters.dedupe, s)
    sharded = ((live[MANIFEST], written[MANIFEST], tails[MANIFEST]) | "ShardedRows" >> beam.Flatten()
               | "RowByKey" >> beam.Map(lambda r: (r["key"], r)))
    curated = ({"row": sharded, "decision": decisions}
               | "GroupDecisions" >> beam.CoGroupByKey()
               | "ApplyDecisions" >> beam.FlatMap(apply_decision).with_outputs(PURGE, REJECTED, main="rows"))
    shards = ({"shard": ((live.shards, written.shards, tails.shards) | "AllShards" >> beam.Flatten()
                         | "ShardByName" >> beam.Map(lambda r: (os.path.basename(r.path), r))),
               "drop": curated[PURGE]}
              | "GroupPurges" >> beam.CoGroupByKey()
              | "PurgeShards" >> beam.FlatMap(purge_shard))

    failures = (found[FAILURES], routed[FAILURES], cut[FAILURES]) | "AllFailures" >> beam.Flatten()
    rejected = videos | "RejectedClips" >> beam.FlatMap(lambda v: [c.row() for c in v.clips if not c.kept])
    vrows = ({"videos": videos | "VideoByKey" >> beam.Map(lambda v: (v.video_key, v)),
              "failures": (failures | "VideoFailures" >> beam.Filter(lambda f: f.stage != "discover")
                           | "FailureByKey" >> beam.Map(lambda f: (f.video_key, f))),
              "rejected": curated[REJECTED] | "RejectedByVideo" >> beam.Map(lambda vkey: (vkey, 1))}
             | "GroupVideoRows" >> beam.CoGroupByKey()
             | "VideoRows" >> beam.FlatMap(video_rows))
    manifest = (curated.rows, rejected) | "ManifestRows" >> beam.Flatten()
    tables = {"candidates": candidates, "failures": failures, "videos": vrows, "manifest": manifest}
    parts = ([rows | f"Write{t.title()}" >> beam.ParDo(WriteParts(fs.join(paths.run_dir, t), t, paths.run_id))
              for t, rows in tables.items()]
             | "AllParts" >> beam.Flatten())
    # this run's own staging only: a later run's must survive this job's commit
    cleanup = [paths.run_dir, paths.tmp_shards, fs.join(paths.out, "_commit", paths.run_id)]
    (output
     | "CommitRun" >> beam.FlatMap(commit_job, beam.pvalue.AsList(parts), beam.pvalue.AsList(shards),
                                   beam.pvalue.AsList(routed[REDO]), beam.pvalue.AsList(tails[COMPACTED]),
                                   paths.out, paths.run_id, spec, cleanup,
                                   paths.run_id if job_lease_s is not None else None,
                                   not s.keep_clip_store and cfg.filters.quality.mode == "off",
                                   {"command": snapshots.command_line(sys.argv),
                                    "config_sha256": snapshots.config_hash(cfg)}, card_details(cfg)))


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


def preflight(cfg: IngestConfig, beam_args: list[str]) -> None:
    """What can be found wrong before an ingest starts (PreflightError): a remote runner
    without its options or given paths on this machine, a source that cannot work, a bucket
    output that cannot be written (missing, unreachable, no credentials)."""
    q = cfg.filters.quality
    # every path the workers read or write
    paths = {"output.dir": cfg.output.dir, "download.cookiefile": cfg.download.cookiefile,
             "download.proxy_file": cfg.download.proxy_file,
             "filters.quality.model": q.model if q.mode != "off" else None}
    for i, s in enumerate(cfg.sources):
        paths.update({f"sources.{i}.{k}": getattr(s, k) for k in ("root", "glob", "path") if hasattr(s, k)})
    check_remote_run(cfg.runner, beam_args, paths, q.device if q.mode != "off" else None)
    check_secret_files(cfg.download)
    check_pot_provider(cfg.download)
    job_worker_processes(cfg.runner, beam_args, cfg.download.job_workers)  # the job's size can be read
    check_sources(cfg.sources)
    if fs.is_remote(cfg.output.dir):  # a local one that cannot be written stops as the machine's error
        try:
            fs.check_writable(cfg.output.dir)
        except fs.StorageError as e:
            raise PreflightError("output.dir", str(e)) from None


def run_ingest(cfg: IngestConfig, extra_beam_args: list[str] | None = None,
               retry_failed: bool = False, detach: bool = False) -> dict:
    """Run the ingest into cfg.output.dir (the job commits it); returns the output's stats.json.

    Videos already done (or failed, unless `retry_failed`) are skipped; `extra_beam_args` are
    Beam pipeline flags. With `detach` (or Dataflow's `--template_location`), returns
    `{"run_id", "submitted": True}` once the job is submitted: a flex-template launcher exits
    then, and the job commits itself. Raises shards.fs.OutputBusy if another run holds the
    output, and shards.reader.DataError if it holds clips of another spec than cfg.clips."""
    objstore.configure(list(cfg.runner.options) + list(extra_beam_args or []))
    preflight(cfg, extra_beam_args or [])
    out = cfg.output.dir
    if not fs.is_remote(out):
        out = os.path.abspath(out)
    check_spec(out, cfg.clips.spec)
    if fs.is_remote(out) and (detach or _template_location(cfg, extra_beam_args or [])):
        return _submit_job(cfg, out, extra_beam_args, retry_failed)
    with fs.output_lock(out, "ingest"):
        return _run_ingest(cfg, out, extra_beam_args, retry_failed, detach)


def _template_location(cfg: IngestConfig, extra_beam_args: list[str]) -> str | None:
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    return PipelineOptions(list(cfg.runner.options) + list(extra_beam_args)).view_as(GoogleCloudOptions).template_location


def _submit_job(cfg: IngestConfig, out: str, extra_beam_args: list[str] | None, retry_failed: bool) -> dict:
    """Submit a job that outlives this process (`--detach`, a flex template's
    `--template_location`) into the bucket `out`. The job holds the output itself: it takes
    the lease in its first step and frees it at its commit (`take_output`, `commit_job`), so
    this launcher holds nothing and touches none of the output's staging (a flex launcher
    only stages the job, which Dataflow starts after it exits). It refuses early, with
    OutputBusy, where a run holds the output now; two launches that race past this check
    leave one job that its first step refuses."""
    held = live_holder(fs.join(out, ".lock"))
    if held is not None:
        raise fs.busy(out)(describe(held))
    p, _, _, paths = prepare_job(cfg, out, extra_beam_args, retry_failed, job_lease=True)
    p.run()
    print(f"ingest: job {paths.run_id} submitted; from its first step it holds {out}/.lock (output.job_lease_h "
          "at most) and it commits the output when it finishes", file=sys.stderr, flush=True)
    return {"run_id": paths.run_id, "submitted": True}


def clean_staging(out: str, run_id: str) -> None:
    """Finish a commit a killed run left half-done (shards/commit.py recover) and drop the
    staging (table parts, shards, commit work) of every run but `run_id`: runs stopped before
    their commit, or a detached job whose lease lapsed (its commit refuses). Their clip stores
    stay: the job resumes from them. Only the holder of the output's lock may call it."""
    recover(out)
    for parent in (fs.join(out, "_runs"), fs.join(out, "_commit"), fs.join(out, "shards", "_tmp")):
        for name in _children(parent):
            if name.removeprefix("staged-") != run_id:  # _commit/staged-RUN is RUN's too
                fs.rmtree(fs.join(parent, name))
                fs.remove(fs.join(parent, name))  # a file, not a folder


def _children(folder: str) -> set[str]:
    """The names directly under `folder` (on an object store: the first part of the path of
    each object under it)."""
    if not fs.is_remote(folder):
        return set(os.listdir(fs.local(folder))) if os.path.isdir(fs.local(folder)) else set()
    prefix = folder.rstrip("/") + "/"
    return {path[len(prefix):].split("/", 1)[0] for path in fs.glob(prefix + "**")}


def prepare_job(cfg: IngestConfig, out: str, extra_beam_args: list[str] | None = None,
                retry_failed: bool = False, job_lease: bool = False) -> tuple[beam.Pipeline, Any, int, RunPaths]:
    """The ingest job into `out`, built and not started: (pipeline, runner, local workers,
    paths). Running it to its end updates the output: the commit is its last step. Without
    `job_lease`, the caller holds the output (fs.output_lock), and this finishes a commit a
    killed run left half-done and drops other runs' staging (`clean_staging`); with it, the
    job does both in its first step, after taking the output's lease under its run id
    (`take_output`), and frees the lease at its commit."""
    fs.makedirs(out)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    paths = RunPaths(out=out, run_id=run_id, run_dir=fs.join(out, "_runs", run_id),
                     tmp_shards=fs.join(out, "shards", "_tmp", run_id),
                     scratch=cfg.download.scratch_dir or os.path.join(out if not fs.is_remote(out) else "/tmp", "_scratch"))
    if not job_lease:
        clean_staging(out, run_id)
    for d in (paths.run_dir, paths.tmp_shards, fs.join(out, "clips"), fs.join(out, "shards")):
        fs.makedirs(d)
    runner, options, workers = pipeline_options(cfg.runner, extra_beam_args or [])
    job_workers = job_worker_processes(cfg.runner, extra_beam_args or [], cfg.download.job_workers)
    p = beam.Pipeline(runner=runner, options=options)
    build_pipeline(p, cfg, paths, retry_failed, workers, job_workers,
                   cfg.output.job_lease_h * 3600 if job_lease else None)
    return p, runner, workers, paths


def _run_ingest(cfg: IngestConfig, out: str, extra_beam_args: list[str] | None, retry_failed: bool,
                detach: bool) -> dict:
    with run_log(out, "ingest") as log:
        stats = _run_logged(cfg, out, extra_beam_args, retry_failed, detach)
        if not stats.get("submitted"):
            log.write(summary_table(stats) + "\n")
        return stats


@contextlib.contextmanager
def run_log(out: str, what: str):
    """Everything this process writes to stderr during the run, also kept in
    `OUT/logs/WHAT-YYYYmmddTHHMMSS.log` (written when the run ends, however it ends; a
    bucket output gets it too). Yields the log, to add what is printed elsewhere."""
    import io

    buf = io.StringIO()

    class Tee(io.TextIOBase):
        def __init__(self, stream):
            self.stream = stream

        def write(self, text):
            buf.write(text)
            return self.stream.write(text)

        def flush(self):
            self.stream.flush()

        def isatty(self):
            return self.stream.isatty()

        def fileno(self):
            return self.stream.fileno()

    name = f"{what}-{time.strftime('%Y%m%dT%H%M%S')}.log"
    before = sys.stderr
    sys.stderr = Tee(before)
    try:
        yield buf
    finally:
        sys.stderr = before
        with contextlib.suppress(Exception):  # a log that cannot be written never fails the run
            fs.makedirs(fs.join(out, "logs"))
            fs.write_bytes(fs.join(out, "logs", name), buf.getvalue().encode())


def _run_logged(cfg: IngestConfig, out: str, extra_beam_args: list[str] | None, retry_failed: bool,
                detach: bool) -> dict:
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    wall0, cpu0 = time.time(), cpu_seconds()
    already = table_rows(out, "videos")
    print(f"ingest: {len(cfg.sources)} source(s) → {out} ({already} video(s) recorded by earlier runs)",
          file=sys.stderr, flush=True)
    p, runner, workers, paths = prepare_job(cfg, out, extra_beam_args, retry_failed)
    if detach or p.options.view_as(GoogleCloudOptions).template_location:
        # a local output (a bucket's job holds it itself: _submit_job): no remote runner can
        # write it, and the local runner runs the whole job in p.run(), under our lock
        p.run()
        print(f"ingest: job {paths.run_id} submitted; it commits {out} when it finishes", file=sys.stderr, flush=True)
        return {"run_id": paths.run_id, "submitted": True}
    try:
        result = _run_job(p, runner, already=already)
    except Exception as e:
        env = fs.environment_error(e) or _worker_environment_error(e)
        if env is None:
            raise
        # nothing is committed; the clip stores already written are picked up by the next run
        raise env from None
    counters = job_counters(result)
    # the job committed the run; a launcher still there adds what only it knows
    merged = read_stats(out)
    merged["last_run"] = {**merged.get("last_run", {}), "wall_s": round(time.time() - wall0, 2),
                          "cpu_s": round(cpu_seconds() - cpu0, 2), "counters": counters, "runner": cfg.runner.name,
                          "workers": workers}
    fs.write_bytes(fs.join(out, "stats.json"), json.dumps(merged, indent=2, sort_keys=True).encode())
    # its contact sheets show rejected clips only where the clip store was kept (the job
    # deletes it at its commit otherwise). The run is committed by now; a report that cannot
    # be drawn must not fail it.
    report = fs.join(out, REPORT)
    if not changed_output(counters) and fs.exists(report):
        # its 2-3 s of drawing (matplotlib) would redraw the same page
        print(f"ingest: report {report} (nothing new this run: not redrawn)", file=sys.stderr, flush=True)
    else:
        try:
            if cfg.output.report == "background" and not fs.is_remote(out):
                # its 1-3 s of matplotlib need not hold the run: the output is committed
                log = os.path.join(out, "logs", f"report-{time.strftime('%Y%m%dT%H%M%S')}.log")
                os.makedirs(os.path.dirname(log), exist_ok=True)
                write_report_detached(out, report_thresholds(cfg.filters), log)
                print(f"ingest: report {report} (being drawn in the background; log {log})", file=sys.stderr,
                      flush=True)
            else:
                print(f"ingest: report {write_report(out, report_thresholds(cfg.filters))}", file=sys.stderr,
                      flush=True)
        except Exception as e:  # noqa: BLE001 — `genie-pipeline report OUT` redraws it and shows the error
            print(f"ingest: report not written ({type(e).__name__}: {e}); the run is committed", file=sys.stderr,
                  flush=True)
    if not cfg.download.keep and cfg.download.scratch_dir is None:
        fs.rmtree(paths.scratch)
    return merged


@contextlib.contextmanager
def _interruptible_local_run():
    """An interrupted local job (KeyboardInterrupt: Ctrl-C or SIGTERM, see cli.interrupts)
    stops in one piece: its worker processes are killed (they ignore SIGINT when started
    from the CLI) and the runner's threads, losing them, stay silent instead of printing a
    traceback each; the output lock is released on the way out."""
    before = threading.excepthook
    interrupted = threading.Event()

    def hook(args):
        if not interrupted.is_set():
            before(args)

    threading.excepthook = hook
    try:
        yield
    except KeyboardInterrupt:
        interrupted.set()
        # the runner logs each lost worker connection with its traceback while it closes them
        logging.getLogger("apache_beam").disabled = True
        _kill_children()
        raise
    finally:
        if not interrupted.is_set():
            threading.excepthook = before


def _kill_children() -> None:
    """SIGKILL this process's child processes (the local runner's workers): they hold no
    lock and their clip stores are written whole or not at all."""
    pids = set()
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            continue
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def job_counters(result) -> dict[str, int]:
    """The job's counters by name, summed over the steps that count them: Beam reports one
    per step, and `clips_sharded` is counted up where shards are written and down where
    curation purges clips from them (keyed by name alone, the last step's value won, and a
    run showed "clips sharded -3")."""
    counters: dict[str, int] = {}
    for m in result.metrics().query()["counters"]:
        if m.key.metric.namespace == NS:
            counters[m.key.metric.name] = counters.get(m.key.metric.name, 0) + m.committed
    return counters


# the stages of one video (Failure.stage) after discovery
VIDEO_STAGES = ("download", "probe", "decode", "cut", "encode")


def changed_output(counters: dict[str, int]) -> bool:
    """Whether a committed run changed what the report shows, from the job's counters: a video
    cut (or loaded from its store) or failed, a shard written or purged. A run that found every
    video done already changes none of them (discovery's failures, recorded again by every
    run, replace the same rows)."""
    return any(counters.get(k) for k in ("videos_done", "shards_written", "shards_purged", "clips_cut",
                                          *(f"failed_{stage}" for stage in VIDEO_STAGES)))


def _run_job(p: beam.Pipeline, runner: Any, already: int):
    """Run the job to its end and return Beam's result. Where the workers run on this machine
    (FnApiRunner, DirectRunner) they report progress through a file the launcher tails
    (ingest/progress.py); elsewhere (Dataflow) the job's Beam counters are the progress."""
    if isinstance(runner, str) and runner != "DirectRunner":
        result = p.run()
        result.wait_until_finish()
        return result
    with tempfile.TemporaryDirectory(prefix="genie-progress-") as tmp, _interruptible_local_run(), \
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
        *((label, c[k]) for k, label in (("identity_walls", "  walls met (identity rested)"),
                                         ("proxy_failures", "  proxy failures"),
                                         ("proxies_retired", "  proxies retired"),
                                         ("identity_gave_up", "  out of identities")) if c.get(k)),
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
    for k in ("candidates", "videos_done", "videos_failed", "videos_deferred", "clips", "clips_kept", "clips_train", "clips_val",
              "hours_in", "hours_out"):
        lines.append(f"{k:<34}{stats.get(k, 0):>10}")
    lines.append(f"{'wall s / cpu s':<34}{run.get('wall_s', 0):>5} / {run.get('cpu_s', 0)}")
    if stats.get("clips_kept", 0) and not stats.get("clips_val", 0) and stats.get("videos_done", 0) >= 2:
        lines.append(f"\nwarning: no validation clips among {stats['videos_done']} videos (shards.val_fraction "
                     "is 0, or curation rejected the val video's clips): `eval` needs val shards. Ingest into a "
                     "new output with --set shards.val_fraction=0.3 (or more videos)")
    return "\n".join(lines)
