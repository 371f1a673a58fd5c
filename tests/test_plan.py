"""`genie-pipeline plan`: figures computed from the benchmark results given, by hand here."""
import json
import math

import pytest

from genie_pipeline.cli import main
from genie_pipeline.config import ConfigError
from genie_pipeline.plan import make_plan, read_rates


def _results(tmp_path, **ingest_over):
    ingest = {"pipeline_cpu_per_source_s": 0.05, "clips": 50, "clips_kept": 40, "source_seconds": 1000.0,
              "bytes_per_clip": 200_000, "source_pixels_per_frame_mean": 230_400, "date": "2026-12-02"}
    ingest.update(ingest_over)
    (tmp_path / "ingest.json").write_text(json.dumps(ingest))
    (tmp_path / "quality.json").write_text(json.dumps({"cost": {"clips_per_scoring_cpu_s": 80.0}}))
    return tmp_path


def test_plan_by_hand(tmp_path):
    rates = read_rates(_results(tmp_path))
    p = make_plan(rates, 1000, workers=10, vcpus_per_worker=4, price_per_vcpu_hour=0.5)
    source_s = 1000 * 3600
    kept = source_s * 0.05 * 0.8  # 50 clips per 1000 s, 40 of them kept
    vcpu_h = source_s * 0.05 / 3600 + kept / 80 / 3600
    assert p["clips_after_heuristics"] == pytest.approx(kept)
    assert p["vcpu_hours"] == pytest.approx(vcpu_h)
    assert p["wall_hours"] == pytest.approx(vcpu_h / 40)
    assert p["output_bytes"] == pytest.approx(kept * 200_000)
    assert p["cost"] == pytest.approx(vcpu_h * 0.5)
    assert p["gpu_hours"] == 0.0
    # linear in the hours of source
    assert make_plan(rates, 2000, workers=10, price_per_vcpu_hour=0.5)["vcpu_hours"] == pytest.approx(2 * vcpu_h)
    # a wall time instead of workers: the fewest workers that make it
    w = make_plan(rates, 1000, wall_hours=1.0, vcpus_per_worker=4)
    assert w["workers"] == -(-vcpu_h // 4) and w["wall_hours"] <= 1.0


def test_gpu_scoring_without_a_measured_rate_is_unknown_not_guessed(tmp_path):
    rates = read_rates(_results(tmp_path))
    p = make_plan(rates, 100, workers=2, gpu=True)
    assert p["gpu_hours"] is None and p["cost"] is None and p["scoring_vcpu_hours"] == 0
    p = make_plan(rates, 100, workers=2, gpu=True, gpu_clips_per_s=1000, price_per_gpu_hour=2.0)
    assert p["gpu_hours"] == pytest.approx(100 * 3600 * 0.05 * 0.8 / 1000 / 3600)


def test_plan_cli_prints_the_numbers_it_rests_on(tmp_path, capsys):
    assert main(["plan", "--results", str(_results(tmp_path)), "--source-hours", "10", "--workers", "3"]) == 0
    out = capsys.readouterr().out
    assert "0.05000 CPU-s per source second" in out and "80.0 clips scored per CPU-s" in out
    assert "3 × 4 vCPU" in out


@pytest.mark.parametrize("args, key", [
    (["--source-hours", "0"], "plan.source_hours"),
    (["--workers", "-1"], "plan.workers"),
    (["--gpu-clips-per-s", "nan", "--gpu"], "plan.gpu_clips_per_s"),
])
def test_bad_plan_flags_exit_2_naming_them(tmp_path, capsys, args, key):
    assert main(["plan", "--results", str(_results(tmp_path)), *args]) == 2
    assert key in capsys.readouterr().err


def test_missing_or_incomplete_results_exit_2(tmp_path, capsys):
    assert main(["plan", "--results", str(tmp_path / "nowhere")]) == 2
    assert "ingest.json does not exist" in capsys.readouterr().err
    _results(tmp_path, pipeline_cpu_per_source_s=None)
    with pytest.raises(ConfigError, match="lacks a measured rate"):
        read_rates(tmp_path)


def test_curation_rests_on_the_scale_benchmark(tmp_path, capsys):
    """Two measured sizes: a run of K kept clips costs K × the per-clip rate at K, interpolated
    on log scales; past the largest size, grown in proportion; without scale.json, unknown."""
    results = _results(tmp_path)
    rates = read_rates(results)
    assert make_plan(rates, 1000, workers=10)["curation_vcpu_hours"] is None
    rows = [{"clips": n - 30_000, "curate_next": {"match_s": 30_000 * r, "new_clips": 30_000}}
            for n, r in ((1e5, 1e-4), (1e7, 4e-4))]
    (results / "scale.json").write_text(json.dumps({"next_run_videos": 1000, "clips_per_video": 30, "rows": rows}))
    rates = read_rates(results)
    kept = 1000 * 3600 * 0.05 * 0.8  # 144,000 clips: between the two sizes
    rate = math.exp(math.log(1e-4) + math.log(kept / 1e5) / math.log(100) * math.log(4))
    p = make_plan(rates, 1000, workers=10)
    assert p["curation_vcpu_hours"] == pytest.approx(kept * rate / 3600)
    assert p["vcpu_hours"] == pytest.approx(p["ingest_vcpu_hours"] + p["scoring_vcpu_hours"] + p["curation_vcpu_hours"])
    big = make_plan(rates, 1_000_000, workers=10)  # 144M clips: past 10M, in proportion
    assert big["curation_vcpu_hours"] == pytest.approx(144e6 * 4e-4 * 14.4 / 3600)
    assert main(["plan", "--results", str(results), "--source-hours", "10", "--workers", "3"]) == 0
    assert "CPU-s per 1000 new clips in a join of 10.00M clips" in capsys.readouterr().out
    (results / "scale.json").write_text(json.dumps({"rows": [{"clips": 1, "curate_next": {}}]}))
    with pytest.raises(ConfigError, match="scale.json lacks a curation measurement"):
        read_rates(results)
