"""Ingest cost against a bare decode, measured in one run on the same files.

    python benchmarks/ingest.py [--corpus DIR] [--size small|full] [--baseline TREE] [--rounds N]

`--baseline TREE`: a checkout of the code before a change (`git worktree add /tmp/base main`):
its pipeline runs on the same files in the same run, interleaved with this tree's and with the
bare decodes round after round (every other round in the reverse order), so both ratios see
the same machine (a shared machine's load drifts by tens of per cent within minutes). Each
pipeline run is a fresh process (one warm-up run over one video, then the timed run; each
run's background report waited for), this tree's and the baseline's alike. The result
also holds the per-video path's profile (`profile`: the top costs of VideoProcessor over the
same videos, cProfile, grouped by component) and, with a baseline, whether both outputs hold
the same clips and scores.

Pipeline: keyword filter → shards (no quality classifier) on the sample corpus's decodable
videos read from local paths, Beam FnApiRunner in one process (so this process's CPU time
is all of it), with the default clips section: hard cuts found while decoding
(clips.split_at_cuts), and each clip's fingerprint where the pipeline computes one. Bare
decode: ffmpeg decoding the same files to 10 FPS 160×90 RGB, discarded. Both in CPU seconds
per second of source video; the goal is a ratio ≤ 1.2. Cut detection is also timed alone,
per decoded frame.

Like with like: the pipeline decodes and filters (fps, scale, RGB) on one thread each, as a
throughput job on one worker per core should, so the bare decode runs ffmpeg with one
decoder thread (-threads 1) and one filter thread (-filter_threads 1) too; by default both
would add threads whose synchronisation costs CPU time for the same frames.

`genie-pipeline plan` takes `pipeline_cpu_per_source_s - bare_decode_cpu_per_source_s` as the
part of the ingest that works on decoded 160×90 frames (cuts, heuristics, encode, write) and so
does not depend on the source's format, and adds the decode of the format `download.format`
selects from benchmarks/decode_codecs.py.

The goal is for the cost per second of source: `ratio_without_fixed_overhead` takes out what
a run pays once whatever its size (start-up, the commit), measured by a run over one video;
`ratio` keeps it, so it falls as a corpus grows. The report is drawn by a process of its own
after the run (`output.report: background`), outside the pipeline's CPU seconds:
`fixed_cost_one_video` times it apart with the other parts of a one-video run, and
`ratio_with_the_report_inline` adds it back.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
# the code measured: this tree, or (--profile-only, run by profile_of) a baseline checkout
CODE = Path(os.environ.get("GENIE_BENCH_CODE", ROOT))
sys.path.insert(0, str(CODE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


from genie_pipeline.ingest.pipeline import cpu_seconds as cpu  # noqa: E402


def bare_decode(paths: list[str]) -> float:
    from genie_pipeline.ingest.download import ffmpeg_exe

    c0 = cpu()
    for p in paths:
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-threads", "1", "-filter_threads", "1", "-i", p, "-an",
                        "-vf", "fps=10,scale=160:90:force_original_aspect_ratio=decrease:flags=area,"
                               "pad=160:90:(ow-iw)/2:(oh-ih)/2",
                        "-pix_fmt", "rgb24", "-f", "rawvideo", "-"], check=True, stdout=subprocess.DEVNULL)
    return cpu() - c0


def cut_detection(paths: list[str]) -> tuple[float, int]:
    """CPU seconds of cut detection alone over the decoded frames of `paths` (one video's
    frames in memory at a time), and the number of frames."""
    from genie_pipeline.filtering.shots import find_cuts
    from genie_pipeline.ingest.decode import iter_frames
    from genie_pipeline.shards.config import ClipsConfig

    cfg, spent, frames = ClipsConfig(), 0.0, 0
    for p in paths:
        video = list(iter_frames(p, cfg))
        c0 = cpu()
        find_cuts(video, cfg.fps)
        spent += cpu() - c0
        frames += len(video)
    return spent, frames


# runs in a fresh process with the tree under test first on sys.path: a warm-up run over one
# video (imports, what a long-lived worker pays once), then the timed run; prints its CPU seconds
_PIPELINE = """
import json, os, sys, time
from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import cpu_seconds, run_ingest
one, cat, out = sys.argv[1:4]
def run(path, dest):
    cfg = parse_config({"sources": [{"type": "catalog", "name": "bench", "path": path, "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1}, "output": {"dir": dest}})
    c0, w0 = cpu_seconds(), time.time()
    stats = run_ingest(cfg)
    spent = cpu_seconds() - c0, time.time() - w0, stats
    # the report is drawn by a process of its own after the run: wait for it, or it shares
    # the machine with whatever is timed next
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(dest, "report.html")) and time.time() < deadline:
        time.sleep(0.2)
    return spent
run(one, out + "-warmup")
fixed = run(one, out + "-one")[0]
cpu, wall, stats = run(cat, out)
print("RESULT " + json.dumps({"cpu": cpu, "wall": wall, "fixed": fixed, "clips": stats["clips"],
                              "clips_kept": stats["clips_kept"], "videos_failed": stats["videos_failed"]}))
"""


def pipeline(tree: Path, one: Path, catalog: Path, out: Path) -> dict:
    """CPU seconds of an ingest of `catalog` by the code in `tree` (and of one over `one`, the
    fixed cost), in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", _PIPELINE, str(one), str(catalog), str(out)], cwd=tree, env=env,
                       capture_output=True, text=True)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        raise SystemExit(f"pipeline run from {tree} failed:\n{r.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def _mean_kept_bytes(out: Path) -> float:
    rows = [r for r in pq.read_table(out / "manifest", columns=["kept", "bytes"]).to_pylist() if r["kept"]]
    return sum(r["bytes"] for r in rows) / max(1, len(rows))


# where the per-video path spends: a profiled function's module (and for C calls, their name)
DECODE = "decode (PyAV demux, h264, filter graph fps/scale/RGB)"
_COMPONENTS = [(DECODE, ("ingest/decode.py:", "vpull", "vpush",
                                                                         "to_ndarray", "av.container")),
               ("cut detector (filtering/shots.py)", ("filtering/shots.py",)),
               ("heuristics (filtering/heuristics.py)", ("filtering/heuristics.py",)),
               ("fingerprint (filtering/fingerprint.py)", ("filtering/fingerprint.py",)),
               ("clip encode (x264, shards/clip.py)", ("shards/clip.py", "from_ndarray", "'encode' of 'av.video")),
               ("clip store write (shards/store.py)", ("shards/store.py", "fsync"))]


def profile(paths: list[str], titles: list[str], scratch: Path, top: int = 5) -> dict:
    """cProfile of VideoProcessor (probe, decode, cut detection, heuristics, fingerprint, encode,
    clip store) over `paths`: the `top` functions by own time, and own time per component."""
    import cProfile
    import pstats

    from genie_pipeline.filtering.config import HeuristicsConfig
    from genie_pipeline.ingest.config import DownloadConfig
    from genie_pipeline.ingest.process import VideoProcessor
    from genie_pipeline.shards.config import ClipsConfig
    from genie_pipeline.shards.records import Candidate

    proc = VideoProcessor(DownloadConfig(), ClipsConfig(), HeuristicsConfig(), out=str(scratch / "out"),
                          scratch=str(scratch / "dl"))
    cands = [Candidate(source="bench", video_id=f"v{i}", path=p, title=t) for i, (p, t) in enumerate(zip(paths, titles))]
    prof = cProfile.Profile(time.process_time)  # CPU time: the machine is shared
    prof.enable()
    for c in cands:
        proc(c)
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())
    rows = sorted(((v[2], f"{os.path.relpath(k[0], CODE) if k[0].startswith(str(CODE)) else k[0]}:{k[1]}({k[2]})")
                   for k, v in st.stats.items()), reverse=True)
    groups: dict[str, float] = {}
    for k, v in st.stats.items():
        name = f"{k[0]}:{k[2]}"
        label = next((g for g, keys in _COMPONENTS if any(x in name for x in keys)), "other")
        groups[label] = groups.get(label, 0.0) + v[2]
    return {"cpu_s": round(total, 3),
            "top_functions": [{"function": f, "own_cpu_s": round(t, 3), "share": round(t / total, 4)} for t, f in rows[:top]],
            "components": {g: {"own_cpu_s": round(t, 3), "share": round(t / total, 4)}
                           for g, t in sorted(groups.items(), key=lambda x: -x[1])}}


def profile_of(tree: Path, paths: list[str], titles: list[str], scratch: Path) -> dict:
    """`profile` of the code in `tree` (a baseline checkout's VideoProcessor), in a process of its own."""
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "videos.json").write_text(json.dumps({"paths": paths, "titles": titles}))
    env = {**os.environ, "GENIE_BENCH_CODE": str(tree), "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, __file__, "--profile-only", str(scratch)], cwd=tree, env=env,
                       capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"profile of {tree} failed:\n{r.stderr[-3000:]}")
    return json.loads((scratch / "profile.json").read_text())


def fixed_cost(one: Path, out: Path, rounds: int = 2) -> dict:
    """Where a run over one video spends its CPU seconds, measured in this process without a
    profiler (whose overhead on Beam's Python code is several times the code's own): the
    whole run, Beam's building of the job, its running (the commit included) less the video's
    processing, the video itself (VideoProcessor), and the report drawn after it (the
    ingest leaves that to a process of its own: output.report background). Means over
    `rounds` runs after a warm-up run."""
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest import pipeline as P
    from genie_pipeline.ingest.process import VideoProcessor
    from genie_pipeline.shards.report import write_report

    spent: dict[str, float] = {}

    def timed(owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        def g(*a, **k):
            c0 = cpu()
            try:
                return f(*a, **k)
            finally:
                spent[label] = spent.get(label, 0.0) + cpu() - c0
        setattr(owner, name, g)

    timed(P, "build_pipeline", "Beam: building the job (build_pipeline)")
    timed(P, "_run_job", "run")
    timed(VideoProcessor, "__call__", "the video (VideoProcessor: decode, cuts, heuristics, fingerprint, encode)")

    def run(dest: Path) -> float:
        cfg = parse_config({"sources": [{"type": "catalog", "name": "bench", "path": str(one), "keywords": "none"}],
                            "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                            "output": {"dir": str(dest), "report": "inline"}})
        c0 = cpu()
        P.run_ingest(cfg)
        return cpu() - c0

    P.write_report = lambda *a, **k: None  # the run's own: the report is timed apart below
    run(out / "warmup")
    write_report(str(out / "warmup"))  # matplotlib's import: paid once per process
    spent.clear()
    total = report = 0.0
    for i in range(rounds):
        total += run(out / f"run{i}")
        c0 = cpu()
        write_report(str(out / f"run{i}"))
        report += cpu() - c0
    parts = {k: v / rounds for k, v in spent.items()}
    run_ = parts.pop("run")
    job = "Beam: running the job less the video (the commit included)"
    parts[job] = run_ - sum(v for k, v in parts.items() if k != "Beam: building the job (build_pipeline)")
    parts["the rest of run_ingest (discovery of done videos, stats, logs)"] = total / rounds - run_ - parts[
        "Beam: building the job (build_pipeline)"]
    parts["report (write_report; off the run's path: a process of its own)"] = report / rounds
    return {"run_cpu_s": round(total / rounds, 3), "report_cpu_s": round(report / rounds, 3),
            "components_cpu_s": {k: round(v, 3) for k, v in sorted(parts.items(), key=lambda x: -x[1])}}


def _same_output(a: Path, b: Path, tol: float = 1e-6) -> dict:
    """Whether outputs `a` and `b` hold the same clips (keys, kept, reason, fingerprint) and
    scores within `tol`."""
    cols = ["key", "kept", "reason", "fingerprint", "motion", "dark_fraction", "unique_fraction", "cuts_per_min"]
    ra = {r["key"]: r for r in pq.read_table(a / "manifest", columns=cols).to_pylist()}
    rb = {r["key"]: r for r in pq.read_table(b / "manifest", columns=cols).to_pylist()}
    differ = [k for k in ra.keys() & rb.keys()
              if any(ra[k][c] != rb[k][c] for c in cols[:4]) or any(abs(ra[k][c] - rb[k][c]) > tol for c in cols[4:])]
    return {"clips": len(ra), "only_in_one": len(ra.keys() ^ rb.keys()), "differ": len(differ), "tolerance": tol}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", help="an existing sample corpus (default: render one)")
    ap.add_argument("--size", default="full", choices=["small", "full"])
    ap.add_argument("--baseline", help="a checkout of the code before a change, measured in the same run")
    ap.add_argument("--same-as", help="a checkout whose output must equal this tree's (clips, scores)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ingest.json"))
    ap.add_argument("--profile-only", metavar="DIR", help=argparse.SUPPRESS)  # profile_of's child
    args = ap.parse_args()
    if args.profile_only:
        d = Path(args.profile_only)
        v = json.loads((d / "videos.json").read_text())
        (d / "profile.json").write_text(json.dumps(profile(v["paths"], v["titles"], d / "work")))
        return 0

    from genie_pipeline.corpus.generate import generate_corpus
    from genie_pipeline.ingest.decode import probe

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    corpus = Path(args.corpus).resolve() if args.corpus else work / "corpus"
    if not (corpus / "catalog.jsonl").exists():
        generate_corpus(corpus, seed=0, size=args.size)
    rows = [json.loads(x) for x in (corpus / "catalog.jsonl").read_text().splitlines() if x.strip()]
    videos = [r for r in rows if r.get("file") and not r.get("expect_failure")]
    paths = [str(corpus / r["file"]) for r in videos]
    infos = [probe(p) for p in paths]
    seconds = sum(i.duration_s for i in infos)
    # decode cost grows with source pixels: the plan (`genie-pipeline plan`) names this
    source_pixels = sum(i.width * i.height * i.duration_s for i in infos) / seconds
    cat = work / "bench.jsonl"
    cat.write_text("\n".join(json.dumps({"id": r["id"], "path": str(corpus / r["file"]), "title": r["title"]})
                             for r in videos) + "\n")
    # a run over one short real video pays what every run pays once whatever its size: Beam
    # start-up, the shard writer, the commit (and the report, in a tree that draws it inline)
    one = work / "one.jsonl"
    one.write_text(json.dumps({"id": videos[0]["id"], "path": paths[0], "title": videos[0]["title"]}) + "\n")

    sides = {"after": ROOT, **({"before": Path(args.baseline).resolve()} if args.baseline else {}),
             **({"same_as": Path(args.same_as).resolve()} if args.same_as else {})}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    bares: list[float] = []
    wall0 = time.time()
    for rnd in range(args.rounds):
        bares.append(bare_decode(paths))
        # every other round in reverse, so that neither tree always runs first after a decode
        for name, tree in (list(sides.items()) if rnd % 2 == 0 else list(sides.items())[::-1]):
            if name == "same_as" and rnd:
                continue  # its output is what is compared; once is enough
            runs[name].append(pipeline(tree, one, cat, work / f"out-{name}-{rnd}"))
            print(f"round {rnd} {name}: {runs[name][-1]['cpu']:.2f} CPU-s (bare {bares[-1]:.2f})", file=sys.stderr)
    bares.append(bare_decode(paths))
    fixed_bare = bare_decode(paths[:1])
    bare_mean = sum(bares) / len(bares)

    def ratios(name: str) -> dict:
        rs = runs[name]
        pipe, fixed = sum(r["cpu"] for r in rs) / len(rs), sum(r["fixed"] for r in rs) / len(rs)
        return {"pipeline_cpu_s": round(pipe, 3), "pipeline_cpu_s_each": [round(r["cpu"], 3) for r in rs],
                "ratio": round(pipe / bare_mean, 3),
                "fixed_run_overhead_cpu_s": round(fixed - fixed_bare, 3),
                "ratio_without_fixed_overhead": round(max(pipe - fixed, 0) / max(bare_mean - fixed_bare, 1e-9), 3),
                "clips": rs[-1]["clips"], "clips_kept": rs[-1]["clips_kept"], "videos_failed": rs[-1]["videos_failed"],
                "pipeline_wall_s": round(rs[-1]["wall"], 3)}

    after = ratios("after")
    out = work / f"out-after-{args.rounds - 1}"
    broken = [f for f in pq.read_table(out / "failures").to_pylist() if f["error_type"] != "NoShotLongEnough"]
    if after["clips"] == 0 or broken:
        raise SystemExit(f"benchmark run is not representative: {after['clips']} clips, "
                         f"{len(broken)} failed videos (see {out})")
    cuts_cpu, n_frames = cut_detection(paths)
    fixed_parts = fixed_cost(one, work / "fixed")
    titles = [r["title"] for r in videos]
    prof = profile(paths, titles, work / "profile")
    prof_before = profile_of(sides["before"], paths, titles, work / "profile-before") if "before" in sides else None
    result = {
        "videos": len(paths), "source_seconds": round(seconds, 2),
        "source_pixels_per_frame_mean": round(source_pixels),
        "clips": after["clips"], "clips_kept": after["clips_kept"],
        "bytes_per_clip": round(_mean_kept_bytes(out)),
        "videos_failed": after["videos_failed"],
        "pipeline_cpu_s": after["pipeline_cpu_s"], "pipeline_wall_s": after["pipeline_wall_s"],
        "bare_decode_cpu_s": round(bare_mean, 3), "bare_decode_cpu_s_each": [round(b, 3) for b in bares],
        "pipeline_cpu_per_source_s": round(after["pipeline_cpu_s"] / seconds, 5),
        "bare_decode_cpu_per_source_s": round(bare_mean / seconds, 5),
        "ratio": after["ratio"], "goal_ratio": 1.2,
        # cut detection alone (filtering.shots), per 10 FPS frame, and its share of a bare decode
        "cut_detection_us_per_frame": round(cuts_cpu / n_frames * 1e6, 1),
        "cut_detection_share_of_bare_decode": round(cuts_cpu / bare_mean, 4),
        # per-run fixed cost (a run over one video less that video's bare decode; imports
        # excluded) and the ratio without it, which is what a long run converges to
        "fixed_run_overhead_cpu_s": after["fixed_run_overhead_cpu_s"],
        "ratio_without_fixed_overhead": after["ratio_without_fixed_overhead"],
        # what a run pays whatever its size, by part (one video, no profiler), and the ratio
        # had the report been drawn inline as before (ingest leaves it to a process of its own)
        "fixed_cost_one_video": fixed_parts,
        "ratio_with_the_report_inline": round((after["pipeline_cpu_s"] + fixed_parts["report_cpu_s"]) / bare_mean, 3),
        "after": after,
        **({"before": ratios("before")} if "before" in runs else {}),
        **({"same_output_as_" + sides["same_as"].name: _same_output(work / "out-same_as-0", out)}
           if "same_as" in runs else {}),
        "rounds": args.rounds, "benchmark_wall_s": round(time.time() - wall0, 1),
        "profile": prof,
        **({"profile_before": prof_before} if prof_before else {}),
        # what plan adds to a format's decode: the pipeline's CPU less its own decode (the
        # profile's share), not less the bare decode, which is an ffmpeg process writing RGB
        # to a pipe and can cost more than the pipeline's in-process decode of the same frames
        "post_decode_cpu_per_source_s": round(after["pipeline_cpu_s"] / seconds * (1 - prof["components"].get(
            DECODE, {}).get("share", 0.0)), 5),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average_1_5_15": [round(x, 1) for x in os.getloadavg()]},
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
