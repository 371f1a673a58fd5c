"""The embedded sample corpus: generation, files, server, yt-dlp search backend.

The small corpus is generated once per code version into a cache (see
`genie_pipeline.corpus.generate.cached_small_corpus`); the determinism test generates it again.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("ale_py")
pytest.importorskip("pybullet")

from genie_pipeline.corpus import generate as G  # noqa: E402
from genie_pipeline.corpus.serve import CorpusServer, search_catalog  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BROKEN_KINDS = {"truncated", "zero_byte", "not_video", "no_moov", "random_bytes", "garbage_packets",
                "too_short", "audio_only", "http_404", "http_500"}
BAD_KINDS = {"static_menu", "webcam_overlay", "slideshow", "blur", "black", "letterbox", "rapid_cuts"}


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="session")
def corpus() -> Path:
    return G.cached_small_corpus(None, seed=0)


@pytest.fixture(scope="session")
def rows(corpus) -> list[dict]:
    return G.read_catalog(corpus)


@pytest.fixture(scope="session")
def by_id(rows) -> dict[str, dict]:
    return {r["id"]: r for r in rows}


@pytest.fixture
def server(corpus):
    with CorpusServer(corpus) as srv:
        yield srv


def _row(rows, made_how):
    return next(r for r in rows if r["made_how"] == made_how)


def _get(srv, path, headers=None, method="GET", timeout=10):
    """A raw request (http.client sends the path exactly as given: no normalisation)."""
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        c.endheaders()
        r = c.getresponse()
        body = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        c.close()


def _decode_frames_hash(path) -> tuple[int, str]:
    h = hashlib.sha256()
    n = 0
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            h.update(f.to_ndarray(format="rgb24").tobytes())
            n += 1
    return n, h.hexdigest()


# ------------------------------------------------------------------------------- catalog
def test_catalog_schema_and_contents(corpus, rows):
    keys = {"id", "title", "description", "duration", "file", "url", "kind", "game", "quality_label",
            "made_how", "expect_keyword", "keyword_set", "expect_failure", "width", "height", "fps",
            "frames", "rotation", "vfr", "has_audio", "renderer", "seed", "bytes", "sha256", "actions"}
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    for r in rows:
        assert set(r) == keys, r["id"]
        assert re.fullmatch(r"gc\d{4}", r["id"])
        assert r["kind"] in ("game", "robot", "broken")
        assert r["quality_label"] in ("good", "bad", None)
        assert r["expect_keyword"] in ("keep", "reject")
        assert (r["kind"] == "broken") == (r["expect_failure"] is not None)
        assert (r["quality_label"] is None) == (r["kind"] == "broken")
        if r["file"] is not None:
            assert r["file"] == f"videos/{r['id']}.mp4"
            p = corpus / r["file"]
            assert p.is_file() and p.stat().st_size == r["bytes"]
            assert hashlib.sha256(p.read_bytes()).hexdigest() == r["sha256"]
        else:
            assert r["url"] in ("/status/404", "/status/500")
        if r["quality_label"] == "good":
            assert r["made_how"] == "clean"
        if r["quality_label"] == "bad":
            assert r["made_how"] in BAD_KINDS
    good_games = [r for r in rows if r["quality_label"] == "good" and r["kind"] == "game"]
    assert len(good_games) >= 4 and len({r["game"] for r in good_games}) >= 3
    assert all(17 <= r["duration"] <= 40 for r in good_games)
    assert any(r["kind"] == "robot" for r in rows)
    assert sum(r["quality_label"] == "bad" for r in rows) >= 2
    assert BROKEN_KINDS <= {r["made_how"] for r in rows}
    # formats: 4:3, rotated, VFR
    assert any((r["width"], r["height"]) == (480, 360) for r in rows)
    assert any(r["rotation"] == 90 for r in rows)
    assert any(r["vfr"] for r in rows)
    # hostile titles
    titles = [r["title"] for r in rows]
    assert any("../" in t for t in titles)
    assert any(any(ord(ch) < 32 for ch in t) for t in titles)
    assert any(len(t.encode()) >= 10_000 for t in titles)
    assert any("<script>" in t for t in titles)
    info = json.loads((corpus / "corpus.json").read_text())
    assert info["size"] == "small" and info["renderers"]["ale"] and info["renderers"]["pybullet"]


def test_keyword_expectations(rows):
    for r in rows:
        assert r["expect_keyword"] == G.keyword_verdict(r["title"]), r["title"][:80]
    rejected = {r["title"] for r in rows if r["expect_keyword"] == "reject"}
    assert {"Unboxing my Atari 2600 collection", "Kangaroo review"} <= rejected
    assert all(r["expect_keyword"] == "reject" for r in rows if r["kind"] == "robot")
    assert sum(r["expect_keyword"] == "keep" and r["quality_label"] == "good" for r in rows) >= 3
    assert G.keyword_verdict("Pitfall Movie Trailer Reaction") == "reject"
    assert G.keyword_verdict("Montezuma's Revenge - Full Playthrough (No Commentary)") == "keep"


def test_full_plan_has_enough_labelled_videos():
    full = G.plan("full", procgen=False)
    good = [s for s in full if s["quality_label"] == "good" and s["kind"] == "game"]
    bad = [s for s in full if s["quality_label"] == "bad"]
    assert len(good) >= 12 and len(bad) >= 10
    assert {s["made_how"] for s in bad} == BAD_KINDS | {"montage"}
    assert any((s["width"], s["height"]) == (1280, 720) for s in full)
    assert len(G.plan("full", procgen=True)) == len(full) + 3  # two CoinRun levels and the resets
    with pytest.raises(ValueError):
        G.plan("huge")


def test_quality_plan_covers_every_degradation_on_games_and_robots():
    from genie_pipeline.corpus import degrade as D

    q = G.plan("quality", procgen=True)
    assert len({s["id"] for s in q}) == len(q)
    games = {s["game"] for s in q if s["kind"] == "game"}
    robots = {s["game"] for s in q if s["kind"] == "robot"}
    assert len(games) >= 20 and "coinrun" in games and robots == set(D.ROBOTS) and len(robots) >= 3
    # labelled clips an ingest can cut: montages and fades have no 16 s shot (measured: 437 of these 460)
    clips = sum(int(s["duration"] // G.CLIP_SECONDS) for s in q if s["made_how"] not in (*D.MONTAGES, "fade"))
    assert clips >= 450
    for family in ("game", "robot"):  # every degradation on platformers AND robots
        kinds = [s["made_how"] for s in q if s["kind"] == family and s["quality_label"] == "bad"]
        assert set(kinds) == set(D.KINDS), family
    for g in games | robots:  # holding out a source holds out clean and degraded videos of it
        assert {s["quality_label"] for s in q if s["game"] == g} == {"good", "bad"}
    montages = [s for s in q if s["made_how"] in D.MONTAGES]
    assert all(len(set(s["games"])) >= 3 and s["game"] in s["games"] for s in montages)
    assert all({g in robots for g in s["games"]} == {s["kind"] == "robot"} for s in montages)
    from ale_py import roms

    assert all(roms.get_rom_path(g) for g in games - {"coinrun"})


@pytest.mark.parametrize("source", ["pitfall", pytest.param("xarm", marks=pytest.mark.slow)])
def test_every_quality_degradation_renders_what_it_says(tmp_path, source):
    """Each degradation, 2 s of it on a platformer and on a robot arm, written and probed;
    what it covers measured on its frames (the README's table)."""
    from genie_pipeline.corpus import degrade as D
    from genie_pipeline.corpus.encode import probe

    def spec(how):
        return dict(made_how=how, fps=15, seed=5, width=320, height=180, duration=2, game=source,
                    games=[source, "kuka" if source == "xarm" else "qbert", "boxing" if source != "xarm" else "panda"])

    def frames(how):
        return np.stack(list(D.frames(spec(how), np.random.default_rng(0)))[:30]).astype(np.int16)

    clean = frames("clean")
    D.render(spec("compression"), tmp_path / "c.mp4")
    assert probe(tmp_path / "c.mp4")["frames"] == 30
    for how in ("static_menu", "map_screen", "title_card"):  # held: nothing moves but noise and a cursor
        assert (np.abs(np.diff(frames(how), axis=0)) > 8).mean() < 0.005, how
    assert frames("black").mean() < 12 and clean.mean() > 40
    lb = frames("letterbox")
    assert (lb.max(axis=(0, 3)) <= 3).mean() > 0.85  # mostly black around a small box
    chat = frames("chat_overlay")
    col = chat[:, :, -100:]  # the chat column on the right: dark, with bright text rows
    assert np.median(col) < 70 and 0.03 < (col.min(axis=3) >= 150).mean() < 0.5
    blocks = frames("compression")[0]
    assert (blocks[::8, ::8] == blocks[7::8, 7::8]).all()  # 8x8 blocks of one colour at 320x180
    fade = np.stack(list(D.frames({**spec("fade"), "duration": 10}, np.random.default_rng(0)))).astype(np.int16)
    dark = fade.mean(axis=(1, 2, 3)) < 3
    assert 0.2 < dark.mean() < 0.8


# -------------------------------------------------------------------------------- videos
def test_videos_probe_to_catalog(corpus, rows):
    checked = 0
    for r in rows:
        if r["file"] is None or r["expect_failure"] not in (None, "too_short"):
            continue
        with av.open(str(corpus / r["file"])) as c:
            s = c.streams.video[0]
            dur = float(s.duration * s.time_base)
            assert abs(dur - r["duration"]) <= 0.1, (r["id"], dur, r["duration"])
            assert abs(c.duration / 1e6 - r["duration"]) <= 0.1, r["id"]
            assert (s.codec_context.width, s.codec_context.height) == (r["width"], r["height"])
            assert s.codec_context.name == "h264" and s.codec_context.pix_fmt == "yuv420p"
            assert bool(c.streams.audio) == r["has_audio"]
            pts, rot = [], None
            for f in c.decode(s):
                pts.append(f.pts)
                rot = f.rotation if rot is None else rot
            assert len(pts) == r["frames"], r["id"]
            assert rot == r["rotation"]
            steps = {b - a for a, b in zip(pts, pts[1:])}
            assert (len(steps) > 1) == r["vfr"], (r["id"], steps)
            if not r["vfr"]:
                assert abs(len(pts) / r["duration"] - r["fps"]) < 0.01
        checked += 1
    assert checked >= 10


def test_expected_clip_counts(rows):
    clips = {r["id"]: math.floor(r["duration"] / G.CLIP_SECONDS) for r in rows
             if r["file"] and r["expect_failure"] in (None, "too_short")}
    assert clips[_row(rows, "too_short")["id"]] == 0
    assert all(n >= 1 for i, n in clips.items() if i != _row(rows, "too_short")["id"])
    assert sum(clips.values()) >= 10


def test_broken_files_really_fail(corpus, rows):
    def outcome(path, claimed):
        try:
            c = av.open(str(path))
        except av.error.FFmpegError:
            return "open_error"
        with c:
            if not c.streams.video:
                return "no_video"
            n = 0
            try:
                for _ in c.decode(video=0):
                    n += 1
            except av.error.FFmpegError:
                return "decode_error"
            return "short" if n < 0.9 * claimed else "ok"

    expect = {"zero_byte": {"open_error"}, "not_video": {"open_error"}, "random_bytes": {"open_error"},
              "no_moov": {"open_error"}, "garbage_packets": {"decode_error", "short"},
              "truncated": {"decode_error", "short"}, "audio_only": {"no_video"}, "too_short": {"ok"}}
    for how, allowed in expect.items():
        r = _row(rows, how)
        got = outcome(corpus / r["file"], r["frames"] or 1)
        assert got in allowed, (how, got)
    assert (corpus / _row(rows, "zero_byte")["file"]).stat().st_size == 0
    assert _row(rows, "too_short")["duration"] < G.CLIP_SECONDS


def test_degraded_videos_look_degraded(corpus, rows):
    def gray_frames(path, every=15):
        out = []
        with av.open(str(path)) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i % every == 0:
                    out.append(f.to_ndarray(format="gray").astype("float32"))
        return out

    import numpy as np

    clean = gray_frames(corpus / _row(rows, "clean")["file"])
    static = gray_frames(corpus / _row(rows, "static_menu")["file"])
    motion = lambda fr: float(np.mean([np.abs(b - a).mean() for a, b in zip(fr, fr[1:])]))  # noqa: E731
    assert motion(static) < 0.2 < motion(clean)
    slides = gray_frames(corpus / _row(rows, "slideshow")["file"], every=3)
    still = sum(np.abs(b - a).mean() < 0.5 for a, b in zip(slides, slides[1:])) / (len(slides) - 1)
    assert still > 0.8
    cuts = gray_frames(corpus / _row(rows, "rapid_cuts")["file"], every=3)
    big = sum(np.abs(b - a).mean() > 20 for a, b in zip(cuts, cuts[1:]))
    assert big / (len(cuts) / 10) * 60 > 60  # > 60 cuts per minute


@pytest.mark.slow
def test_small_corpus_is_deterministic(corpus, rows, tmp_path):
    t0 = time.perf_counter()
    cat = G.generate_corpus(tmp_path / "again", seed=0, size="small", lerobot=False)
    took = time.perf_counter() - t0
    assert cat == tmp_path / "again" / "catalog.jsonl"
    assert cat.read_bytes() == (corpus / "catalog.jsonl").read_bytes()  # includes every file's sha256
    gid = _row(rows, "clean")["file"]
    assert _decode_frames_hash(tmp_path / "again" / gid) == _decode_frames_hash(corpus / gid)
    print(f"small corpus generated in {took:.1f} s")


def test_cache_is_reused(corpus):
    t = (corpus / "catalog.jsonl").stat().st_mtime_ns
    assert G.cached_small_corpus(corpus.parent, seed=0) == corpus
    assert (corpus / "catalog.jsonl").stat().st_mtime_ns == t


def test_lerobot_dataset(corpus):
    import pyarrow.parquet as pq

    root = corpus / "lerobot"
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 30
    feat = info["features"]["observation.images.front"]
    assert feat["dtype"] == "video" and len(feat["shape"]) == 3 and feat["shape"][2] == 3
    assert "action" in info["features"]
    ep = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert len(ep) == 2
    k = "videos/observation.images.front/"
    for e in ep:
        assert e[k + "to_timestamp"] - e[k + "from_timestamp"] >= 17
        assert abs((e[k + "to_timestamp"] - e[k + "from_timestamp"]) * 30 - e["length"]) < 1e-6
        assert isinstance(e["tasks"], list) and e["tasks"]
    assert ep[1][k + "from_timestamp"] == ep[0][k + "to_timestamp"]
    vid = root / info["video_path"].format(video_key="observation.images.front", chunk_index=0, file_index=0)
    with av.open(str(vid)) as c:
        s = c.streams.video[0]
        assert [s.codec_context.height, s.codec_context.width, 3] == feat["shape"]
        assert abs(float(s.duration * s.time_base) - ep[-1][k + "to_timestamp"]) < 0.05
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    assert data.num_rows == sum(e["length"] for e in ep) == info["total_frames"]
    assert "action" in data.column_names


# -------------------------------------------------------------------------------- server
def test_server_serves_files_with_ranges(server, corpus, by_id):
    data = (corpus / "videos" / "gc0001.mp4").read_bytes()
    st, h, body = _get(server, "/videos/gc0001.mp4")
    assert st == 200 and body == data
    assert h["content-type"] == "video/mp4" and int(h["content-length"]) == len(data)
    assert h["accept-ranges"] == "bytes"
    st, h, body = _get(server, "/videos/gc0001.mp4", {"Range": "bytes=100-199"})
    assert st == 206 and body == data[100:200]
    assert h["content-range"] == f"bytes 100-199/{len(data)}" and h["content-length"] == "100"
    st, h, body = _get(server, "/videos/gc0001.mp4", {"Range": f"bytes={len(data) - 10}-"})
    assert st == 206 and body == data[-10:]
    st, h, body = _get(server, "/videos/gc0001.mp4", {"Range": "bytes=-25"})
    assert st == 206 and body == data[-25:]
    st, h, body = _get(server, "/videos/gc0001.mp4", {"Range": f"bytes={len(data)}-"})
    assert st == 416 and h["content-range"] == f"bytes */{len(data)}"
    st, h, body = _get(server, "/videos/gc0001.mp4", method="HEAD")
    assert st == 200 and body == b"" and int(h["content-length"]) == len(data)
    st, h, body = _get(server, "/catalog.jsonl")
    assert st == 200 and body == (corpus / "catalog.jsonl").read_bytes()
    st, h, body = _get(server, "/videos/" + by_id["gc0001"]["id"] + ".mp4?x=1")
    assert st == 200
    assert server.hits("/videos/gc0001.mp4") == 7


def test_server_blocks_path_traversal(server, tmp_path, corpus):
    secret = tmp_path / "secret.txt"
    secret.write_text("nope")
    for path in ["/videos/../../../../etc/passwd", "/../catalog.jsonl", "/videos/%2e%2e/%2e%2e/etc/passwd",
                 "//etc/passwd", "/videos/..%2f..%2f..%2fetc%2fpasswd", "/%2fetc%2fpasswd",
                 "/videos/gc0001.mp4%00.txt", "/videos/..\\..\\etc\\passwd", "/flaky/0/../../etc/passwd",
                 "/hang/../../etc/passwd", "/videos/", "/", "/nonexistent.mp4", str(secret)]:
        st, _, body = _get(server, path)
        assert st == 404, path
        assert b"root:" not in body and b"nope" not in body
    # a symlink inside the served dir that points outside is not followed out
    d = tmp_path / "c"
    (d / "videos").mkdir(parents=True)
    (d / "videos" / "link.mp4").symlink_to(secret)
    (d / "videos" / "ok.mp4").write_bytes(b"x" * 10)
    with CorpusServer(d) as srv:
        assert _get(srv, "/videos/link.mp4")[0] == 404
        assert _get(srv, "/videos/ok.mp4")[2] == b"x" * 10
        assert _get(srv, "/search?q=pitfall")[2] == b'{"query": "pitfall", "results": []}'


def test_server_status_flaky_and_hang_routes(server, corpus):
    assert _get(server, "/status/404")[0] == 404
    assert _get(server, "/status/500")[0] == 500
    assert _get(server, "/status/500")[0] == 500  # always
    path = "/flaky/3/videos/gc0001.mp4"
    for _ in range(3):
        st, h, _b = _get(server, path)
        assert st == 429 and h["retry-after"] == "0"
    st, _, body = _get(server, path)
    assert st == 200 and body == (corpus / "videos" / "gc0001.mp4").read_bytes()
    assert _get(server, path)[0] == 200
    assert server.hits(path) == 5
    fresh = path + "?fresh=1"  # a query string starts a fresh count
    assert [_get(server, fresh)[0] for _ in range(4)] == [429, 429, 429, 200]
    assert server.hits(fresh) == 4 and server.hits(path) == 9
    assert _get(server, "/flaky/1/videos/gc0002.mp4", {"Range": "bytes=0-3"})[0] == 429
    st, _, body = _get(server, "/flaky/1/videos/gc0002.mp4", {"Range": "bytes=0-3"})
    assert st == 206 and len(body) == 4
    t0 = time.perf_counter()
    with pytest.raises(OSError):  # socket.timeout is an OSError
        _get(server, "/hang/videos/gc0001.mp4", timeout=0.5)
    assert time.perf_counter() - t0 < 5
    t0 = time.perf_counter()
    server.stop()  # wakes the hanging handler
    assert time.perf_counter() - t0 < 5


def test_server_search(server, rows):
    st, h, body = _get(server, "/search?q=kangaroo+walkthrough&n=50")
    assert st == 200 and h["content-type"] == "application/json"
    res = json.loads(body)["results"]
    assert res[0]["title"].startswith("<script>")  # the only row with both words
    for r in res:
        assert set(r) - {"actions_url"} == {"id", "title", "description", "duration", "url"}
        text = (r["title"] + " " + r["description"]).lower()
        assert "kangaroo" in text or "walkthrough" in text
        assert r["url"].startswith(server.url + "/")
    assert len(json.loads(_get(server, "/search?q=kangaroo&n=1")[2])["results"]) == 1
    assert json.loads(_get(server, "/search?q=zzzqqq")[2])["results"] == []
    res = {r["id"]: r["url"] for r in json.loads(_get(server, "/search?q=montezuma&n=100")[2])["results"]}
    flaky = next(r for r in rows if r["url"] and r["url"].startswith("/flaky/"))
    assert res[flaky["id"]] == server.url + flaky["url"]
    assert res[_row(rows, "http_404")["id"]] == server.url + "/status/404"
    assert _get(server, "/search?q=x&n=abc")[0] == 400


# ------------------------------------------------------------------------------- yt-dlp
def _expected_ids(rows, query):
    q = {w for w in re.findall(r"[a-z0-9]+", query.lower()) if len(w) > 1}
    scored = []
    for i, r in enumerate(rows):
        hit = len(q & set(re.findall(r"[a-z0-9]+", (r["title"] + " " + r["description"]).lower())))
        if hit and (r["file"] or r["url"]):
            scored.append((-hit, i, r["id"]))
    return [x[2] for x in sorted(scored)]


def _ydl(opts):
    """A plain YoutubeDL: the search extractor comes from the project's yt-dlp plugin."""
    import yt_dlp

    return yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True, "noprogress": True, **opts})


def test_ytdlp_search(server, rows):
    opts = {"extract_flat": "in_playlist", "extractor_args": {"geniecorpus": {"server": [server.url]}}}
    with _ydl(opts) as ydl:
        info = ydl.extract_info("gcsearch50:montezuma", download=False)
        got = [e["id"] for e in info["entries"]]
        assert got == _expected_ids(rows, "montezuma") and len(got) >= 3
        assert not any(by["game"] == "kuka" for by in rows if by["id"] in got)
        e = info["entries"][0]
        assert e["_type"] == "url" and e["ie_key"] == "Generic" and e["url"].startswith(server.url)
        assert {"id", "title", "description", "duration"} <= set(e)
        info = ydl.extract_info("gcsearch3:pitfall speedrun", download=False)
        assert [e["id"] for e in info["entries"]] == _expected_ids(rows, "pitfall speedrun")[:3]
        robot = ydl.extract_info("gcsearch10:kuka arm", download=False)
        assert [e["id"] for e in robot["entries"]] == [r["id"] for r in rows if r["game"] == "kuka"]
    assert server.hits("/search") == 3


def test_ytdlp_search_server_from_env(server, rows, monkeypatch):
    monkeypatch.setenv("GENIE_CORPUS_URL", server.url)
    with _ydl({"extract_flat": "in_playlist"}) as ydl:
        info = ydl.extract_info("gcsearch5:kangaroo", download=False)
    assert [e["id"] for e in info["entries"]] == _expected_ids(rows, "kangaroo")[:5]
    monkeypatch.delenv("GENIE_CORPUS_URL")
    import yt_dlp

    with _ydl({"extract_flat": "in_playlist"}) as ydl:
        with pytest.raises(yt_dlp.utils.DownloadError, match="GENIE_CORPUS_URL"):
            ydl.extract_info("gcsearch5:kangaroo", download=False)


def test_ytdlp_generic_download_is_byte_identical(server, corpus, tmp_path):
    opts = {"outtmpl": str(tmp_path / "%(id)s.%(ext)s"),
            "extractor_args": {"geniecorpus": {"server": [server.url]}}}
    with _ydl(opts) as ydl:
        ydl.download([server.url + "/videos/gc0002.mp4"])
        info = ydl.extract_info("gcsearch1:pitfall any speedrun 2600", download=True)  # search, then download
    assert (tmp_path / "gc0002.mp4").read_bytes() == (corpus / "videos" / "gc0002.mp4").read_bytes()
    entry = info["entries"][0]
    assert entry["id"] == "gc0001" and entry["extractor"] == "generic"
    assert (tmp_path / "gc0001.mp4").read_bytes() == (corpus / "videos" / "gc0001.mp4").read_bytes()


def test_ytdlp_cli_finds_plugin(server, rows):
    """The yt-dlp CLI loads yt_dlp_plugins/extractor/geniecorpus.py from sys.path (here: the
    repo root as the working directory of `python -m yt_dlp`)."""
    env = {k: v for k, v in os.environ.items() if k != "YTDLP_NO_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, "-m", "yt_dlp", "--ignore-config", "-v", "--flat-playlist",
                        "--print", "%(id)s", "--extractor-args", f"geniecorpus:server={server.url}",
                        "gcsearch3:pitfall speedrun"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == _expected_ids(rows, "pitfall speedrun")[:3]
    assert "GenieCorpusSearchIE" in r.stderr  # "[debug] Extractor Plugins: GenieCorpusSearchIE"


def test_search_catalog_ranking():
    rows = [{"id": "a", "title": "Pitfall", "description": ""},
            {"id": "b", "title": "Pitfall speedrun", "description": ""},
            {"id": "c", "title": "Kuka arm", "description": "speedrun of a robot"},
            {"id": "d", "title": "the of and", "description": ""}]
    assert [r["id"] for r in search_catalog(rows, "pitfall speedrun")] == ["b", "a", "c"]
    assert [r["id"] for r in search_catalog(rows, "PITFALL")] == ["a", "b"]
    assert search_catalog(rows, "the") == []
    assert search_catalog(rows, "pitfall", n=1)[0]["id"] == "a"
