"""Labelling page backend: label store, stratified sample, Label Studio / Parquet I/O, HTTP server."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genie_pipeline.filtering.quality import (QualityError, export_labels, import_labels, load_labels,  # noqa: E402
                                              resolve_labels)
from genie_pipeline.filtering.quality.label.labelstudio import parse_labelstudio  # noqa: E402
from genie_pipeline.filtering.quality.label.sample import spread, stratified_sample  # noqa: E402
from genie_pipeline.filtering.quality.label.server import LabelApp, make_server  # noqa: E402
from genie_pipeline.shards.httpgate import host_name  # noqa: E402
from genie_pipeline.filtering.quality.label.store import LabelStore  # noqa: E402
from genie_pipeline.filtering.quality.labels import label_counts  # noqa: E402
from genie_pipeline.shards.reader import ClipIndex, DataError  # noqa: E402
from tests.fixtures.output import write_quality_output  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT_TITLE = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned=2\"> & \"quotes\""


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("lfx") / "out"
    write_quality_output(out, n_good=3, n_bad=3, clips_per_video=2, seed=4, titles={0: SCRIPT_TITLE})
    return out


# --------------------------------------------------------------------------------- store
def test_store_labels_undo_and_persistence(tmp_path):
    db = tmp_path / "l.sqlite"
    st = LabelStore(db)
    assert st._con().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    st.add("a", "good", "ann")
    st.add("b", "bad", "ann")
    st.add("a", "bad", "bob")
    st.add("a", "skip", "ann")  # relabel: the latest action counts
    assert st.undo("ann") == {"key": "a", "label": "skip"}  # back to good
    cur = {(e["key"], e["labeller"]): e["label"] for e in st.current_labels()}
    assert cur == {("a", "ann"): "good", ("b", "ann"): "bad", ("a", "bob"): "bad"}
    assert st.undo("nobody") is None
    with pytest.raises(ValueError):
        st.add("a", "meh", "ann")
    st.close()
    # another process (a new connection) sees everything: each label was its own transaction
    again = LabelStore(db, readonly=True)
    assert len(again.current_labels()) == 3
    assert resolve_labels(again.current_labels()) == {"b": "bad"}  # a: 1 good vs 1 bad -> no label
    again.close()


def test_store_survives_a_killed_writer(tmp_path):
    """A process that labels and is then SIGKILLed mid-run loses nothing it was answered for."""
    db = tmp_path / "k.sqlite"
    code = (f"import sys, os, signal; sys.path.insert(0, {str(ROOT)!r})\n"
            "from genie_pipeline.filtering.quality.label.store import LabelStore\n"
            f"st = LabelStore({str(db)!r})\n"
            "for i in range(5): st.add(f'c{i}', 'good', 'k')\n"
            "print('saved', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -9 and "saved" in r.stdout
    assert {e["key"] for e in LabelStore(db).current_labels()} == {f"c{i}" for i in range(5)}


def test_store_concurrent_labellers(tmp_path):
    st = LabelStore(tmp_path / "c.sqlite")
    errors = []

    def work(name):
        try:
            for i in range(25):
                st.add(f"clip{i}", "good" if i % 2 else "bad", name)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(f"p{j}",)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(st.current_labels()) == 100
    counts = label_counts(st.current_labels())
    assert counts["labelled"] == 25 and counts["good"] == 12


# -------------------------------------------------------------------------------- sample
@dataclass
class C:
    key: str
    video_id: str
    stratum: str


def test_stratified_sample_balances_and_never_repeats_a_video_back_to_back():
    clips = [C(f"big{i}", "bigvid", "yt") for i in range(200)]  # one huge video
    clips += [C(f"y{v}_{i}", f"yv{v}", "yt") for v in range(5) for i in range(4)]
    clips += [C(f"s{v}_{i}", f"sv{v}", "sim/coinrun") for v in range(3) for i in range(10)]
    sample = stratified_sample(clips, 40, seed=1)
    assert len(sample) == 40 and len({c.key for c in sample}) == 40
    assert all(a.video_id != b.video_id for a, b in zip(sample, sample[1:]))
    per_stratum = Counter(c.stratum for c in sample)
    assert per_stratum["yt"] == per_stratum["sim/coinrun"] == 20  # strata take turns
    per_video = Counter(c.video_id for c in sample)
    assert per_video["bigvid"] <= 4  # one video cannot dominate its stratum
    assert stratified_sample(clips, 40, seed=1) == sample  # deterministic
    # a sample that must hold one video twice in a row drops the excess
    assert [c.key for c in spread([C("a", "v", ""), C("b", "v", ""), C("c", "w", "")], lambda c: c.video_id)] in (
        ["a", "c", "b"], ["b", "c", "a"])


# ----------------------------------------------------------------------- clip sources
def test_clip_index_kinds(fixture, tmp_path):
    ingest = ClipIndex.open(fixture)
    assert ingest.kind == "ingest" and len(ingest) == 12
    key = next(iter(ingest.clips))
    assert ingest.read(key)[4:8] == b"ftyp"
    # strata: source / channel / game, from what discovery recorded (the candidates table)
    c0 = ingest[key]
    assert c0.stratum == f"{c0.source}/{c0.channel}/{c0.game}" and c0.channel.startswith("channel") and c0.game
    shards = ClipIndex.open(fixture / "shards")
    assert shards.kind == "shards" and 0 < len(shards) < 12  # kept clips only
    folder = tmp_path / "folder" / "game_a"
    folder.mkdir(parents=True)
    for i in range(2):
        (folder / f"run1_{i:03d}.mp4").write_bytes(ingest.read(key))
    files = ClipIndex.open(tmp_path / "folder")
    assert files.kind == "files" and len(files) == 2
    c = next(iter(files.clips.values()))
    assert c.video_id == "game_a" and files.read(c.key) == ingest.read(key)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no clips"):
        ClipIndex.open(empty)


# ----------------------------------------------------------------- Label Studio / Parquet
def test_labelstudio_round_trip_and_json_min(tmp_path, fixture):
    index = ClipIndex.open(fixture)
    keys = list(index.clips)[:4]
    st = LabelStore(tmp_path / "a.sqlite")
    st.add(keys[0], "good", "ann", ts=1_700_000_000.0)
    st.add(keys[1], "bad", "ann", ts=1_700_000_001.0)
    st.add(keys[2], "skip", "bob", ts=1_700_000_002.0)
    n = export_labels(st, str(tmp_path / "ls.json"))
    tasks = json.loads((tmp_path / "ls.json").read_text())
    assert n == 3 and len(tasks) == 3
    t0 = next(t for t in tasks if t["data"]["key"] == keys[0])
    assert t0["annotations"][0]["result"][0]["value"] == {"choices": ["good"]}
    assert t0["annotations"][0]["created_at"].startswith("2023-11-14T22:13:20")
    assert next(t for t in tasks if t["data"]["key"] == keys[2])["annotations"][0]["was_cancelled"] is True
    # import into a fresh database; importing twice adds nothing
    st2 = LabelStore(tmp_path / "b.sqlite")
    assert import_labels(st2, index, str(tmp_path / "ls.json")) == 3
    assert import_labels(st2, index, str(tmp_path / "ls.json")) == 0
    strip = lambda rows: sorted((r["key"], r["labeller"], r["label"], r["ts"]) for r in rows)  # noqa: E731
    assert strip(st2.current_labels()) == strip(st.current_labels())
    # a real Label Studio export: uploaded file names, numeric annotator ids, old "completions"
    ls_native = [{"id": 7, "data": {"video": f"/data/upload/3/1a2b3c4d-{keys[3]}.mp4"},
                  "annotations": [{"completed_by": 2, "created_at": "2024-05-01T10:00:00.000000Z",
                                   "result": [{"type": "choices", "value": {"choices": ["Bad"]},
                                               "from_name": "quality", "to_name": "video"}]}]},
                 {"id": 8, "data": {"video": f"http://host/clip/{keys[0]}.mp4"},
                  "completions": [{"completed_by": {"email": "x@y.z"}, "result": [{"value": {"choices": ["good"]}}]}]}]
    ev = parse_labelstudio(ls_native, known=index.clips)
    assert [(e["key"], e["label"], e["labeller"]) for e in ev] == [(keys[3], "bad", "labelstudio:2"), (keys[0], "good", "x@y.z")]
    json_min = [{"video": f"/clip/{keys[1]}.mp4", "quality": "good", "annotator": 5, "id": 1}]
    assert parse_labelstudio(json_min)[0]["label"] == "good"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"data": {"key": "nope_000"}, "annotations": [
        {"completed_by": 1, "result": [{"type": "choices", "value": {"choices": ["good"]}}]}]}]))
    with pytest.raises(QualityError, match="not in"):
        import_labels(st2, index, str(unknown))
    # Parquet export: one row per clip and labeller, with time and labeller
    export_labels(st, str(tmp_path / "l.parquet"))
    rows = pq.read_table(tmp_path / "l.parquet").to_pylist()
    assert {(r["key"], r["label"], r["labeller"]) for r in rows} == {(keys[0], "good", "ann"), (keys[1], "bad", "ann"), (keys[2], "skip", "bob")}
    assert rows[0]["labelled_at"].year == 2023
    assert resolve_labels(load_labels(tmp_path / "l.parquet")) == {keys[0]: "good", keys[1]: "bad"}
    assert resolve_labels(load_labels(tmp_path / "ls.json")) == {keys[0]: "good", keys[1]: "bad"}


def test_load_labels_errors(tmp_path):
    with pytest.raises(QualityError, match="does not exist"):
        load_labels(tmp_path / "none.sqlite")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(QualityError, match="corrupted"):
        load_labels(bad)
    good = tmp_path / "good.sqlite"
    st = LabelStore(good)
    for i in range(300):
        st.add(f"k{i}", "good", "a")
    st.close()
    sqlite3.connect(good).execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
    data = bytearray(good.read_bytes())
    data[100:len(data)] = b"\xff" * (len(data) - 100)  # header intact, pages destroyed
    good.write_bytes(bytes(data))
    with pytest.raises(QualityError, match="corrupted"):
        load_labels(good)
    js = tmp_path / "x.json"
    js.write_text("[{oops")
    with pytest.raises(QualityError, match="corrupted"):
        load_labels(js)


# -------------------------------------------------------------------------------- server
@pytest.fixture()
def server(fixture, tmp_path):
    def start(host="127.0.0.1", token=None):
        app = LabelApp(ClipIndex.open(fixture), LabelStore(tmp_path / "srv.sqlite"), target=8, token=token)
        app.prepare_sample()
        srv = make_server(app, host, 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
        return app, f"http://127.0.0.1:{srv.server_address[1]}"

    started = []
    yield start
    for s in started:
        s.shutdown()
        s.server_close()


def _req(url, data=None, headers=None, method=None):
    h = {"Content-Type": "application/json", "X-Genie-Label": "1", **(headers or {})} if data is not None else (headers or {})
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_server_api_ranges_and_escaping(server):
    app, url = server()
    status, headers, body = _req(url + "/")
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    assert b"<script src=\"/page.js\"" in body and b"__pwned" not in body  # no data in the HTML
    _, headers, body = _req(url + "/api/state?labeller=ann")
    st = json.loads(body)
    assert len(st["clips"]) == 8 and st["target"] == 8
    # the page's session: labels and undos name it (a POST without one is refused)
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    session = {"Cookie": headers["Set-Cookie"].split(";")[0]}
    assert all(a["video_id"] != b["video_id"] for a, b in zip(st["clips"], st["clips"][1:]))
    key = st["clips"][0]["key"]
    # clips: whole and by range (the video element seeks with ranges)
    status, headers, whole = _req(f"{url}/clip/{key}.mp4")
    assert status == 200 and headers["Content-Type"] == "video/mp4" and whole[4:8] == b"ftyp"
    status, headers, part = _req(f"{url}/clip/{key}.mp4", headers={"Range": "bytes=10-19"})
    assert status == 206 and part == whole[10:20] and headers["Content-Range"] == f"bytes 10-19/{len(whole)}"
    assert _req(f"{url}/clip/..%2F..%2Fetc%2Fpasswd.mp4")[0] == 404
    assert _req(f"{url}/strip/{key}.png")[2][:8] == b"\x89PNG\r\n\x1a\n"
    # labelling
    assert _req(url + "/api/label", {"key": key, "label": "good", "labeller": "ann"})[0] == 403
    status, _, body = _req(url + "/api/label", {"key": key, "label": "good", "labeller": "ann"}, session)
    assert status == 200 and json.loads(body)["counts"]["labelled"] == 1
    assert _req(url + "/api/label", {"key": "nope", "label": "good", "labeller": "ann"}, session)[0] == 404
    assert _req(url + "/api/label", {"key": key, "label": "great", "labeller": "ann"}, session)[0] == 400
    assert _req(url + "/api/label", {"key": key, "label": "good", "labeller": ""}, session)[0] == 400
    undo = json.loads(_req(url + "/api/undo", {"labeller": "ann"}, session)[2])
    assert undo["undone"] == {"key": key, "label": "good"} and undo["counts"]["labelled"] == 0
    # cross-site requests: a plain form post has neither the JSON type nor the header
    req = urllib.request.Request(url + "/api/label", data=b"key=x&label=good", method="POST",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403
    # DNS rebinding: a foreign Host header is refused
    assert _req(url + "/api/state", headers={"Host": "evil.example:80"})[0] == 403
    # the hostile title travels as JSON data, unchanged (the page puts it in with textContent)
    assert any(c.title == SCRIPT_TITLE for c in app.index.clips.values())
    for c in st["clips"]:
        assert c["title"] == app.index[c["key"]].title


def test_server_binding_rules(server):
    assert host_name("[::1]:8080") == "::1" and host_name("localhost") == "localhost" and host_name("a.b:1") == "a.b"
    with pytest.raises(PermissionError, match="token"):
        server(host="0.0.0.0")
    app, url = server(host="0.0.0.0", token="s3cret-token-0123456")
    assert _req(url + "/api/state")[0] == 403
    assert _req(url + "/api/state", headers={"X-Genie-Token": "wrong"})[0] == 403
    assert _req(url + "/api/state", headers={"X-Genie-Token": "s3cret-token-0123456"})[0] == 200
    status, headers, _ = _req(url + "/?token=s3cret-token-0123456")
    assert status == 200 and "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert _req(url + "/api/state", headers={"Cookie": "genie_label_token=s3cret-token-0123456"})[0] == 200


def test_label_cli_export_import(fixture, tmp_path, capsys):
    from genie_pipeline.cli import main

    def label(db, *flags):
        return main(["label", str(fixture), "--set", f"filters.quality.labels_db={db}", *map(str, flags)])

    db = tmp_path / "cli.sqlite"
    st = LabelStore(db)
    key = next(iter(ClipIndex.open(fixture).clips))
    st.add(key, "bad", "ann")
    st.close()
    assert label(db, "--export", tmp_path / "e.json") == 0
    assert label(tmp_path / "new.sqlite", "--import", tmp_path / "e.json") == 0
    assert resolve_labels(load_labels(tmp_path / "new.sqlite")) == {key: "bad"}
    capsys.readouterr()
    assert label(db, "--host", "0.0.0.0", "--token", "") == 2  # a QualityError naming the flag: exit 2
    assert "--token" in capsys.readouterr().err
    # a port another server holds: exit 2 naming the flags, no traceback
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert label(db, "--port", busy.getsockname()[1]) == 2
    assert "--host/--port" in capsys.readouterr().err


def test_reimporting_our_own_export_counts_no_label_and_the_target_fits_the_clips(tmp_path, fixture):
    """A re-import of the page's own export (Parquet, JSON: times rounded on the way) changes
    no label and counts none (it counted every label as new); a target above the clips there
    are is shown as the number of clips, so the page can say when it is done."""
    index = ClipIndex.open(fixture)
    keys = list(index.clips)[:3]
    st = LabelStore(tmp_path / "a.sqlite")
    for i, k in enumerate(keys):
        st.add(k, "good" if i else "bad", "ann", ts=1_700_000_000.123456 + i)
    for name in ("own.parquet", "own.json"):
        export_labels(st, str(tmp_path / name))
        assert import_labels(st, index, str(tmp_path / name)) == 0, name
    fresh = LabelStore(tmp_path / "fresh.sqlite")  # into another store, every label is one
    assert import_labels(fresh, index, str(tmp_path / "own.json")) == 3
    app = LabelApp(index, LabelStore(tmp_path / "b.sqlite"), target=1000)
    app.prepare_sample()
    assert app.state("ann")["target"] == len(index.clips) == 12
