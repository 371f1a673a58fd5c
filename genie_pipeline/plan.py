"""`genie-pipeline plan`: what an ingest costs, in hours, bytes and money, from measured rates.

The size of the job is given in hours of clips (`--clip-hours`: the Genie paper's 244k hours
are 55M clips of 16 s, before filtering) or in hours of source video (`--source-hours`); one
is converted to the other with the measured clips cut per second of source.

Every rate rests on a committed benchmark result (benchmarks/results/*.json), named in the
table it prints, so a plan changes when the measurements do and never on a guess:

- ingest CPU per second of source = decode + the rest. Decode: `decode_codecs.json`, the
  CPU-s per source second of the project's decode path on footage of the codec and height
  `download.format` selects (H.264, VP9, AV1 at 144p to 720p; a cell that was not measured
  is reported as such, and every figure that needs it is unknown). The rest (cut detection,
  heuristics, fingerprint, encode, shard write, which work on the decoded 160×90 frames and
  so do not depend on the source's format): `ingest.json` `post_decode_cpu_per_source_s`, the
  pipeline's CPU less its own decode (the benchmark's profile share); in older results,
  `pipeline_cpu_per_source_s` less `bare_decode_cpu_per_source_s`;
- clips per second of source and the share the heuristics keep: `ingest.json`;
- quality scoring: `quality.json` `cost.clips_per_scoring_cpu_s` on CPU workers; on GPU
  workers (`--gpu`) a rate you measured on your accelerator (`--gpu-clips-per-s`);
- output size: `ingest.json` `bytes_per_clip`;
- curation (the near-duplicate join): `scale.json` `curate_next` (interpolated between the
  measured sizes on log scales; past the largest, grown in proportion to the size).

Download is modelled, from the config and stated assumptions: a job starts at most
`download.per_host_rate` downloads per second per host, whatever its workers, so it takes
videos / (rate × hosts) at least (videos = source hours / the mean video length, an
assumption: `--mean-video-minutes`); and it moves the source's bytes (the bitrate of the
selected format: the benchmark's encode of its footage, or `--source-kbps`) at most at
`--mbps-per-worker` per worker. The wall time is the largest of the CPU, download-start,
bandwidth (and GPU) bounds, and the table says which one binds. Workers are billed for the
whole wall time, busy or waiting: the cost is on vCPU-hours billed, not used.

Not in the plan: egress and storage prices, Dataflow's per-job overhead and the memory part
of its price (pass a `--price-per-vcpu-hour` that folds it in).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from genie_pipeline.config import ConfigError

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
PAPER_CLIP_HOURS = 244_000  # Genie: 55M clips of 16 s (~244k hours) before filtering
CODECS = ("h264", "vp9", "av1", "combined")  # combined: one file, H.264 video and AAC audio
LADDER = (144, 240, 360, 720)  # the heights decode_codecs.json measures
YOUTUBE_HEIGHTS = (144, 240, 360, 480, 720, 1080, 1440, 2160, 4320)


@dataclass(frozen=True)
class Rates:
    """The measured rates a plan rests on, each with where it came from."""

    cpu_per_source_s: float  # the whole ingest on the ingest benchmark's footage
    bare_decode_cpu_per_source_s: float  # its decode alone, same run
    clips_per_source_s: float
    kept_fraction: float
    scoring_clips_per_cpu_s: float
    bytes_per_clip: float | None
    sources: dict[str, str]
    # (clips in the join, curation CPU-s per new clip), by size; empty: not measured
    curate_cpu_per_clip: tuple[tuple[float, float], ...] = ()
    # (codec, height) -> {"cpu_per_source_s", "kbps", "decoder"}; codec -> why not measured
    decode: dict = dataclasses.field(default_factory=dict)
    decode_not_measured: dict = dataclasses.field(default_factory=dict)
    post_decode_cpu_per_source_s: float | None = None  # the pipeline less its own decode (profiled)

    @property
    def rest_cpu_per_source_s(self) -> float:
        """Ingest CPU per source second besides decoding (works on the 160×90 frames)."""
        if self.post_decode_cpu_per_source_s is not None:
            return self.post_decode_cpu_per_source_s
        return max(0.0, self.cpu_per_source_s - self.bare_decode_cpu_per_source_s)

    def curate_cpu_s(self, clips: float) -> float | None:
        """CPU-s for `clips` new clips to go through a join of that many (None: not measured)."""
        points = self.curate_cpu_per_clip
        if not points:
            return None
        if clips <= points[0][0]:
            return clips * points[0][1]
        for (n0, r0), (n1, r1) in zip(points, points[1:]):
            if clips <= n1:
                t = math.log(clips / n0) / math.log(n1 / n0)
                return clips * math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0)))
        n, r = points[-1]
        return clips * r * clips / n

    def decode_cell(self, codec: str, height: int | None) -> dict | str:
        """The measured decode of (codec, height), or why there is none."""
        if height is None or height not in LADDER:
            at = f"{height}p" if height else "the best height a video has"
            return f"{codec} at {at}: not measured (decode_codecs.json has {'/'.join(map(str, LADDER))}p)"
        cell = self.decode.get((codec, height))
        if cell is not None:
            return cell
        why = self.decode_not_measured.get(codec, "no decode_codecs.json result")
        return f"{codec} {height}p: not measured ({why})"


def read_rates(results_dir: str | Path = RESULTS) -> Rates:
    """The rates from `results_dir`'s ingest.json, quality.json and, where present, scale.json
    and decode_codecs.json (ConfigError naming what is missing)."""
    results_dir = Path(results_dir)
    ingest = _load(results_dir / "ingest.json")
    quality = _load(results_dir / "quality.json")
    try:
        rates = Rates(
            cpu_per_source_s=float(ingest["pipeline_cpu_per_source_s"]),
            bare_decode_cpu_per_source_s=float(ingest["bare_decode_cpu_per_source_s"]),
            clips_per_source_s=float(ingest["clips"]) / float(ingest["source_seconds"]),
            kept_fraction=float(ingest["clips_kept"]) / float(ingest["clips"]),
            scoring_clips_per_cpu_s=float(quality["cost"]["clips_per_scoring_cpu_s"]),
            bytes_per_clip=float(ingest["bytes_per_clip"]) if ingest.get("bytes_per_clip") else None,
            post_decode_cpu_per_source_s=float(ingest["post_decode_cpu_per_source_s"])
            if ingest.get("post_decode_cpu_per_source_s") is not None else None,
            sources={"ingest": f"{results_dir / 'ingest.json'} ({ingest.get('date', 'undated')})",
                     "quality": f"{results_dir / 'quality.json'} ({quality.get('date', 'undated')})"})
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError("plan.results", f"{results_dir} lacks a measured rate ({type(e).__name__}: {e}); "
                                          "re-run benchmarks/ingest.py and benchmarks/quality.py") from None
    if (results_dir / "scale.json").exists():
        rates = _with_scale(rates, results_dir / "scale.json")
    return _with_decode(rates, results_dir / "decode_codecs.json")


def _with_scale(rates: Rates, path: Path) -> Rates:
    scale = _load(path)
    try:
        points = sorted((float(r["clips"] + scale["next_run_videos"] * scale["clips_per_video"]),
                         float(r["curate_next"]["match_s"]) / float(r["curate_next"]["new_clips"]))
                        for r in scale["rows"] if "curate_next" in r)
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError("plan.results", f"{path} lacks a curation measurement "
                                          f"({type(e).__name__}: {e}); re-run benchmarks/scale.py") from None
    return dataclasses.replace(rates, curate_cpu_per_clip=tuple(points), sources={
        **rates.sources, "scale": f"{path} ({scale.get('date', 'undated')})"})


def _with_decode(rates: Rates, path: Path) -> Rates:
    if not path.exists():
        return dataclasses.replace(rates, decode_not_measured={c: f"{path} does not exist: run "
                                                                  "benchmarks/decode_codecs.py" for c in CODECS})
    result = _load(path)
    try:
        cells = {(str(c["codec"]), int(c["height"])): {"cpu_per_source_s": float(c["decode_cpu_per_source_s"]),
                                                       "kbps": float(c["kbps"]), "decoder": str(c["decoder"])}
                 for c in result["cells"]}
        missing = {str(m["codec"]): str(m["reason"]) for m in result.get("not_measured", [])}
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError("plan.results", f"{path} lacks a decode measurement ({type(e).__name__}: {e}); "
                                          "re-run benchmarks/decode_codecs.py") from None
    return dataclasses.replace(rates, decode=cells, decode_not_measured=missing, sources={
        **rates.sources, "decode": f"{path} ({result.get('date', 'undated')})"})


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("plan.results", f"{path} does not exist: give --results DIR (benchmarks/results "
                                          "of a checkout)") from None
    except (OSError, ValueError) as e:
        raise ConfigError("plan.results", f"{path} is not readable JSON: {e}") from None


# ------------------------------------------------------------------------ the source format
@dataclass(frozen=True)
class SourceFormat:
    codec: str
    height: int | None  # None: the site's best, unbounded
    why: str


def source_format(fmt: str) -> SourceFormat:
    """The (codec, height) a yt-dlp `download.format` downloads from YouTube, as the plan
    assumes it: the first alternative (yt-dlp takes the first one a video offers); its
    height cap (the tallest of YouTube's heights under it); its codec filter, else `b` (one
    file with audio and video: YouTube serves only format 18, H.264 360p, that way, so 360p
    at most) is H.264 and `bv` (video only, merged) is VP9 (yt-dlp prefers AV1, then VP9,
    then H.264 at equal height; YouTube offers AV1 for popular videos only)."""
    first = fmt.split("/")[0].strip()
    m = re.search(r"\[height\s*(<=|<|=|>=)\s*(\d+)\]", first)
    height = None
    if m and m.group(1) == ">=":  # the default format (smallest first): the shortest that is tall enough
        height = min([h for h in YOUTUBE_HEIGHTS if h >= int(m.group(2))], default=int(m.group(2)))
    elif m:
        cap = int(m.group(2)) - (1 if m.group(1) == "<" else 0)
        # at most `cap`: the tallest of YouTube's heights that fits
        height = cap if m.group(1) == "=" else max([h for h in YOUTUBE_HEIGHTS if h <= cap], default=cap)
    vcodec = re.search(r"\[vcodec\s*[\^*~$]?=\s*['\"]?\^?\(?([a-z0-9.]+)", first)
    if vcodec:
        name = vcodec.group(1)
        codec = "av1" if name.startswith(("av01", "av1")) else "vp9" if name.startswith("vp") else "h264"
        how = f"its video codec filter ({name})"
    elif first.startswith("bv") or "+" in first:
        codec, how = "vp9", "video-only best (yt-dlp prefers AV1 > VP9 > H.264; AV1 for popular videos only)"
    else:  # measured as its own cell: the H.264 360p video and its audio track
        codec, how = "combined", "one file with audio and video (YouTube: format 18, H.264 360p + AAC)"
        height = min(height or 360, 360)
    cap_text = (f"height >= {m.group(2)}: {height}p" if m and m.group(1) == ">=" else
                f"height <= {height}" if height else "no height cap")
    return SourceFormat(codec, height, f"first choice {first!r}: {how}, {cap_text}")


def parse_source_format(text: str) -> SourceFormat:
    """`CODEC:HEIGHT` from the command line (h264:360, vp9:720, av1:144)."""
    m = re.fullmatch(rf"({'|'.join(CODECS)}):(\d+)p?", text.strip().lower())
    if not m:
        raise ConfigError("plan.source_format", f"expected CODEC:HEIGHT with CODEC one of {', '.join(CODECS)} "
                                                f"(e.g. vp9:360), got {text!r}")
    return SourceFormat(m.group(1), int(m.group(2)), "given (--source-format)")


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Download:
    """What the download bounds rest on: config values and stated assumptions."""

    per_host_rate: float  # download.per_host_rate: starts per second per host, whole job
    hosts: int = 1  # the sites the videos come from (one: all on YouTube)
    mean_video_s: float = 600.0  # assumed
    mbps_per_worker: float = 100.0  # assumed: each worker's download throughput, Mbit/s
    source_kbps: float | None = None  # None: the measured encode's bitrate of the format


def _positive(key: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"plan.{key}", f"must be a positive number, got {value!r}")


def _check(clip_hours, source_hours, workers, wall_hours, vcpus_per_worker, price_per_vcpu_hour,
           gpu_clips_per_s, dl: Download) -> None:
    if (clip_hours is None) == (source_hours is None):
        raise ConfigError("plan.clip_hours", "give the size as --clip-hours or as --source-hours, one of them")
    if (workers is None) == (wall_hours is None):
        raise ConfigError("plan.workers", "give either the number of workers or the wall hours wanted")
    for key, value in (("clip_hours", clip_hours), ("source_hours", source_hours), ("workers", workers),
                       ("wall_hours", wall_hours), ("vcpus_per_worker", vcpus_per_worker),
                       ("gpu_clips_per_s", gpu_clips_per_s), ("hosts", dl.hosts),
                       ("mean_video_minutes", dl.mean_video_s), ("mbps_per_worker", dl.mbps_per_worker),
                       ("source_kbps", dl.source_kbps)):
        _positive(key, value)
    if not (math.isfinite(price_per_vcpu_hour) and price_per_vcpu_hour >= 0):
        raise ConfigError("plan.price_per_vcpu_hour", f"must be >= 0, got {price_per_vcpu_hour!r}")


def make_plan(rates: Rates, *, clip_hours: float | None = None, source_hours: float | None = None,
              clip_seconds: float = 16, fmt: SourceFormat | None = None, download: Download | None = None,
              keep_clip_store: bool = True, workers: int | None = None, wall_hours: float | None = None,
              vcpus_per_worker: int = 4, price_per_vcpu_hour: float = 0.0, gpu: bool = False,
              gpu_clips_per_s: float | None = None, price_per_gpu_hour: float | None = None) -> dict:
    """Every figure of an ingest of `clip_hours` of clips (cut, before filtering) or
    `source_hours` of source video, downloaded in `fmt` (default H.264 360p), given the
    `workers` or the `wall_hours` wanted (then the fewest workers that make it, if the
    download-start bound allows it). A figure that rests on nothing measured is None."""
    fmt = fmt or SourceFormat("h264", 360, "default")
    dl = download or Download(per_host_rate=2.0)
    _check(clip_hours, source_hours, workers, wall_hours, vcpus_per_worker, price_per_vcpu_hour, gpu_clips_per_s, dl)
    if source_hours is None:
        source_hours = clip_hours * 3600 / clip_seconds / rates.clips_per_source_s / 3600
    source_s = source_hours * 3600
    clips = source_s * rates.clips_per_source_s
    kept = clips * rates.kept_fraction
    cell = rates.decode_cell(fmt.codec, fmt.height)
    measured = isinstance(cell, dict)
    cpu_per_s = rates.rest_cpu_per_source_s + cell["cpu_per_source_s"] if measured else None
    kbps = dl.source_kbps or (cell["kbps"] if measured else None)
    work = _work(rates, source_s, kept, cpu_per_s, gpu, gpu_clips_per_s)
    videos = source_s / dl.mean_video_s
    down = {"videos": videos, "source_kbps": kbps,
            "bytes_downloaded": None if kbps is None else source_s * kbps * 1000 / 8,
            "start_hours": videos / (dl.per_host_rate * dl.hosts) / 3600}
    shape = _shape(work, down, dl, workers, wall_hours, vcpus_per_worker)
    per_clip = rates.bytes_per_clip
    stored_shards = None if per_clip is None else kept * per_clip
    stored_store = None if per_clip is None or not keep_clip_store else clips * per_clip
    billed = shape["workers"] * vcpus_per_worker * shape["wall_hours"] if shape["wall_hours"] is not None else None
    gpu_billed = shape["workers"] * shape["wall_hours"] if gpu and shape["wall_hours"] is not None else 0.0
    cost = None if billed is None else billed * price_per_vcpu_hour
    if gpu:
        cost = None if cost is None or price_per_gpu_hour is None or work["gpu_hours"] is None \
            else cost + gpu_billed * price_per_gpu_hour
    return {"clip_hours": clips * clip_seconds / 3600, "source_hours": source_hours, "clip_seconds": clip_seconds,
            "clips_cut": clips, "clips_after_heuristics": kept,
            "source_format": {"codec": fmt.codec, "height": fmt.height, "why": fmt.why,
                              "decode": cell if measured else None, "not_measured": None if measured else cell},
            "ingest_cpu_per_source_s": cpu_per_s, **work, **down, **shape, "vcpus_per_worker": vcpus_per_worker,
            "vcpu_hours_billed": billed, "gpu_hours_billed": gpu_billed,
            "bytes_stored_shards": stored_shards, "bytes_stored_clip_store": stored_store,
            "bytes_stored": None if stored_shards is None else stored_shards + (stored_store or 0.0),
            "cost": cost, "download_assumptions": dataclasses.asdict(dl)}


def _work(rates: Rates, source_s: float, kept: float, cpu_per_s: float | None, gpu: bool,
          gpu_clips_per_s: float | None) -> dict:
    """vCPU-hours used by each part (None: not measured) and GPU-hours of scoring."""
    ingest = None if cpu_per_s is None else source_s * cpu_per_s / 3600
    if gpu:
        scoring, gpu_h = 0.0, kept / gpu_clips_per_s / 3600 if gpu_clips_per_s else None
    else:
        scoring, gpu_h = kept / rates.scoring_clips_per_cpu_s / 3600, 0.0
    curate_s = rates.curate_cpu_s(kept)
    curate = None if curate_s is None else curate_s / 3600
    total = None if ingest is None else ingest + scoring + (curate or 0.0)
    return {"ingest_vcpu_hours": ingest, "scoring_vcpu_hours": scoring, "curation_vcpu_hours": curate,
            "vcpu_hours": total, "gpu_hours": gpu_h}


def _shape(work: dict, down: dict, dl: Download, workers: int | None, wall_hours: float | None,
           vcpus: int) -> dict:
    """Workers, each bound on the wall time, the wall time (the largest bound) and which binds.
    Given a wall time, the workers are the fewest that meet it, or, where the download starts
    alone take longer (no number of workers shortens them), that keep up with the starts."""
    bytes_ = down["bytes_downloaded"]
    per_worker_bytes_h = dl.mbps_per_worker * 1e6 / 8 * 3600
    reachable = True
    if workers is None:
        target = wall_hours
        if down["start_hours"] > wall_hours:
            target, reachable = down["start_hours"], False
        need = [1]
        if work["vcpu_hours"] is not None:
            need.append(math.ceil(work["vcpu_hours"] / (target * vcpus) - 1e-9))
        if bytes_ is not None:
            need.append(math.ceil(bytes_ / (target * per_worker_bytes_h) - 1e-9))
        if work["gpu_hours"]:
            need.append(math.ceil(work["gpu_hours"] / target - 1e-9))
        workers = max(need)
    bounds = {"cpu": None if work["vcpu_hours"] is None else work["vcpu_hours"] / (workers * vcpus),
              "download_starts": down["start_hours"],
              "bandwidth": None if bytes_ is None else bytes_ / (workers * per_worker_bytes_h)}
    if work["gpu_hours"]:
        bounds["gpu"] = work["gpu_hours"] / workers
    known = {k: v for k, v in bounds.items() if v is not None}
    binds = max(known, key=known.get)
    # unknown CPU work: the wall time is not known either (it is at least the largest known bound)
    wall = None if bounds["cpu"] is None else known[binds]
    return {"workers": workers, "bounds_hours": bounds, "binds": binds, "wall_hours": wall,
            "wall_hours_wanted": wall_hours, "wall_hours_reachable": reachable}


# ---------------------------------------------------------------------------- the table
def _num(v, unit: str = "", digits: int = 0) -> str:
    return "not measured" if v is None else f"{v:,.{digits}f}{unit}"


def _tb(v) -> str:
    return "not measured" if v is None else f"{v / 1e12:,.2f} TB"


BOUND_NAMES = {"cpu": "CPU", "download_starts": "download starts", "bandwidth": "download bandwidth", "gpu": "GPU"}


def format_plan(plan: dict, rates: Rates, price_per_vcpu_hour: float) -> str:
    """The plan as a table, each bound on the wall time and which binds, then the measured
    numbers and the assumptions it rests on."""
    fmt, dl, b = plan["source_format"], plan["download_assumptions"], plan["bounds_hours"]
    cell = fmt["decode"]
    lines = [
        f"clips cut ({plan['clip_seconds']:g} s each) {_num(plan['clips_cut'])}  = {_num(plan['clip_hours'], ' h')} of clips",
        f"source video            {_num(plan['source_hours'], ' h')}  ({rates.clips_per_source_s:.4f} clips cut "
        "per source second)",
        f"videos                  {_num(plan['videos'])}  (mean {dl['mean_video_s'] / 60:g} min: assumed, "
        "--mean-video-minutes)",
        f"after heuristics        {_num(plan['clips_after_heuristics'])} clips  (before the quality classifier)",
        f"source format           {fmt['codec']} {str(fmt['height']) + 'p' if fmt['height'] else 'at the best height'}"
        f"  ({fmt['why']})",
        f"workers                 {plan['workers']} × {plan['vcpus_per_worker']} vCPU"
        + ("" if plan["vcpu_hours"] is not None or plan["wall_hours_wanted"] is None
           else "  (sized without the CPU work, which is not measured)"),
        (f"wall time               {plan['wall_hours']:,.1f} h  bound by {BOUND_NAMES[plan['binds']]}"
         if plan["wall_hours"] is not None else
         f"wall time               not measured (at least {plan['bounds_hours'][plan['binds']]:,.1f} h: "
         f"{BOUND_NAMES[plan['binds']]})"),
        f"  CPU                   {_num(b['cpu'], ' h', 1)}  vCPU-hours used / (workers × vCPUs)",
        f"  download starts       {_num(b['download_starts'], ' h', 1)}  videos / (download.per_host_rate "
        f"{dl['per_host_rate']:g}/s × {dl['hosts']} host{'s' if dl['hosts'] != 1 else ''}); more workers do not "
        "shorten it",
        f"  download bandwidth    {_num(b['bandwidth'], ' h', 1)}  bytes downloaded / (workers × "
        f"{dl['mbps_per_worker']:g} Mbit/s: assumed, --mbps-per-worker)",
        *([f"  GPU                   {_num(b['gpu'], ' h', 1)}  GPU-hours / workers (one GPU each)"] if "gpu" in b else []),
        *_unreachable(plan),
        f"vCPU-hours used         {_num(plan['vcpu_hours'])}  (ingest {_num(plan['ingest_vcpu_hours'])}, "
        f"scoring {_num(plan['scoring_vcpu_hours'])}, curation {_num(plan['curation_vcpu_hours'])}"
        + (", not in the total)" if plan["curation_vcpu_hours"] is None else ")"),
        f"vCPU-hours billed       {_num(plan['vcpu_hours_billed'])}  (workers × vCPUs × wall time, busy or waiting)",
        f"GPU-hours               {_num(plan['gpu_hours'], '', 1)} used, {_num(plan['gpu_hours_billed'], '', 1)} billed",
        f"downloaded              {_tb(plan['bytes_downloaded'])}  ({_num(plan['source_kbps'], ' kbit/s', 1)} "
        + ("given, --source-kbps)" if dl["source_kbps"] else "of the benchmark's encode of game footage, video only; "
           "a site's streams are often several times that: --source-kbps)"),
        f"stored                  {_tb(plan['bytes_stored'])}  (shards {_tb(plan['bytes_stored_shards'])}, clip store "
        + ("off: shards.keep_clip_store)" if plan["bytes_stored_clip_store"] is None else
           f"{_tb(plan['bytes_stored_clip_store'])}: every clip cut, shards.keep_clip_store)"),
        f"cost                    {_num(plan['cost'], ' (currency of the prices given)')} "
        f"at {price_per_vcpu_hour} per vCPU-hour billed",
        "",
        *_rests_on(plan, rates, cell),
    ]
    return "\n".join(lines)


def _unreachable(plan: dict) -> list[str]:
    if plan["wall_hours_reachable"]:
        return []
    return [f"  the {plan['wall_hours_wanted']:g} h wanted cannot be met: the download starts alone take "
            f"{plan['bounds_hours']['download_starts']:,.1f} h; workers sized to keep up with them. Raise "
            "--set download.per_host_rate=R (within what the site tolerates) or spread the sources over more hosts"]


def _rests_on(plan: dict, rates: Rates, cell: dict | None) -> list[str]:
    fmt = plan["source_format"]
    decode = (f"  {cell['cpu_per_source_s']:.5f} CPU-s per source second  decode of {fmt['codec']} {fmt['height']}p "
              f"({cell['decoder']}, {cell['kbps']:g} kbit/s)   {rates.sources['decode']}" if cell else
              f"  decode: {fmt['not_measured']}: the ingest CPU, the CPU bound and the cost are unknown")
    return [
        "rests on (measured, one process per core):",
        decode,
        f"  {rates.rest_cpu_per_source_s:.5f} CPU-s per source second  the rest of the ingest (cuts, heuristics, "
        f"encode, write: pipeline less {'its profiled decode' if rates.post_decode_cpu_per_source_s is not None else 'bare decode'})   "
        f"{rates.sources['ingest']}",
        f"  {rates.clips_per_source_s:.5f} clips cut per source second, {rates.kept_fraction:.3f} of them kept by "
        "heuristics   ingest",
        f"  {rates.scoring_clips_per_cpu_s:.1f} clips scored per CPU-s   {rates.sources['quality']}",
        f"  {_num(rates.bytes_per_clip, ' bytes per clip')}   ingest",
        *[f"  {rate * 1000:.2f} CPU-s per 1000 new clips in a join of {n / 1e6:.2f}M clips   curation"
          + (f"   {rates.sources['scale']}" if i == 0 else "")
          for i, (n, rate) in enumerate(rates.curate_cpu_per_clip)],
        "not included: egress and storage prices, Dataflow job overhead",
    ]
