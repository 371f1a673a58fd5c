"""Discovery for each source type (search is covered end to end in test_ingest_e2e.py)."""
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import pipeline_options
from genie_pipeline.shards.records import Candidate, Failure
from genie_pipeline.ingest.sources import discover
from tests.conftest import make_video


def src(d):
    return parse_config({"sources": [d]}).sources[0]


def test_catalog_formats_and_field_mapping(tmp_path):
    rows = [{"vid": "a1", "link": "https://x/a.mp4", "file": None, "name": "Pitfall speedrun", "secs": 30},
            {"vid": "a2", "link": None, "file": "v/b.mp4", "name": "Mario longplay", "secs": None}]
    fields = {"video_id": "vid", "url": "link", "path": "file", "title": "name", "duration": "secs"}
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "c.csv").write_text("vid,link,file,name,secs\na1,https://x/a.mp4,,Pitfall speedrun,30\na2,,v/b.mp4,Mario longplay,\n")
    for ext in ("jsonl", "parquet", "csv"):
        out = list(discover(src({"type": "catalog", "name": "c", "path": str(tmp_path / f"c.{ext}"), "fields": fields})))
        cands = [c for c in out if isinstance(c, Candidate)]
        assert [(c.video_id, c.title) for c in cands] == [("a1", "Pitfall speedrun"), ("a2", "Mario longplay")], ext
        assert cands[0].url == "https://x/a.mp4" and cands[0].duration_s == 30
        assert cands[1].path == str(tmp_path / "v" / "b.mp4")  # relative to the catalog
        if ext == "jsonl":
            assert any(isinstance(f, Failure) and "line 3" in f.message for f in out)
    import gzip  # a compressed catalog: its format from the extension under .gz, read decompressed

    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress((tmp_path / "c.jsonl").read_bytes()))
    out = list(discover(src({"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl.gz"), "fields": fields})))
    assert [c.video_id for c in out if isinstance(c, Candidate)] == ["a1", "a2"]
    missing = list(discover(src({"type": "catalog", "name": "c", "path": str(tmp_path / "none.jsonl")})))
    assert len(missing) == 1 and isinstance(missing[0], Failure) and missing[0].stage == "discover"


def test_catalog_paths_stay_in_its_folder_and_a_bad_byte_costs_one_cell(tmp_path):
    """Issue 24: `../../etc/passwd` in a catalog reached the file; one byte that is not UTF-8
    turned every cell of its column into a b'…' repr."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "c.csv").write_bytes(
        b"id,path,title,actions\n"
        b"a,v/a.mp4,Caf\xe9 speedrun,v/a.actions.json\n"
        b"b,v/./b.mp4,Mario longplay,\n"
        b"c,../../etc/passwd,escape,\n"
        b"d,v/d.mp4,sidecar escape,v/../../../secret.json\n"
        b"e,/data/e.mp4,absolute,\n")
    out = list(discover(src({"type": "catalog", "name": "c", "path": str(tmp_path / "cat" / "c.csv")})))
    cands = {c.video_id: c for c in out if isinstance(c, Candidate)}
    assert [(c.video_id, c.title) for c in cands.values()] == [
        ("a", "Caf\ufffd speedrun"), ("b", "Mario longplay"), ("e", "absolute")]
    assert cands["a"].path == str(tmp_path / "cat" / "v" / "a.mp4") and cands["b"].path == str(tmp_path / "cat" / "v" / "b.mp4")
    assert cands["a"].extra["actions"] == str(tmp_path / "cat" / "v" / "a.actions.json")
    assert cands["e"].path == "/data/e.mp4"  # an absolute path is the catalog author's to give
    fails = {f.video_id: f for f in out if isinstance(f, Failure)}
    assert set(fails) == {"c", "d"} and {f.error_type for f in fails.values()} == {"PathOutsideCatalog"}
    assert "'../../etc/passwd' leaves the catalog's folder" in fails["c"].message
    assert "row 3" in fails["d"].message and "secret.json" in fails["d"].message


def test_urls_inline_and_file_deduplicated(tmp_path):
    (tmp_path / "u.txt").write_text("# comment\nhttps://a/1.mp4\n\nhttps://a/2.mp4\nhttps://a/1.mp4\n")
    out = list(discover(src({"type": "urls", "name": "u", "urls": ["https://a/0.mp4", "https://a/1.mp4"],
                             "path": str(tmp_path / "u.txt")})))
    assert [c.url for c in out] == ["https://a/0.mp4", "https://a/1.mp4", "https://a/2.mp4"]
    assert len({c.video_key for c in out}) == 3


def test_files_glob_with_sidecar_titles(tmp_path):
    make_video(tmp_path / "pitfall_any-speedrun.mp4", 1)
    make_video(tmp_path / "x.mp4", 1)
    (tmp_path / "x.json").write_text(json.dumps({"title": "Kangaroo longplay", "description": "d"}))
    out = sorted(discover(src({"type": "files", "name": "f", "glob": str(tmp_path / "*")})), key=lambda c: c.title)
    assert [c.title for c in out] == ["Kangaroo longplay", "pitfall any speedrun"]
    assert all(c.path.endswith(".mp4") for c in out)
    # ids say which file (its name, made key-safe, and a hash of its path), not a bare hash
    assert [c.video_id[:-9] for c in out] == ["x", "pitfall-any-speedrun"]
    assert all(re.fullmatch(r"[a-z0-9-]+-[0-9a-f]{8}", c.video_id) for c in out)
    for d in ("a", "b"):  # the same name in two folders: two videos
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.mp4").write_bytes((tmp_path / "x.mp4").read_bytes())
    again = list(discover(src({"type": "files", "name": "f", "glob": str(tmp_path / "*" / "x.mp4")})))
    assert len({c.video_id for c in again}) == 2


def test_lerobot_v2_layout(tmp_path):
    root = tmp_path / "ds"
    (root / "meta").mkdir(parents=True)
    info = {"codebase_version": "v2.1", "fps": 30, "chunks_size": 1000,
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {"observation.images.top": {"dtype": "video"}, "observation.images.wrist": {"dtype": "video"},
                         "action": {"dtype": "float32"}}}
    (root / "meta" / "info.json").write_text(json.dumps(info))
    (root / "meta" / "episodes.jsonl").write_text(
        "\n".join(json.dumps({"episode_index": i, "tasks": ["push the T"], "length": 510}) for i in range(2)))
    for i in range(2):
        for cam in ("observation.images.top", "observation.images.wrist"):
            make_video(root / f"videos/chunk-000/{cam}/episode_{i:06d}.mp4", 1)
    out = list(discover(src({"type": "lerobot", "name": "r", "root": str(root), "cameras": ["observation.images.top"]})))
    assert [c.video_id for c in out] == ["ep000000_top", "ep000001_top"]
    both = list(discover(src({"type": "lerobot", "name": "r", "root": str(root)})))
    assert len({c.video_key for c in both}) == 4  # cameras never collide
    assert all(c.start_s is None and c.title == "ds push the T" for c in out)
    assert abs(out[0].duration_s - 17.0) < 1e-6
    bad = list(discover(src({"type": "lerobot", "name": "r", "root": str(tmp_path / "nothing")})))
    assert isinstance(bad[0], Failure) and "info.json" in bad[0].message


def test_runner_options_pass_through():
    # Dataflow itself cannot run here: this checks only that its options reach Beam intact
    cfg = parse_config({"sources": [{"type": "urls", "name": "u", "urls": ["https://a"]}],
                        "runner": {"options": ["--region=us-central1"]}})
    runner, opts, workers = pipeline_options(cfg.runner, ["--runner", "DataflowRunner", "--project", "p",
                                                   "--temp_location", "gs://b/tmp"])
    d = opts.get_all_options()
    assert runner == "DataflowRunner" and workers == 1
    assert (d["project"], d["region"], d["temp_location"]) == ("p", "us-central1", "gs://b/tmp")
    runner, opts, workers = pipeline_options(cfg.runner, [])
    assert type(runner).__name__ == "FnApiRunner" and workers == 2
    assert opts.get_all_options()["direct_running_mode"] == "multi_processing"


def test_compressed_catalog_and_url_list(tmp_path):
    """A .gz catalog or URL list is read decompressed, as Beam reads it (locally too)."""
    import gzip

    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.write(json.dumps({"id": "a1", "url": "https://x/a.mp4", "title": "Pitfall speedrun"}) + "\n")
    with gzip.open(tmp_path / "u.txt.gz", "wt") as f:
        f.write("https://a/1.mp4\n")
    cands = list(discover(src({"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl.gz"), "format": "jsonl"})))
    assert [(c.video_id, c.title) for c in cands] == [("a1", "Pitfall speedrun")]
    assert [c.url for c in discover(src({"type": "urls", "name": "u", "path": str(tmp_path / "u.txt.gz")}))] == ["https://a/1.mp4"]
