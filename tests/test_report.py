"""The ingest report and the live progress, on a real ingest.

One real run (FnApiRunner, two worker processes) of four videos found by a catalog: a moving
video with a hostile title, a black one (its clip rejected), a missing file and a broken one
(failures), and one title the keywords reject. The report's numbers must be the tables'
numbers; the progress lines must have come from the worker processes. Then: an output with
no clips, escaping, the CLI, and the page in real headless chromium (renders, every image
loads, no request leaves it).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from genie_pipeline.cli import main
from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import run_ingest
from genie_pipeline.ingest.progress import Progress
from genie_pipeline.shards.clip import encode_clip
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.reader import DataError
from genie_pipeline.shards.records import ClipRow, VideoResult, clip_key, video_key
from genie_pipeline.shards.report import write_report
from tests.conftest import make_video, wait_for_file
from tests import test_label_browser
from tests.fixtures.footage import sprite_frames
from tests.fixtures.output import write_output

playwright_browser = test_label_browser.playwright_browser  # the Debian chromium fixture, shared

HOSTILE = "<script>window.__pwned=1</script><img src=x onerror=\"window.__pwned=2\"> mario speedrun"
HOSTILE_CHANNEL = "<b>chan & co</b>"


# -------------------------------------------------------------------------- the page
class Tables(HTMLParser):
    """section id -> its tables (rows of cell texts), its <img> count and its figure captions."""

    def __init__(self, page: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self._sec = self._cell = None
        self._row: list | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._sec = self.sections.setdefault(a["id"], {"tables": [], "imgs": 0, "text": ""})
        elif self._sec is None:
            return
        elif tag == "table":
            self._sec["tables"].append([])
        elif tag == "tr":
            self._row = []
            self._sec["tables"][-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag == "img":
            self._sec["imgs"] += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "section":
            self._sec = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._sec is not None:
            self._sec["text"] += data

    def table(self, section: str, n: int = 0) -> dict[str, list[str]]:
        """A table as {first cell: the other cells}."""
        return {r[0]: r[1:] for r in self.sections[section]["tables"][n][1:]}


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def rows(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


# ----------------------------------------------------------------------- the real run
@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    moving = make_video(base / "moving.mp4", 33)
    black = make_video(base / "black.mp4", 17, src="color=black")
    broken = base / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    cat = base / "catalog.jsonl"
    cat.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "moving", "path": str(moving), "title": HOSTILE, "channel": HOSTILE_CHANNEL},
        {"id": "black", "path": str(black), "title": "black mario gameplay", "channel": "darkchan"},
        {"id": "missing", "path": str(base / "nowhere.mp4"), "title": "missing mario gameplay"},
        {"id": "broken", "path": str(broken), "title": "broken mario gameplay"},
        {"id": "film", "path": str(moving), "title": "mario movie speedrun"},
    ]))
    cfg = parse_config({"sources": [{"type": "catalog", "name": "cat", "path": str(cat)}],
                        "runner": {"running_mode": "multi_processing", "direct_num_workers": 2},
                        "shards": {"keep_clip_store": False}, "output": {"dir": str(base / "out")}})
    with contextlib.redirect_stderr(io.StringIO()) as err:  # where the launcher's progress goes
        stats = run_ingest(cfg)
    wait_for_file(base / "out" / "report.html")  # drawn by a process of its own (output.report: background)
    return {"out": base / "out", "stats": stats, "stderr": err.getvalue()}


@pytest.fixture(scope="module")
def page(ingested) -> Tables:
    return Tables((ingested["out"] / "report.html").read_text())


def test_every_ingest_writes_the_report_and_worker_processes_report_progress(ingested):
    # the report was written at the end of the run; the job's commit removed the clip store
    assert (ingested["out"] / "report.html").is_file()
    assert not (ingested["out"] / "clips").exists()
    assert f"ingest: report {ingested['out'] / 'report.html'} (being drawn in the background; log " \
        in ingested["stderr"]
    # the drawing process's log names the page it wrote
    logs = list((ingested["out"] / "logs").glob("report-*.log"))
    assert len(logs) == 1 and f"wrote {ingested['out'] / 'report.html'}" in logs[0].read_text()
    # the launcher's lines, from counts only the two worker processes made
    lines = ingested["stderr"].splitlines()
    assert "ingest: 5 candidates found, 4 kept by keywords, 0 done before" in lines
    assert "ingest: 100% of 4 videos: 2 done, 2 failed, 3 clips" in lines


def test_progress_lines_from_a_real_run(tmp_path, capfd):
    video = make_video(tmp_path / "v.mp4", 17)
    cat = tmp_path / "c.jsonl"
    cat.write_text(json.dumps({"id": "v", "path": str(video), "title": "v"}) + "\n"
                   + json.dumps({"id": "gone", "path": str(tmp_path / "gone.mp4"), "title": "gone"}) + "\n")
    run_ingest(parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                             "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                             "output": {"dir": str(tmp_path / "out")}}))
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("ingest: ")]
    assert "ingest: 2 candidates found, 2 kept by keywords, 0 done before" in lines
    assert "ingest: 100% of 2 videos: 1 done, 1 failed, 1 clips" in lines
    assert not any("%|" in x for x in err.splitlines())  # no tqdm bar when stderr is not a terminal


def test_report_numbers_are_the_tables_numbers(ingested, page):
    out = ingested["out"]
    videos, manifest = rows(out, "videos"), rows(out, "manifest")
    summary = page.table("summary")
    assert summary["videos done"] == ["2"] and summary["videos failed"] == ["2"]
    assert summary["clips cut"] == [str(len(manifest))] == ["3"]
    assert summary["clips kept"] == ["2"]
    assert summary["time in"] == [hms(sum(v["seconds_in"] for v in videos))]

    per_source = page.table("hours", 0)
    kept_s = sum(r["duration_s"] for r in manifest if r["kept"])
    assert per_source["cat"] == ["4", "2", "2", hms(sum(v["seconds_in"] for v in videos)),
                                 hms(sum(v["seconds_out"] for v in videos)), hms(kept_s), "3", "2"]
    per_channel = page.table("hours", 1)
    moving = next(v for v in videos if v["video_id"] == "moving")
    assert per_channel[HOSTILE_CHANNEL] == ["1", "1", "0", hms(moving["seconds_in"]), "0:00:32", "0:00:32", "2", "2"]
    assert per_channel["darkchan"][-2:] == ["1", "0"]
    assert per_channel["(unknown)"][:3] == ["2", "0", "2"]  # the failed videos


def test_report_reasons_scores_and_failures(ingested, page):
    out = ingested["out"]
    manifest, failures = rows(out, "manifest"), rows(out, "failures")
    keywords = {(r[0], r[1]): r[2] for r in page.sections["reasons"]["tables"][0][1:]}
    assert keywords == {("keep", "-"): "4", ("reject", "excluded:movie"): "1"}
    assert page.table("reasons", -1) == {"kept": ["2", "66.7%"], "black": ["1", "33.3%"]}

    # a histogram per score, with its threshold and the clips on its reject side
    assert page.sections["scores"]["imgs"] == 4  # quality_score is unscored (NULL): no histogram
    dark = page.sections["scores"]["tables"][1]
    dark = {r[0]: r[1] for r in dark[1:]}
    assert dark["threshold"] == "filters.heuristics.max_dark_fraction = 0.8 (keep below)"
    assert dark["clips on the reject side"] == str(sum(r["dark_fraction"] > 0.8 for r in manifest)) == "1"

    by_type = Counter(f"{f['stage']}:{f['error_type']}" for f in failures)
    shown = page.table("failures")
    assert {k: v[0] for k, v in shown.items()} == {k: str(n) for k, n in by_type.items()}
    missing = next(f for f in failures if f["video_id"] == "missing")
    assert missing["message"][:300] in shown[f"{missing['stage']}:{missing['error_type']}"][1]


def test_report_clip_counts_duplicates_and_contact_sheets(ingested, page):
    top = page.table("clips", 0)
    assert top[HOSTILE] == ["cat_moving", "2", "2"]
    assert top["black mario gameplay"] == ["cat_black", "1", "0"]
    fingerprinted = sum(r["fingerprint"] is not None for r in rows(ingested["out"], "manifest"))
    assert (f"No clip is marked as a duplicate ({fingerprinted} of 3 clips have a fingerprint)"
            in page.sections["duplicates"]["text"])
    # kept clips from the shards; the rejected one lived only in the clip store, which the
    # job deleted at its commit (shards.keep_clip_store: false): the sheet says so
    assert page.sections["sheets"]["imgs"] == 2
    assert "kept (2 clips)" in page.sections["sheets"]["text"]
    assert "black (1 clips)" in page.sections["sheets"]["text"]
    assert "None of these clips is still stored" in page.sections["sheets"]["text"]


def test_data_is_escaped(ingested):
    html = (ingested["out"] / "report.html").read_text()
    assert "<script" not in html and "onerror=\"" not in html and "<b>chan" not in html
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in html
    assert "&lt;b&gt;chan &amp; co&lt;/b&gt;" in html


# ------------------------------------------------------------------------ edge cases
def test_an_output_with_no_clips_renders_and_says_so(tmp_path):
    write_output(tmp_path / "out", [], [], ClipsConfig().spec)
    page = Tables(Path(write_report(str(tmp_path / "out"))).read_text())
    assert "This output holds no clips." in page.sections["summary"]["text"]
    assert page.table("summary")["clips cut"] == ["0"]
    assert "No scored clips." in page.sections["scores"]["text"]
    assert "No clips to show." in page.sections["sheets"]["text"]


def test_duplicates_and_their_contact_sheet(tmp_path):
    spec = ClipsConfig().spec
    data = encode_clip(sprite_frames(3, spec), spec)
    videos, keys = [], []
    for vid, title in (("orig", "the original"), ("copy", "<i>re-upload</i>"), ("copy2", "another copy")):
        vkey = video_key("web", vid)
        dup = keys[0] if keys else None
        row = ClipRow(key=clip_key(vkey, 0), video_key=vkey, video_id=vid, source="web", title=title, start_s=0.0,
                      duration_s=16.0, n_frames=spec.frames, bytes=len(data), kept=dup is None,
                      reason="duplicate" if dup else "", fingerprint="0123456789abcdef", duplicate_of=dup)
        keys.append(row.key)
        videos.append((VideoResult(video_key=vkey, video_id=vid, source="web", title=title, status="done",
                                   clips=[row], seconds_in=16.0, seconds_out=16.0), [(row.key, data)]))
    write_output(tmp_path / "out", videos, [], spec)
    page = Tables(Path(write_report(str(tmp_path / "out"))).read_text())
    assert "2 clips duplicate 1 kept representatives." in page.sections["duplicates"]["text"]
    assert page.table("duplicates") == {keys[0]: ["the original", "2"]}
    assert page.table("reasons", -1) == {"duplicate": ["2", "66.7%"], "kept": ["1", "33.3%"]}
    assert "duplicate (2 clips)" in page.sections["sheets"]["text"]
    assert "<i>re-upload</i> · web_copy_000000000" in page.sections["sheets"]["text"]
    assert page.sections["sheets"]["imgs"] == 3


def test_not_an_output(tmp_path):
    with pytest.raises(DataError, match="not an ingest output"):
        write_report(str(tmp_path))


def test_cli_report(ingested, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(ingested["out"], out)
    (out / "report.html").unlink()
    assert main(["report", str(out), "--set", "filters.heuristics.min_motion=7.5"]) == 0
    assert capsys.readouterr().out == f"wrote {out / 'report.html'}\n"
    assert "filters.heuristics.min_motion = 7.5 (keep above)" in (out / "report.html").read_text()
    assert main(["report", str(tmp_path / "none")]) == 2
    assert "is not an ingest output" in capsys.readouterr().err


# ---------------------------------------------------------------------------- progress
class Terminal(io.StringIO):
    def isatty(self):
        return True


def _feed(path: Path, **counts):
    with open(path, "a") as f:
        f.writelines(f"{k} {v}\n" for k, v in counts.items())


def test_progress_lines_every_step_and_a_bar_on_a_terminal(tmp_path):
    log = tmp_path / "progress.log"
    lines = io.StringIO()
    with Progress(str(log), already=1, stream=lines, step_pct=25, interval_s=3600) as p:
        assert os.environ["GENIE_PROGRESS"] == str(log)  # worker processes inherit it
        _feed(log, candidates=6, keyword_kept=5, keyword_rejected=1)
        p.poll()
        assert lines.getvalue() == ""  # discovery alone: no total yet
        _feed(log, videos_done=1, clips_cut=3)
        p.poll()
        _feed(log, failed_download=1)
        with open(log, "a") as f:
            f.write("clips_c")  # a line still being written is read at the next poll
        p.poll()
        with open(log, "a") as f:
            f.write("ut 2\n")
        _feed(log, videos_done=2)
    assert "GENIE_PROGRESS" not in os.environ
    out = lines.getvalue().splitlines()
    assert out[0] == "ingest: 6 candidates found, 5 kept by keywords, 1 done before"
    assert out[1].startswith("ingest: 25% of 4 videos: 1 done, 0 failed, 3 clips, eta ")
    assert out[2].startswith("ingest: 50% of 4 videos: 1 done, 1 failed, 3 clips, eta ")
    assert out[3:] == ["ingest: 100% of 4 videos: 3 done, 1 failed, 5 clips"]

    tty = Terminal()
    with Progress(str(tmp_path / "tty.log"), stream=tty, interval_s=3600) as p:
        _feed(tmp_path / "tty.log", keyword_kept=4, videos_done=1, clips_cut=2)
        p.poll()
        assert "1/4" in tty.getvalue() and "1 done, 0 failed, 2 clips" in tty.getvalue()
    assert "1/1" in tty.getvalue()  # the job is over: the total is what was processed


# ----------------------------------------------------------------------------- browser
def test_report_in_chromium(ingested, playwright_browser):
    path = ingested["out"] / "report.html"
    url = path.as_uri()
    page = playwright_browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    imgs = page.evaluate("() => [...document.images].map(i => [i.complete, i.naturalWidth])")
    # (7: the rejected clip's contact sheet went with the clip store, deleted at the commit)
    assert len(imgs) == 7 and all(done and w > 0 for done, w in imgs)
    assert page.evaluate("() => window.__pwned") is None
    assert page.inner_text("h1") == "Ingest report"
    assert HOSTILE in page.inner_text("#clips")
    assert [u for u in requests if u != url and not u.startswith("data:")] == []
    assert errors == []
    page.close()


def test_a_run_that_changed_nothing_does_not_redraw_the_report():
    from genie_pipeline.ingest.pipeline import changed_output

    assert not changed_output({}) and not changed_output({"keyword_kept": 40, "stores_reused": 0})
    # discovery's failures are recorded again by every run: the same rows
    assert not changed_output({"failed_discover": 2, "failed_DisallowedScheme": 2})
    for k in ("videos_done", "failed_download", "shards_written", "shards_purged", "clips_cut"):
        assert changed_output({"keyword_kept": 3, k: 1}), k
