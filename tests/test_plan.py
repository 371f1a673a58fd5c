"""`genie-pipeline plan`: figures computed from the benchmark results given, by hand here."""
import json
import math

import pytest

from genie_pipeline.cli import main
from genie_pipeline.config import ConfigError, parse_config
from genie_pipeline.plan import Download, SourceFormat, make_plan, read_rates, source_format

H264 = SourceFormat("h264", 360, "test")


def _results(tmp_path, decode=True, **ingest_over):
    """50 clips per 1000 s of source, 40 kept; the whole ingest 0.05 CPU-s per source second, of
    which the bare decode 0.03 (the rest: 0.02); decode of h264 360p 0.02 (144p, the default
    format's: 0.01), vp9 360p 0.035."""
    ingest = {"pipeline_cpu_per_source_s": 0.05, "bare_decode_cpu_per_source_s": 0.03, "clips": 50,
              "clips_kept": 40, "source_seconds": 1000.0, "bytes_per_clip": 200_000, "date": "2026-12-02"}
    ingest.update(ingest_over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "ingest.json").write_text(json.dumps(ingest))
    (tmp_path / "quality.json").write_text(json.dumps({"cost": {"clips_per_scoring_cpu_s": 80.0}}))
    if decode:
        (tmp_path / "decode_codecs.json").write_text(json.dumps({
            "cells": [{"codec": "h264", "height": 360, "decode_cpu_per_source_s": 0.02, "kbps": 400.0,
                       "decoder": "h264"},
                      {"codec": "h264", "height": 144, "decode_cpu_per_source_s": 0.01, "kbps": 100.0,
                       "decoder": "h264"},
                      {"codec": "vp9", "height": 360, "decode_cpu_per_source_s": 0.035, "kbps": 300.0,
                       "decoder": "vp9"}],
            "not_measured": [{"codec": "av1", "reason": "no encoder in ffmpeg"}], "date": "2026-12-07"}))
    return tmp_path


def test_the_rest_of_the_ingest_is_the_pipeline_less_its_own_profiled_decode(tmp_path):
    """Where the pipeline decodes cheaper than the bare ffmpeg decode (in-process, no pipe), the
    difference of the two would say the cuts, heuristics and encode cost nothing: the profiled
    post-decode rate is used where the result has one."""
    old = read_rates(_results(tmp_path / "old", bare_decode_cpu_per_source_s=0.06))
    assert old.rest_cpu_per_source_s == 0.0
    new = read_rates(_results(tmp_path / "new", bare_decode_cpu_per_source_s=0.06, post_decode_cpu_per_source_s=0.015))
    assert new.rest_cpu_per_source_s == pytest.approx(0.015)
    p = make_plan(new, source_hours=1000, fmt=H264, download=Download(per_host_rate=2.0, mean_video_s=600),
                  workers=10)
    assert p["ingest_cpu_per_source_s"] == pytest.approx(0.015 + 0.02)


def test_plan_by_hand(tmp_path):
    rates = read_rates(_results(tmp_path))
    dl = Download(per_host_rate=2.0, mean_video_s=600, mbps_per_worker=100)
    p = make_plan(rates, source_hours=1000, fmt=H264, download=dl, workers=10, vcpus_per_worker=4,
                  price_per_vcpu_hour=0.5)
    source_s = 1000 * 3600
    kept = source_s * 0.05 * 0.8  # 50 clips per 1000 s, 40 of them kept
    cpu_per_s = (0.05 - 0.03) + 0.02  # the rest of the ingest + decode of h264 360p
    vcpu_h = source_s * cpu_per_s / 3600 + kept / 80 / 3600
    starts_h = source_s / 600 / 2.0 / 3600  # 6000 videos at 2 starts per second
    bytes_down = source_s * 400e3 / 8
    bandwidth_h = bytes_down / (10 * 100e6 / 8) / 3600
    assert p["ingest_cpu_per_source_s"] == pytest.approx(cpu_per_s)
    assert p["clips_after_heuristics"] == pytest.approx(kept)
    assert p["vcpu_hours"] == pytest.approx(vcpu_h)
    assert p["bounds_hours"] == pytest.approx({"cpu": vcpu_h / 40, "download_starts": starts_h,
                                               "bandwidth": bandwidth_h})
    assert p["binds"] == "cpu" and p["wall_hours"] == pytest.approx(vcpu_h / 40)
    assert p["bytes_downloaded"] == pytest.approx(bytes_down)
    assert p["bytes_stored_shards"] == pytest.approx(kept * 200_000)
    assert p["bytes_stored_clip_store"] == pytest.approx(source_s * 0.05 * 200_000)  # every clip cut
    assert p["vcpu_hours_billed"] == pytest.approx(40 * vcpu_h / 40)
    assert p["cost"] == pytest.approx(vcpu_h * 0.5)
    assert p["gpu_hours"] == 0.0
    no_store = make_plan(rates, source_hours=1000, fmt=H264, download=dl, workers=10, keep_clip_store=False)
    assert no_store["bytes_stored"] == pytest.approx(kept * 200_000)
    # linear in the hours of source
    assert make_plan(rates, source_hours=2000, fmt=H264, download=dl, workers=10)["vcpu_hours"] == \
        pytest.approx(2 * vcpu_h)
    # a wall time instead of workers: the fewest workers that make it
    w = make_plan(rates, source_hours=1000, fmt=H264, download=dl, wall_hours=1.0, vcpus_per_worker=4)
    assert w["workers"] == math.ceil(vcpu_h / 4) and w["wall_hours"] <= 1.0 and w["wall_hours_reachable"]


def test_clip_hours_convert_with_the_measured_clips_per_source_second(tmp_path):
    """244k hours in the paper are 55M clips of 16 s: clip time, not source time."""
    rates = read_rates(_results(tmp_path))
    p = make_plan(rates, clip_hours=244_000, clip_seconds=16, fmt=H264, workers=100)
    assert p["clips_cut"] == pytest.approx(244_000 * 3600 / 16)  # 54.9M
    assert p["source_hours"] == pytest.approx(244_000 * 3600 / 16 / 0.05 / 3600)  # one clip per 20 s of source
    assert p["clip_hours"] == pytest.approx(244_000)
    same = make_plan(rates, source_hours=p["source_hours"], clip_seconds=16, fmt=H264, workers=100)
    assert same["vcpu_hours"] == pytest.approx(p["vcpu_hours"])


def test_the_largest_bound_binds_and_workers_do_not_shorten_download_starts(tmp_path):
    rates = read_rates(_results(tmp_path))
    short_videos = Download(per_host_rate=1.0, mean_video_s=30)  # 120,000 videos: 33.3 h of starts
    p = make_plan(rates, source_hours=1000, fmt=H264, download=short_videos, workers=50)
    assert p["binds"] == "download_starts" and p["wall_hours"] == pytest.approx(1000 * 3600 / 30 / 3600)
    more = make_plan(rates, source_hours=1000, fmt=H264, download=short_videos, workers=100)
    assert more["wall_hours"] == p["wall_hours"] and more["vcpu_hours_billed"] == pytest.approx(
        2 * p["vcpu_hours_billed"])  # twice the workers waiting as long: twice the bill
    # a wall time under the start bound cannot be met: workers keep up with the starts instead
    w = make_plan(rates, source_hours=1000, fmt=H264, download=short_videos, wall_hours=10)
    assert not w["wall_hours_reachable"] and w["wall_hours"] == pytest.approx(p["wall_hours"])
    assert w["workers"] == math.ceil(w["vcpu_hours"] / (p["wall_hours"] * 4))
    # a fat source on few workers: bandwidth binds
    fat = Download(per_host_rate=100.0, mean_video_s=600, mbps_per_worker=10, source_kbps=50_000)
    b = make_plan(rates, source_hours=1000, fmt=H264, download=fat, workers=2)
    assert b["binds"] == "bandwidth" and b["wall_hours"] == pytest.approx(1000 * 3600 * 50e6 / 8 / (2 * 10e6 / 8) / 3600)


def test_decode_cost_follows_the_source_format_and_unmeasured_is_unknown(tmp_path):
    rates = read_rates(_results(tmp_path))
    vp9 = make_plan(rates, source_hours=100, fmt=SourceFormat("vp9", 360, "t"), workers=4)
    assert vp9["ingest_cpu_per_source_s"] == pytest.approx(0.02 + 0.035) and vp9["source_kbps"] == 300.0
    av1 = make_plan(rates, source_hours=100, fmt=SourceFormat("av1", 360, "t"), workers=4)
    assert av1["ingest_vcpu_hours"] is None and av1["vcpu_hours"] is None and av1["cost"] is None
    assert av1["wall_hours"] is None and "no encoder in ffmpeg" in av1["source_format"]["not_measured"]
    tall = make_plan(rates, source_hours=100, fmt=SourceFormat("h264", 1080, "t"), workers=4)
    assert tall["vcpu_hours"] is None and "not measured" in tall["source_format"]["not_measured"]
    # without the decode benchmark at all: unknown, and the table says how to measure it
    (tmp_path / "nodecode").mkdir()
    bare = read_rates(_results(tmp_path / "nodecode", decode=False))
    assert bare.decode_cell("h264", 360).endswith("run benchmarks/decode_codecs.py)")


def test_source_format_from_download_format():
    download = parse_config({}, require_sources=False).download
    default = download.selected_format(90)
    # the cheapest that serves 160x90: video-only H.264 at the 144p floor
    assert (source_format(default).codec, source_format(default).height) == ("h264", 144)
    assert source_format(download.model_copy(update={"codec_order": ["vp9"]}).selected_format(90)).codec == "vp9"
    assert source_format(download.selected_format(200)).height == 240
    old = "b[height<=360]/bv*[height<=360]+ba/b/bv*+ba"  # the default before: one file with audio, 360p
    assert (source_format(old).codec, source_format(old).height) == ("combined", 360)
    assert (source_format("bv*[height<=720]+ba/b").codec, source_format("bv*[height<=720]+ba/b").height) == ("vp9", 720)
    f = source_format("bv*[vcodec^=av01][height<=480]+ba")
    assert (f.codec, f.height) == ("av1", 480)
    assert source_format("b[height<300]").height == 240 and source_format("b").height == 360  # format 18
    assert source_format("bv*+ba").height is None  # the best there is: not in the table


def test_plan_cli_paper_scale_prints_every_bound_and_bytes(tmp_path, capsys):
    results = str(_results(tmp_path))
    assert main(["plan", "--results", results, "--clip-hours", "244000"]) == 0
    out = capsys.readouterr().out
    for line in ("244,000 h of clips", "CPU ", "download starts", "download bandwidth", "bound by",
                 "downloaded", "stored", "vCPU-hours billed", "h264 144p", "0.01000 CPU-s per source second"):
        assert line in out, line
    # the config flows in: four times the start rate, a quarter of the start bound
    assert main(["plan", "--results", results, "--source-hours", "1000", "--workers", "3", "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert main(["plan", "--results", results, "--source-hours", "1000", "--workers", "3", "--json",
                 "--set", "download.per_host_rate=8", "--source-format", "vp9:360"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert four["bounds_hours"]["download_starts"] == pytest.approx(one["bounds_hours"]["download_starts"] / 4)
    assert four["source_format"]["codec"] == "vp9"
    assert main(["plan", "--results", results, "--source-format", "av1:360", "--workers", "3"]) == 0
    assert "av1 360p: not measured (no encoder in ffmpeg)" in capsys.readouterr().out


def test_gpu_scoring_without_a_measured_rate_is_unknown_not_guessed(tmp_path):
    rates = read_rates(_results(tmp_path))
    p = make_plan(rates, source_hours=100, fmt=H264, workers=2, gpu=True)
    assert p["gpu_hours"] is None and p["cost"] is None and p["scoring_vcpu_hours"] == 0
    p = make_plan(rates, source_hours=100, fmt=H264, workers=2, gpu=True, gpu_clips_per_s=1000, price_per_gpu_hour=2.0)
    assert p["gpu_hours"] == pytest.approx(100 * 3600 * 0.05 * 0.8 / 1000 / 3600)
    assert p["gpu_hours_billed"] == pytest.approx(2 * p["wall_hours"])


@pytest.mark.parametrize("args, key", [
    (["--source-hours", "0"], "plan.source_hours"),
    (["--clip-hours", "-5"], "plan.clip_hours"),
    (["--workers", "-1"], "plan.workers"),
    (["--gpu-clips-per-s", "nan", "--gpu"], "plan.gpu_clips_per_s"),
    (["--mean-video-minutes", "0"], "plan.mean_video_minutes"),
    (["--mbps-per-worker", "-1"], "plan.mbps_per_worker"),
    (["--source-format", "x265:360"], "plan.source_format"),
    (["--hosts", "0"], "plan.hosts"),
    (["--clip-hours", "1", "--source-hours", "1"], "--source-hours: not allowed with argument --clip-hours"),
    (["--set", "download.per_host_rate=0"], "download.per_host_rate"),
])
def test_bad_plan_flags_exit_2_naming_them(tmp_path, capsys, args, key):
    with pytest.raises(SystemExit) if key.startswith("--") else _nothing() as e:
        assert main(["plan", "--results", str(_results(tmp_path)), *args]) == 2
    if key.startswith("--"):
        assert e.value.code == 2
    assert key in capsys.readouterr().err


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_missing_or_incomplete_results_exit_2(tmp_path, capsys):
    assert main(["plan", "--results", str(tmp_path / "nowhere")]) == 2
    assert "ingest.json does not exist" in capsys.readouterr().err
    _results(tmp_path, pipeline_cpu_per_source_s=None)
    with pytest.raises(ConfigError, match="lacks a measured rate"):
        read_rates(tmp_path)
    _results(tmp_path)
    (tmp_path / "decode_codecs.json").write_text(json.dumps({"cells": [{"codec": "h264"}]}))
    with pytest.raises(ConfigError, match="decode_codecs.json lacks a decode measurement"):
        read_rates(tmp_path)


def test_curation_rests_on_the_scale_benchmark(tmp_path, capsys):
    """Two measured sizes: a run of K kept clips costs K × the per-clip rate at K, interpolated
    on log scales; past the largest size, grown in proportion; without scale.json, unknown."""
    results = _results(tmp_path)
    rates = read_rates(results)
    assert make_plan(rates, source_hours=1000, fmt=H264, workers=10)["curation_vcpu_hours"] is None
    rows = [{"clips": n - 30_000, "curate_next": {"match_s": 30_000 * r, "new_clips": 30_000}}
            for n, r in ((1e5, 1e-4), (1e7, 4e-4))]
    (results / "scale.json").write_text(json.dumps({"next_run_videos": 1000, "clips_per_video": 30, "rows": rows}))
    rates = read_rates(results)
    kept = 1000 * 3600 * 0.05 * 0.8  # 144,000 clips: between the two sizes
    rate = math.exp(math.log(1e-4) + math.log(kept / 1e5) / math.log(100) * math.log(4))
    p = make_plan(rates, source_hours=1000, fmt=H264, workers=10)
    assert p["curation_vcpu_hours"] == pytest.approx(kept * rate / 3600)
    assert p["vcpu_hours"] == pytest.approx(p["ingest_vcpu_hours"] + p["scoring_vcpu_hours"] + p["curation_vcpu_hours"])
    big = make_plan(rates, source_hours=1_000_000, fmt=H264, workers=10)  # 144M clips: past 10M, in proportion
    assert big["curation_vcpu_hours"] == pytest.approx(144e6 * 4e-4 * 14.4 / 3600)
    assert main(["plan", "--results", str(results), "--source-hours", "10", "--workers", "3"]) == 0
    assert "CPU-s per 1000 new clips in a join of 10.00M clips" in capsys.readouterr().out
    (results / "scale.json").write_text(json.dumps({"rows": [{"clips": 1, "curate_next": {}}]}))
    with pytest.raises(ConfigError, match="scale.json lacks a curation measurement"):
        read_rates(results)


def test_the_committed_results_plan_the_paper(capsys):
    """The checkout's own benchmark results (decode_codecs.json included) give a whole plan."""
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert "244,000 h of clips" in out and "decode of h264 144p" in out and "not measured" not in out
