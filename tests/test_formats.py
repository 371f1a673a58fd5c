"""The default download format: the cheapest stream that serves the clip (ingest/config.py
cheapest_format), chosen by yt-dlp's own format selection, and the proof-of-origin token
provider's wiring. YouTube cannot be reached here: its format lists are written out below
(ids, heights and codec strings as YouTube gives them), and yt-dlp selects from them as it
would from the real page."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from yt_dlp import YoutubeDL

from genie_pipeline.ingest.config import CHEAPEST_SORT, DownloadConfig, PreflightError, cheapest_format
from genie_pipeline.ingest.download import Downloader, check_pot_provider

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "decode_codecs.json"


def fmt(fid: str, height: int | None, vcodec: str, acodec: str, ext: str = "mp4", tbr: float = 0) -> dict:
    return {"format_id": fid, "url": f"https://example.invalid/{fid}", "ext": ext, "height": height,
            "width": height and height * 16 // 9, "vcodec": vcodec, "acodec": acodec, "protocol": "https", "tbr": tbr}


YOUTUBE = [fmt("160", 144, "avc1.4d400c", "none", tbr=40), fmt("278", 144, "vp9", "none", "webm", 35),
           fmt("394", 144, "av01.0.00M.08", "none", tbr=30), fmt("133", 240, "avc1.4d4015", "none", tbr=70),
           fmt("242", 240, "vp9", "none", "webm", 60), fmt("134", 360, "avc1.4d401e", "none", tbr=120),
           fmt("18", 360, "avc1.42001E", "mp4a.40.2", tbr=400), fmt("140", None, "none", "mp4a.40.2", "m4a", 128)]


def chosen(formats: list[dict], height: int = 144, codec_order=("h264", "vp9", "av1")) -> str:
    opts = {"format": cheapest_format(height, list(codec_order)), "format_sort": CHEAPEST_SORT, "quiet": True,
            "simulate": True}
    with YoutubeDL(opts) as ydl:
        info = {"id": "x", "title": "t", "formats": [dict(f) for f in formats], "extractor": "t",
                "extractor_key": "T", "webpage_url": "https://example.invalid/x"}
        return ydl.process_ie_result(info, download=False)["format_id"]


def test_the_default_takes_the_smallest_video_only_stream_tall_enough_in_the_cheapest_codec():
    assert chosen(YOUTUBE) == "160"  # H.264 144p, video only: no audio, not 360p
    assert chosen(YOUTUBE, codec_order=("vp9", "h264")) == "278"
    assert chosen(YOUTUBE, height=200) == "133"  # the smallest at least that tall
    no_h264 = [f for f in YOUTUBE if not f["vcodec"].startswith("avc1") or f["acodec"] != "none"]
    assert chosen(no_h264) == "278"  # the next codec in the order
    # a site with combined files only: the smallest combined one tall enough, not the largest
    assert chosen([YOUTUBE[6], fmt("22", 720, "avc1.64001F", "mp4a.40.2", tbr=1000), YOUTUBE[7]]) == "18"
    # nothing tall enough: the tallest there is
    assert chosen([fmt("91", 90, "avc1", "none", tbr=10), fmt("92", 120, "avc1", "none", tbr=20)]) == "92"
    # a plain file (the generic extractor): that file
    assert chosen([{"format_id": "0", "url": "https://example.invalid/v.mp4", "ext": "mp4"}]) == "0"


def test_the_downloader_uses_the_default_with_its_sort_and_a_given_format_as_it_is(tmp_path):
    d = Downloader(DownloadConfig(), str(tmp_path / "a"), clip_height=90)
    opts = d._options("k", None, d.pool.identities[0])
    assert opts["format"] == cheapest_format(144, ["h264", "vp9", "av1"]) and opts["format_sort"] == CHEAPEST_SORT
    d = Downloader(DownloadConfig(min_height=90), str(tmp_path / "b"), clip_height=180)
    assert "[height>=180]" in d._options("k", None, d.pool.identities[0])["format"]
    d = Downloader(DownloadConfig(format="b"), str(tmp_path / "c"))
    opts = d._options("k", None, d.pool.identities[0])
    assert opts["format"] == "b" and "format_sort" not in opts


def test_the_default_codec_order_is_no_dearer_to_decode_than_the_measured_alternatives():
    """decode_codecs.json at the rungs the default takes (144p floor, 240p): no codec later in
    the order decodes more than 15 % cheaper than one before it (a measurement's noise on a
    shared machine), summed over both rungs."""
    cells = {(c["codec"], c["height"]): c for c in json.loads(RESULTS.read_text())["cells"]}
    order = DownloadConfig().codec_order
    cost = {c: sum(cells[(c, h)]["decode_cpu_per_source_s"] for h in (144, 240)) for c in order}
    for i, earlier in enumerate(order):
        for later in order[i + 1:]:
            assert cost[later] >= 0.85 * cost[earlier], (earlier, later, cost)
    # the video-only stream the default takes costs fewer bytes than the combined file it avoids
    combined = cells[("combined", 360)]["bytes_per_source_s"]
    assert cells[(order[0], 144)]["bytes_per_source_s"] * 3 < combined


def test_the_token_provider_is_configured_from_the_download_section(tmp_path):
    cfg = DownloadConfig(pot_provider="bgutil_http", pot_base_url="http://127.0.0.1:4999",
                         ytdlp_options={"extractor_args": {"youtube": {"player_client": ["mweb"]}}})
    d = Downloader(cfg, str(tmp_path / "s"))
    args = d._options("k", None, d.pool.identities[0])["extractor_args"]
    assert args == {"youtubepot-bgutilhttp": {"base_url": ["http://127.0.0.1:4999"]},
                    "youtube": {"player_client": ["mweb"]}}
    assert "extractor_args" not in Downloader(DownloadConfig(), str(tmp_path / "t"))._options(
        "k", None, d.pool.identities[0])
    installed = importlib.util.find_spec("yt_dlp_plugins.extractor.getpot_bgutil_http") is not None
    if installed:
        check_pot_provider(cfg)
    else:  # the plugin is an optional extra: a run that asks for it without it stops before any work
        with pytest.raises(PreflightError) as e:
            check_pot_provider(cfg)
        assert e.value.key == "download.pot_provider" and "genie-pipeline[pot]" in str(e.value)
    check_pot_provider(DownloadConfig())
