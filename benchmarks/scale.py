"""Scale of the output's bookkeeping (issue 9 part 6): synthetic run records, no video.

For N videos of 30 clips each (10^4, 10^5, 10^6 by default), an output is made the way a job
leaves it: N videos' table parts staged and published by `commit_parts` (the job's last step)
with tiny stand-in shards (2000 clips each). Then, each in a fresh process so its peak RSS is
its own:

- `commit_first`: the commit of that run of N videos (its parts and shards staged first by
  another process, as a job's workers leave them);
- `commit_next`: the commit of a further run of 1000 videos onto the N (what every incremental
  run pays: old rows are not loaded, only the totals' columns streamed);
- `resume`: the resume markers a worker reads from the output (done keys, staged stores);
- `graph`: the serialized job request (`Pipeline.to_runner_api()`) built for that output;
- `refilter_tables`: refilter's table side (threshold, streamed duplicate re-election, every
  manifest part decided and written again);
- `curate_next`: curation (the near-duplicate join) of that further run onto the N videos,
  with 1000 planted copies of committed clips that it must find.

And on its own (`--first-run CLIPS...`, recorded under `first_run`): `first_run`, a first
run's curation of CLIPS new clips (1000 planted copies, a crowd of 1000 look-alikes) through
the job's join on Beam's local runner, with the partitions' sizes, the partitions a query
reaches and the bytes shuffled (from the job's metrics), wall time and peak RSS.

Goals: no process above 1 GiB at 10^6 videos; the job request flat in the number of done
videos; time linear. Results in benchmarks/results/scale.json.

    python benchmarks/scale.py [--videos 10000 100000 1000000] [--work DIR]
    python benchmarks/scale.py --first-run 100000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIPS_PER_VIDEO = 30
SHARD_CLIPS = 2000
NEXT_RUN = 1000
PLANTED = 1000  # clips of the next run that copy a committed clip (curation must find each)
CROWD = 1000  # look-alikes in the first run (first_run): one fingerprint, a few bits apart


# ------------------------------------------------------------------------- synthetic rows
def write_run(out: str, run_id: str, first: int, n_videos: int) -> tuple[dict, list]:
    """Stage one run's parts (columns built whole, 100k rows a part) and stand-in shards;
    returns (parts by table, shard records)."""
    import numpy as np
    import pyarrow as pa

    from genie_pipeline.shards.commit import PART_ROWS, _write_table, part_file
    from genie_pipeline.shards.records import SCHEMAS, ShardRecord

    staged = os.path.join(out, "_runs", run_id)
    parts: dict[str, list[str]] = {t: [] for t in SCHEMAS}
    step = PART_ROWS // CLIPS_PER_VIDEO
    for lo in range(first, first + n_videos, step):
        hi = min(first + n_videos, lo + step)
        vids = np.arange(lo, hi)
        vkeys = [f"syn_v{v:08d}" for v in vids]
        videos = {"video_key": vkeys, "video_id": [k[4:] for k in vkeys], "source": ["syn"] * len(vids),
                  "title": ["a platformer run"] * len(vids), "status": ["done"] * len(vids),
                  "n_clips": [CLIPS_PER_VIDEO] * len(vids), "n_kept": [CLIPS_PER_VIDEO] * len(vids),
                  "seconds_in": [600.0] * len(vids), "seconds_out": [480.0] * len(vids), "error": [None] * len(vids),
                  "split": ["train"] * len(vids)}
        cand = {"video_key": vkeys, "source": ["syn"] * len(vids), "video_id": videos["video_id"],
                "title": videos["title"], "keyword_verdict": ["keep"] * len(vids)}
        n = len(vids) * CLIPS_PER_VIDEO
        clip_v = np.repeat(vids, CLIPS_PER_VIDEO)
        clip_i = np.tile(np.arange(CLIPS_PER_VIDEO), len(vids))
        keys = [f"syn_v{v:08d}_{i * 16000:09d}" for v, i in zip(clip_v, clip_i)]
        rng = np.random.default_rng(lo)
        dup = rng.random(n) < 0.05  # 5 % duplicates of the clip before them
        manifest = {"key": keys, "video_key": [f"syn_v{v:08d}" for v in clip_v], "video_id": [f"v{v:08d}" for v in clip_v],
                    "source": ["syn"] * n, "title": ["a platformer run"] * n, "start_s": clip_i * 16.0,
                    "duration_s": [16.0] * n, "n_frames": [160] * n, "bytes": [90_000] * n, "split": ["train"] * n,
                    "kept": ~dup, "reason": np.where(dup, "duplicate", "").tolist(),
                    "shard": [f"train-{run_id}-00000000-{(j // SHARD_CLIPS) % 10000:04d}.tar" for j in range(n)],
                    "quality_score": rng.random(n),
                    "fingerprint": [f"v3:{x:016x}{y:016x}" for x, y in zip(rng.integers(0, 2**63, n).tolist(),
                                                                            rng.integers(0, 2**63, n).tolist())],
                    "duplicate_of": [keys[j - 1] if dup[j] and j else None for j in range(n)]}
        for table, cols in (("videos", videos), ("candidates", cand), ("manifest", manifest)):
            schema = SCHEMAS[table]
            arrays = [pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(len(cols["video_key"] if table != "manifest" else keys), f.type)
                      for f in schema]
            path = part_file(os.path.join(staged, table), run_id, "syn" if table == "candidates" else "")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_table(path, table, pa.Table.from_arrays(arrays, schema=schema))
            parts[table].append(path)
    records = []
    shard_tmp = os.path.join(out, "shards", "_tmp", run_id)
    os.makedirs(shard_tmp, exist_ok=True)
    n_clips = n_videos * CLIPS_PER_VIDEO
    for s in range(-(-n_clips // SHARD_CLIPS)):
        path = os.path.join(shard_tmp, f"train-{run_id}-{s // 10000:08x}-{s % 10000:04d}.tar")
        Path(path).write_bytes(b"")
        k = min(SHARD_CLIPS, n_clips - s * SHARD_CLIPS)
        records.append(ShardRecord(path=path, split="train", order=str(s), keys=[],
                                   stats={"n_samples": k, "n_videos": k // CLIPS_PER_VIDEO, "bytes": 90_000 * k,
                                          "seconds": 16.0 * k, "sha256": ""}))
        Path(path[:-4] + ".stats.json").write_text("{}")
    return parts, records


# ------------------------------------------------------------------------------- steps
def step_stage(out: str, first: int, n: int, run_id: str) -> dict:
    """What a job's workers leave for the commit: parts and shards (not measured as the commit)."""
    parts, records = write_run(out, run_id, first, n)
    Path(out, "_runs", run_id, "staged.json").write_text(json.dumps({"parts": parts,
                                                                      "records": [r.to_json() for r in records]}))
    return {"s": 0.0}


def step_commit(out: str, run_id: str) -> dict:
    from genie_pipeline.shards.commit import commit_parts
    from genie_pipeline.shards.config import ClipsConfig
    from genie_pipeline.shards.records import ShardRecord

    staged = json.loads(Path(out, "_runs", run_id, "staged.json").read_text())
    parts, records = staged["parts"], [ShardRecord(**r) for r in staged["records"]]
    t0 = time.perf_counter()
    stats = commit_parts(out, run_id=run_id, parts=parts, shard_records=records, spec=ClipsConfig().spec,
                         sources=["syn"], run_stats={"run_id": run_id}, cleanup=[os.path.join(out, "_runs", run_id)],
                         redone=set())
    return {"s": time.perf_counter() - t0, "clips_total": stats["clips"], "videos_total": stats["videos_done"]}


def step_resume(out: str) -> dict:
    from genie_pipeline.ingest.pipeline import resume_markers

    t0 = time.perf_counter()
    n = sum(1 for _ in resume_markers(out, retry_failed=False))
    return {"s": time.perf_counter() - t0, "markers": n}


def step_graph(out: str) -> dict:
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import prepare_job

    cat = os.path.join(out, "..", "catalog.jsonl")
    Path(cat).write_text(json.dumps({"id": "new", "url": "https://example.org/new.mp4", "title": "x"}) + "\n")
    cfg = parse_config({"sources": [{"type": "catalog", "name": "syn", "path": cat, "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1}, "output": {"dir": out}})
    t0 = time.perf_counter()
    p, *_ = prepare_job(cfg, out)
    size = len(p.to_runner_api().SerializeToString())
    return {"s": time.perf_counter() - t0, "request_bytes": size}


def step_refilter_tables(out: str) -> dict:
    """Refilter's table side as `refilter` runs it (threshold 0.5): the streamed duplicate
    re-election, then each manifest part decided and written again. The shard side, which
    copies the samples of each shard that loses clips one shard at a time, needs real tars
    and is left out."""
    from genie_pipeline.filtering.quality.threshold import _rows, _score, apply_threshold
    from genie_pipeline.shards.commit import _row_batches, _write_streamed, part_file
    from genie_pipeline.shards.dedupe import apply_reelections, reelect
    from genie_pipeline.shards.reader import table_files

    t0 = time.perf_counter()
    new_rep_of = reelect(lambda: _rows(out, None, 0.5), lambda r: _score(r) is None or _score(r) >= 0.5)
    work = os.path.join(out, "_refilter")
    restored = {"n": 0}

    def decided(path):  # what reshard's second pass does to each part
        for rows in _row_batches([path]):
            apply_threshold(rows, 0.5)
            restored["n"] += apply_reelections(rows, new_rep_of)
            yield rows

    n = sum(_write_streamed(part_file(work, "20260101T000002-000003"), "manifest", decided(p))
            for p in table_files(out, "manifest"))
    return {"s": time.perf_counter() - t0, "rows": n, "groups_reelected": len(new_rep_of), "restored": restored["n"]}


def step_curate(out: str) -> dict:
    """Curation of a further run of NEXT_RUN videos (30 clips each, random fingerprints, PLANTED
    of them copies of committed clips within 20 bits) onto the output, by the functions the
    job's workers run, in one process: every committed manifest part read into its partitions'
    entries (spooled to disk, as the job's shuffle does), then the partitions matched one after
    another, then the two rounds. A job runs the parts and the partitions on many workers, so
    its peak per worker is at most this process's."""
    import pickle

    import numpy as np

    from genie_pipeline.filtering.config import DedupeConfig
    from genie_pipeline.ingest.pipeline import committed_entries
    from genie_pipeline.shards.dedupe import (ENTRY, QUERY, RunClips, decide, entries_in, join_parts, match, salted,
                                              salts)
    from genie_pipeline.shards.reader import iter_part_batches, table_files, table_rows

    d = DedupeConfig().max_distance
    rng = np.random.default_rng(1)
    parts = table_files(out, "manifest")
    first = next(iter_part_batches(parts[0], ["key", "kept", "fingerprint"])).to_pylist()
    originals = [r for r in first if r["kept"]][:PLANTED]
    new = []
    for v in range(NEXT_RUN):
        for c in range(CLIPS_PER_VIDEO):
            j = v * CLIPS_PER_VIDEO + c
            if j < len(originals):
                bits = int(originals[j]["fingerprint"][3:], 16) ^ sum(1 << int(b) for b in rng.permutation(128)[:20])
            else:
                bits = int.from_bytes(rng.bytes(16), "little")
            new.append({"key": f"new_v{v:06d}_{c:03d}", "video_key": f"new_v{v:06d}", "duration_s": 16.0,
                        "kept": True, "quality_score": float(rng.random()), "fingerprint": f"v3:{bits:032x}"})
    t0 = time.perf_counter()
    run = RunClips.of(new, d, committed=table_rows(out, "manifest"))
    spool = Path(out, "_spool")
    spool.mkdir()
    files, entries_n = {}, {}

    def put(key, value):  # value: (tag, batch)
        name = "-".join(map(str, key))
        if key not in files:
            files[key] = open(spool / name, "ab")
        pickle.dump(value, files[key])
        entries_n[key] = entries_n.get(key, 0) + entries_in(value)

    for path in parts:
        for key, value in committed_entries(path, run, d, []):
            put(key, value)
    for batch in run.batches(new, new=True):
        for key, value in join_parts(batch, d):
            put(key, value)
    for f in files.values():
        f.close()
    split = salts(entries_n)
    t_read = time.perf_counter()

    def load(key):
        with open(spool / "-".join(map(str, key)), "rb") as f:
            while True:
                try:
                    yield pickle.load(f)
                except EOFError:
                    return

    edges, slowest = {}, 0.0
    for key in files:
        t = time.perf_counter()
        shares: dict[tuple, list] = {}
        for value in load(key):
            for k, v in salted((key, value), split):
                shares.setdefault(k, []).append(v)
        for k, values in shares.items():
            entries, queries = [b for tag, b in values if tag != QUERY], [b for tag, b in values if tag != ENTRY]
            for q, edge in match(k, entries, queries, d):
                edges.setdefault(q, []).append(edge)
        slowest = max(slowest, time.perf_counter() - t)
    t_match = time.perf_counter()
    decided = decide(edges)
    t_end = time.perf_counter()
    shutil.rmtree(spool)
    planted = {f"new_v{j // CLIPS_PER_VIDEO:06d}_{j % CLIPS_PER_VIDEO:03d}": r["key"] for j, r in enumerate(originals)}
    return {"s": t_end - t0, "read_s": t_read - t0, "match_s": t_match - t_read, "slowest_partition_s": slowest,
            "band_bits": next(iter(entries_n))[1], "partitions": len(entries_n),
            "largest_partition_entries": max(entries_n.values()),
            "new_clips": len(new), "planted_copies": len(planted),
            "planted_found": sum(decided.get(k) == v for k, v in planted.items()),
            "other_duplicates": sum(k not in planted for k in decided)}


def step_first_run(work: str, n_clips: str, layout: str = "") -> dict:
    """A first run's curation through the job's own join (`curation_decisions`) on Beam's
    local runner (FnApiRunner, in this process), onto an empty output: `n_clips` new clips
    (30 a video, random fingerprints), PLANTED of them copies (within 20 bits) of clips of
    other videos, and a crowd of CROWD look-alikes (one a video, within 4 bits of one
    fingerprint, so within 8 of each other). Every planted pair must be decided (one names
    the other), every crowd member but one must name a crowd member, and nothing else may
    be a duplicate (a chance match). The job's metrics give the partitions' sizes (entries
    and queries), the pickled bytes that enter the partition GroupByKey, and the query rows
    (over the clips: the partitions a query reaches). `layout` "w,s,P" replaces the one
    `layout_for` chooses (to compare layouts on the same run)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from genie_pipeline.filtering.config import DedupeConfig
    from genie_pipeline.ingest.pipeline import curation_decisions
    from genie_pipeline.shards import dedupe
    from genie_pipeline.shards.config import ShardsConfig

    chosen = dedupe.layout_for(128, int(n_clips), int(n_clips), DedupeConfig().max_distance)
    if layout:
        chosen = tuple(int(x) for x in layout.split(","))
        dedupe.layout_for = lambda *_: chosen  # the runner runs in this process
    n = int(n_clips)
    n_videos = -(-n // CLIPS_PER_VIDEO)
    assert n_videos >= 2 * PLANTED and n_videos >= CROWD
    # clip 1 of videos 0.. is the crowd; clip 2 of videos 0.. copies clip 3 of videos PLANTED..
    crowd = [v * CLIPS_PER_VIDEO + 1 for v in range(CROWD)]
    planted = {frozenset((_fr_key(v * CLIPS_PER_VIDEO + 2), _fr_key((PLANTED + v) * CLIPS_PER_VIDEO + 3))): False
               for v in range(PLANTED)}
    out = os.path.join(work, "first-run-out")  # empty: a first run
    os.makedirs(out, exist_ok=True)
    found = os.path.join(work, "first-run-decisions.jsonl")
    t0 = time.perf_counter()
    p = beam.Pipeline(runner=FnApiRunner())
    # the clip rows are made on the workers (as the job's decode makes them), not held here
    videos = (p | beam.Create(range(n_videos)) | beam.Reshuffle()
              | beam.Map(_fr_video, n, PLANTED, CROWD))
    decided = curation_decisions(p, videos, out, DedupeConfig(), ShardsConfig())
    (decided | beam.Map(json.dumps) | beam.combiners.ToList()
     | beam.Map(lambda lines: Path(found).write_text("\n".join(lines))))
    result = p.run()
    result.wait_until_finish()
    wall = time.perf_counter() - t0
    metrics = result.metrics().query()
    counters = {m.key.metric.name: m.committed for m in metrics["counters"]}
    dists = {m.key.metric.name: m.committed for m in metrics["distributions"]}
    crowd_keys = {_fr_key(i) for i in crowd}
    dup = [json.loads(line) for line in Path(found).read_text().splitlines() if line]
    chance, crowd_named = 0, 0
    for clip, (reason, rep) in dup:
        pair = frozenset((clip, rep))
        if pair in planted:
            planted[pair] = True
        elif clip in crowd_keys and rep in crowd_keys:
            crowd_named += 1
        else:
            chance += 1
    entries, queries = dists["dedupe_partition_entries"], dists["dedupe_partition_queries"]
    return {"s": wall, "new_clips": n, "layout_w_s_p": list(chosen), "layout_forced": bool(layout),
            "partitions": entries.count, "partition_entries_max": entries.max,
            "partition_entries_mean": round(entries.sum / entries.count, 1),
            "partition_entries_max_over_mean": round(entries.max / (entries.sum / entries.count), 2),
            "partition_queries_max": queries.max, "partition_queries_mean": round(queries.sum / queries.count, 1),
            "partitions_a_query_reaches": round(counters["dedupe_query_rows"] / n, 2),
            "shuffle_bytes": counters["dedupe_shuffle_bytes"],
            "shuffle_bytes_per_clip": round(counters["dedupe_shuffle_bytes"] / n, 1),
            "planted_copies": PLANTED, "planted_found": sum(planted.values()),
            "crowd": CROWD, "crowd_named_in_crowd": crowd_named, "chance_matches": chance}


def _fr_key(i: int) -> str:
    return f"fr_v{i // CLIPS_PER_VIDEO:07d}_{i % CLIPS_PER_VIDEO:03d}"


def _fr_bits(i: int, salt: str = "") -> int:
    """Clip i's random 128 bits (a hash: a planted copy computes its original's)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"{salt}{i}".encode(), digest_size=16).digest(), "little")


def _fr_video(v: int, n: int, planted: int, crowd: int):
    """Video v of the first run: its clips' rows, fingerprints planted as `step_first_run` says."""
    from types import SimpleNamespace

    import numpy as np

    clips = []
    for i in range(v * CLIPS_PER_VIDEO, min(n, (v + 1) * CLIPS_PER_VIDEO)):
        rng = np.random.default_rng(i)
        fp = _fr_bits(i)
        if v < crowd and i % CLIPS_PER_VIDEO == 1:
            fp = _fr_bits(0, "crowd") ^ sum(1 << int(b) for b in rng.permutation(128)[:rng.integers(0, 5)])
        elif v < planted and i % CLIPS_PER_VIDEO == 2:
            fp = _fr_bits((planted + v) * CLIPS_PER_VIDEO + 3) ^ sum(1 << int(b) for b in rng.permutation(128)[:20])
        clips.append(SimpleNamespace(key=_fr_key(i), video_key=f"fr_v{v:07d}", source="syn",
                                     start_s=16.0 * (i % CLIPS_PER_VIDEO), duration_s=16.0, kept=True,
                                     quality_score=float(rng.random()), fingerprint=f"v3:{fp:032x}", channel=None,
                                     query=None))
    return SimpleNamespace(clips=clips)


STEPS = {"stage": step_stage, "commit": step_commit, "resume": step_resume, "graph": step_graph,
         "refilter_tables": step_refilter_tables, "curate": step_curate,
         "first_run": step_first_run}


def child(step: str, args: list[str]) -> None:
    fn = STEPS[step]
    res = (fn(args[0], int(args[1]), int(args[2]), args[3]) if step == "stage" else
           fn(args[0], args[1]) if step == "commit" else fn(*args) if step == "first_run" else fn(args[0]))
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(res))


def run_child(step: str, *args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, __file__, "--child", step, *map(str, args)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"{step} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def measure(n: int, work: str) -> dict:
    out = os.path.join(work, f"out-{n}")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    row = {"videos": n, "clips": n * CLIPS_PER_VIDEO}
    first, nxt = "20260101T000000-000001", "20260101T000001-000002"
    run_child("stage", out, 0, n, first)
    row["commit_first"] = run_child("commit", out, first)
    run_child("stage", out, n, NEXT_RUN, nxt)
    row["commit_next"] = run_child("commit", out, nxt)
    row["curate_next"] = run_child("curate", out)
    row["resume"] = run_child("resume", out)
    row["graph"] = run_child("graph", out)
    row["refilter_tables"] = run_child("refilter_tables", out)
    row["output_bytes_tables"] = sum(f.stat().st_size for t in ("manifest", "videos", "candidates", "failures")
                                     for f in Path(out, t).glob("*.parquet"))
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(row), flush=True)
    return row


def first_run(sizes: list[int], work: str, out: str, layouts: list[str]) -> None:
    rows = []
    for n in sizes:
        for layout in ["", *layouts]:
            rows.append(run_child("first_run", work, n, *([layout] if layout else [])))
            print(json.dumps(rows[-1]), flush=True)
    result = json.loads(Path(out).read_text()) if Path(out).exists() else {"benchmark": "scale"}
    result["first_run"] = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "cpus": os.cpu_count(),
        "runner": "FnApiRunner (in process)", "planted": PLANTED, "crowd": CROWD, "rows": rows,
        "goals": {"partition_entries_max_over_mean": 2, "peak_rss_mib": 1024, "chance_matches": 0,
                  "planted_found": PLANTED}}
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    ap.add_argument("--first-run", type=int, nargs="+", metavar="CLIPS",
                    help="only the first_run step at these sizes, recorded under first_run in --out "
                         "(the other steps' results are kept)")
    ap.add_argument("--compare-layout", nargs="*", default=[], metavar="W,S,P",
                    help="with --first-run: also run each size with this join layout (18,4,2: "
                         "sub-blocks; 18,1,4: the partitioning before sub-blocks, 4 prefix bits a band)")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="genie-scale-")
    if a.first_run:
        first_run(a.first_run, work, a.out, a.compare_layout)
        return
    rows = [measure(n, work) for n in a.videos]
    big, small = rows[-1], rows[0]
    steps = ("commit_first", "commit_next", "curate_next", "resume", "graph", "refilter_tables")
    peak = {k: max(r[k]["peak_rss_mib"] for r in rows) for k in steps}
    scale = big["videos"] / small["videos"]
    summary = {
        "largest_videos": big["videos"],
        "peak_rss_mib_by_step": peak,
        "goal_peak_rss_mib": 1024,
        "request_bytes_by_videos": {r["videos"]: r["graph"]["request_bytes"] for r in rows},
        "videos_ratio_largest_to_smallest": scale,
        "time_ratio_largest_to_smallest": {k: round(big[k]["s"] / max(small[k]["s"], 1e-9), 1) for k in steps},
    }
    result = {"benchmark": "scale", "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(),
              "cpus": os.cpu_count(), "clips_per_video": CLIPS_PER_VIDEO, "next_run_videos": NEXT_RUN,
              "rows": rows, "summary": summary}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
