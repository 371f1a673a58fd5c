"""Every video and failure row of a files source says which file it is: its path and title,
where a URL is empty (before: a TooShort or probe failure row had neither, only a hashed id).
Real Beam (FnApiRunner), real ffmpeg-made videos."""
from __future__ import annotations

import pyarrow.parquet as pq

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import run_ingest
from tests.conftest import make_video


def test_files_rows_carry_path_and_title(tmp_path):
    vids = tmp_path / "videos"
    good = make_video(vids / "good_run.mp4", 17, size="320x180")
    short = make_video(vids / "short_one.mp4", 3, size="320x180")  # no full 16 s clip: TooShort
    broken = vids / "broken_file.mp4"
    broken.write_bytes(b"not a video at all" * 100)  # the probe fails
    cfg = parse_config({"sources": [{"type": "files", "name": "mine", "glob": str(vids / "*.mp4"),
                                     "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "filters": {"dedupe": {"enabled": False}}, "output": {"dir": str(tmp_path / "out")}})
    run_ingest(cfg)
    out = tmp_path / "out"
    failures = {r["path"]: r for r in pq.read_table(out / "failures").to_pylist()}
    assert set(failures) == {str(short), str(broken)}
    assert failures[str(short)]["error_type"] == "TooShort" and failures[str(short)]["title"] == "short one"
    assert failures[str(broken)]["stage"] == "probe" and failures[str(broken)]["title"] == "broken file"
    videos = {r["path"]: r for r in pq.read_table(out / "videos").to_pylist()}
    assert set(videos) == {str(good), str(short), str(broken)}
    assert {p: (v["status"], v["title"]) for p, v in videos.items()} == {
        str(good): ("done", "good run"), str(short): ("failed", "short one"), str(broken): ("failed", "broken file")}
