"""`genie-pipeline plan`: what an ingest of H hours of source video costs, from measured rates.

Every figure rests on a committed benchmark result (benchmarks/results/*.json), named in the
table it prints, so a plan changes when the measurements do and never on a guess:

- ingest CPU per second of source: `ingest.json` `pipeline_cpu_per_source_s` (probe, decode at
  10 FPS 160×90, cut detection, heuristics, fingerprint, encode, shard write; one process,
  local files, so download time is not in it);
- clips per second of source and the share the heuristics keep: `ingest.json` `clips`,
  `clips_kept`, `source_seconds`;
- quality scoring: `quality.json` `cost.clips_per_scoring_cpu_s` on CPU workers; on GPU
  workers (`--gpu`) a rate you measured on your accelerator (`--gpu-clips-per-s`; none
  was measured here, so without it GPU-hours are left unknown rather than guessed);
- output size: `ingest.json` `bytes_per_clip` (the mean size of a kept clip's mp4);
- curation (the near-duplicate join): `scale.json` `curate_next`, the join's CPU-s per new
  clip measured against outputs of 0.3M to 30M clips. A run of K clips after the heuristics
  queries a join of K clips, so it costs K times the rate at K (interpolated between the
  measured sizes on log scales; past the largest, grown in proportion to the size, which
  overstates it). Without scale.json the figure is unknown and left out of the totals.

Not in the plan: download bandwidth and egress, storage price, Dataflow's per-job overhead
and the memory part of its price (pass a `--price-per-vcpu-hour` that folds it in).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from genie_pipeline.config import ConfigError

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
PAPER_SOURCE_HOURS = 244_000  # Genie: 244k hours of platformer video before filtering


@dataclass(frozen=True)
class Rates:
    """The measured rates a plan rests on, each with where it came from."""

    cpu_per_source_s: float
    clips_per_source_s: float
    kept_fraction: float
    scoring_clips_per_cpu_s: float
    bytes_per_clip: float | None
    source_pixels: float | None  # mean source frame size the ingest rate was measured on
    sources: dict[str, str]
    # (clips in the join, curation CPU-s per new clip), by size; empty: not measured
    curate_cpu_per_clip: tuple[tuple[float, float], ...] = ()

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


def read_rates(results_dir: str | Path = RESULTS) -> Rates:
    """The rates from `results_dir`'s ingest.json and quality.json (ConfigError naming what is
    missing)."""
    results_dir = Path(results_dir)
    ingest = _load(results_dir / "ingest.json")
    quality = _load(results_dir / "quality.json")
    try:
        cost = quality["cost"]
        rates = Rates(
            cpu_per_source_s=float(ingest["pipeline_cpu_per_source_s"]),
            clips_per_source_s=float(ingest["clips"]) / float(ingest["source_seconds"]),
            kept_fraction=float(ingest["clips_kept"]) / float(ingest["clips"]),
            scoring_clips_per_cpu_s=float(cost["clips_per_scoring_cpu_s"]),
            bytes_per_clip=float(ingest["bytes_per_clip"]) if ingest.get("bytes_per_clip") else None,
            source_pixels=(float(ingest["source_pixels_per_frame_mean"])
                           if ingest.get("source_pixels_per_frame_mean") else None),
            sources={"ingest": f"{results_dir / 'ingest.json'} ({ingest.get('date', 'undated')})",
                     "quality": f"{results_dir / 'quality.json'} ({quality.get('date', 'undated')})"})
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise ConfigError("plan.results", f"{results_dir} lacks a measured rate ({type(e).__name__}: {e}); "
                                          "re-run benchmarks/ingest.py and benchmarks/quality.py") from None
    if (results_dir / "scale.json").exists():
        scale = _load(results_dir / "scale.json")
        try:
            points = sorted((float(r["clips"] + scale["next_run_videos"] * scale["clips_per_video"]),
                             float(r["curate_next"]["match_s"]) / float(r["curate_next"]["new_clips"]))
                            for r in scale["rows"] if "curate_next" in r)
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise ConfigError("plan.results", f"{results_dir / 'scale.json'} lacks a curation measurement "
                                              f"({type(e).__name__}: {e}); re-run benchmarks/scale.py") from None
        rates = dataclasses.replace(rates, curate_cpu_per_clip=tuple(points), sources={
            **rates.sources, "scale": f"{results_dir / 'scale.json'} ({scale.get('date', 'undated')})"})
    return rates


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("plan.results", f"{path} does not exist: give --results DIR (benchmarks/results "
                                          "of a checkout)") from None
    except (OSError, ValueError) as e:
        raise ConfigError("plan.results", f"{path} is not readable JSON: {e}") from None


def make_plan(rates: Rates, source_hours: float, *, workers: int | None = None, wall_hours: float | None = None,
              vcpus_per_worker: int = 4, price_per_vcpu_hour: float = 0.0, gpu: bool = False,
              gpu_clips_per_s: float | None = None, price_per_gpu_hour: float | None = None) -> dict:
    """Workers, wall time, vCPU-hours, GPU-hours, output bytes and cost for `source_hours`,
    given either the `workers` or the `wall_hours` wanted (then the workers it takes).
    Scoring runs on the CPU workers unless `gpu`; a figure that rests on nothing measured is
    None."""
    if (workers is None) == (wall_hours is None):
        raise ConfigError("plan.workers", "give either the number of workers or the wall hours wanted")
    for key, value in (("source_hours", source_hours), ("workers", workers), ("wall_hours", wall_hours),
                       ("vcpus_per_worker", vcpus_per_worker)):
        if value is None:
            continue
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"plan.{key}", f"must be a positive number, got {value!r}")
    if not (math.isfinite(price_per_vcpu_hour) and price_per_vcpu_hour >= 0):
        raise ConfigError("plan.price_per_vcpu_hour", f"must be >= 0, got {price_per_vcpu_hour!r}")
    if gpu_clips_per_s is not None and not (math.isfinite(gpu_clips_per_s) and gpu_clips_per_s > 0):
        raise ConfigError("plan.gpu_clips_per_s", f"must be > 0, got {gpu_clips_per_s!r}")
    source_s = source_hours * 3600
    clips = source_s * rates.clips_per_source_s
    kept = clips * rates.kept_fraction
    ingest_vcpu_h = source_s * rates.cpu_per_source_s / 3600
    if gpu:
        scoring_vcpu_h = 0.0
        gpu_h = kept / gpu_clips_per_s / 3600 if gpu_clips_per_s else None
    else:
        scoring_vcpu_h, gpu_h = kept / rates.scoring_clips_per_cpu_s / 3600, 0.0
    curate_s = rates.curate_cpu_s(kept)
    curate_vcpu_h = None if curate_s is None else curate_s / 3600
    vcpu_h = ingest_vcpu_h + scoring_vcpu_h + (curate_vcpu_h or 0.0)
    if workers is None:
        workers = max(1, math.ceil(vcpu_h / (wall_hours * vcpus_per_worker)))
    wall_h = vcpu_h / (workers * vcpus_per_worker)
    cost = vcpu_h * price_per_vcpu_hour
    if gpu:
        cost = cost + gpu_h * price_per_gpu_hour if gpu_h is not None and price_per_gpu_hour is not None else None
    return {"source_hours": source_hours, "clips_cut": clips, "clips_after_heuristics": kept,
            "ingest_vcpu_hours": ingest_vcpu_h, "scoring_vcpu_hours": scoring_vcpu_h,
            "curation_vcpu_hours": curate_vcpu_h, "vcpu_hours": vcpu_h,
            "gpu_hours": gpu_h, "workers": workers, "vcpus_per_worker": vcpus_per_worker, "wall_hours": wall_h,
            "output_bytes": kept * rates.bytes_per_clip if rates.bytes_per_clip else None, "cost": cost}


def format_plan(plan: dict, rates: Rates, price_per_vcpu_hour: float) -> str:
    """The plan as a table, then the measured numbers it rests on."""
    def num(v, unit="", digits=0):
        return "unknown (not measured)" if v is None else f"{v:,.{digits}f}{unit}"

    lines = [
        f"source video            {num(plan['source_hours'], ' h')}",
        f"clips cut (16 s)        {num(plan['clips_cut'])}",
        f"after heuristics        {num(plan['clips_after_heuristics'])}  (before the quality classifier)",
        f"workers                 {plan['workers']} × {plan['vcpus_per_worker']} vCPU",
        f"wall time               {num(plan['wall_hours'], ' h', 1)}",
        f"vCPU-hours              {num(plan['vcpu_hours'])}  (ingest {num(plan['ingest_vcpu_hours'])}, "
        f"scoring {num(plan['scoring_vcpu_hours'])}, curation {num(plan['curation_vcpu_hours'])}"
        + (", not in the total)" if plan["curation_vcpu_hours"] is None else ")"),
        f"GPU-hours               {num(plan['gpu_hours'], '', 1)}",
        f"output                  {num(None if plan['output_bytes'] is None else plan['output_bytes'] / 1e12, ' TB', 2)}",
        f"cost                    {num(plan['cost'], ' (currency of the prices given)', 0)} "
        f"at {price_per_vcpu_hour} per vCPU-hour",
        "",
        "rests on (measured, one process per core):",
        f"  {rates.cpu_per_source_s:.5f} CPU-s per source second   ingest        {rates.sources['ingest']}",
        f"  {rates.clips_per_source_s:.5f} clips per source second  ingest",
        f"  {rates.kept_fraction:.3f} of clips kept by heuristics  ingest",
        f"  {rates.scoring_clips_per_cpu_s:.1f} clips scored per CPU-s     quality       {rates.sources['quality']}",
        f"  {num(rates.bytes_per_clip, ' bytes per clip')}  ingest",
        *[f"  {rate * 1000:.2f} CPU-s per 1000 new clips in a join of {n / 1e6:.2f}M clips   curation"
          + (f"   {rates.sources['scale']}" if i == 0 else "")
          for i, (n, rate) in enumerate(rates.curate_cpu_per_clip)],
        f"  sources of {num(rates.source_pixels, ' pixels a frame on average')} (decode cost grows with source "
        "pixels: 1080p is ~2.07M; measure a sample of your own sources with benchmarks/ingest.py --corpus)",
        "not included: download bandwidth and egress, storage, Dataflow job overhead",
    ]
    return "\n".join(lines)
