"""True agent actions: the corpus's sidecars, resampling to clips, ingest into the manifest and
the shards, and the training loader's per-window actions."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genie_pipeline.ingest.actions import TrueActions, parse_sidecar, read_sidecar, resample_actions
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards.clip import encode_clip
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.reader import iter_tar_clips, resolve_inputs
from genie_pipeline.shards.records import Candidate, ClipRow, VideoResult, clip_key, video_key
from genie_pipeline.training.loader import WindowLoader, eval_windows
from tests.fixtures.output import write_output

SPEC = ClipsConfig().spec
BITS = 8  # frames that show their index: 8 vertical stripes, white for a 1 bit


def index_frame(i: int, height: int, width: int) -> np.ndarray:
    img = np.zeros((height, width, 3), np.uint8)
    w = width // BITS
    for b in range(BITS):
        if (i >> b) & 1:
            img[:, b * w:(b + 1) * w] = 255
    return img


def frame_index(rgb: np.ndarray) -> int:
    """The index `index_frame` drew, from a decoded (H, W, 3) or (3, H, W) frame."""
    rgb = np.asarray(rgb)
    if rgb.shape[0] == 3:
        rgb = rgb.transpose(1, 2, 0)
    w = rgb.shape[1] // BITS
    return sum(1 << b for b in range(BITS) if rgb[:, b * w + w // 2].mean() > 127)


def catalog_rows(corpus: Path) -> list[dict]:
    return [json.loads(x) for x in (corpus / "catalog.jsonl").read_text().splitlines() if x.strip()]


# --------------------------------------------------------------------------- corpus sidecars
# the videos with frames 1:1 to one agent's steps (generate.py's docstring)
WITH_ACTIONS = {"clean", "webcam_overlay", "blur", "black", "letterbox", "too_short"}


def test_corpus_sidecars_match_the_sims(small_corpus):
    from genie_pipeline.corpus.render import renderers_available

    seen = set()
    for r in catalog_rows(small_corpus):
        has = r["made_how"] in WITH_ACTIONS and not r["vfr"] and r["renderer"] in ("ale", "procgen", "pybullet")
        assert bool(r["actions"]) == has, (r["id"], r["made_how"])
        if not has:
            continue
        assert r["actions"] == f"videos/{r['id']}.actions.json"
        doc = json.loads((small_corpus / r["actions"]).read_text())
        assert set(doc) == {"fps", "action_space", "actions"}
        assert doc["fps"] == r["fps"] and len(doc["actions"]) == r["frames"]
        sim, game, n = doc["action_space"].split(":")
        assert sim == r["renderer"] and int(n) == {"ale": 18, "procgen": 15, "pybullet": 7}[sim]
        assert all(isinstance(a, int) and 0 <= a < int(n) for a in doc["actions"])
        assert len(set(doc["actions"])) > 1, "an agent that never changes its action"
        seen.add(sim)
        parse_sidecar(json.dumps(doc).encode(), r["actions"])  # what ingest accepts
    assert seen >= {"ale", "pybullet"} | ({"procgen"} if renderers_available()["procgen"] else set())


def test_atari_sidecar_replays_from_its_seed(small_corpus):
    from genie_pipeline.corpus.generate import _after, _atari_frames

    row = next(r for r in catalog_rows(small_corpus) if r["made_how"] == "clean" and r["renderer"] == "ale"
               and r["actions"])
    recorded = json.loads((small_corpus / row["actions"]).read_text())["actions"]
    assert recorded[0] != 0 or len(set(recorded)) > 1

    def replay(seed: int) -> list[int]:
        taken: list = []
        for _ in _atari_frames(row["game"], seed, row["frames"], audio=row["has_audio"], taken=taken):
            pass
        return _after(taken)

    assert replay(row["seed"]) == recorded
    assert replay(row["seed"] + 1) != recorded


def test_after_is_the_next_steps_action():
    from genie_pipeline.corpus.generate import _after

    assert _after([4, 5, 6, 7]) == [5, 6, 7]  # a step per frame, then the step after the last
    assert _after([4, None, 5, None, 6]) == [5, 5, 6, 6]  # held pictures: the next step's action


# ------------------------------------------------------------------------------- resampling
def test_resample_30_to_10():
    # clip frame k shows source frame 3k + 1: step i covers source frames 3i+1 .. 3i+3
    actions = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert resample_actions(actions, 30, 10, 0.0, 4) == [0, 1, 2]
    ramp = list(range(40))  # all different: the first of each step's frames wins
    assert resample_actions(ramp, 30, 10, 0.0, 5) == [1, 4, 7, 10]


def test_resample_with_a_start_offset():
    ramp = list(range(100))
    assert resample_actions(ramp, 30, 10, 1.0, 3) == [31, 34]
    assert resample_actions(ramp, 30, 10, 0.5, 3) == [16, 19]
    actions = [9] * 31 + [1, 2, 2, 5, 5, 3, 7, 7, 7]
    assert resample_actions(actions, 30, 10, 1.0, 4) == [2, 5, 7]


def test_resample_ties_go_to_the_first():
    # 20 FPS: two source frames per step, clip frame k shows source frame 2k
    assert resample_actions([5, 7, 7, 5, 3, 3], 20, 10, 0.0, 3) == [5, 7]
    # 60 FPS: six per step from frame 2; 4 and 6 twice each, 4 first
    assert resample_actions([0, 0, 4, 6, 4, 6, 1, 2, 0], 60, 10, 0.0, 2) == [4]


def test_resample_slower_source_and_the_end():
    # 5 FPS source: clip frames 0 and 1 both show source frame 0, the step takes its action
    assert resample_actions([3, 8, 6], 5, 10, 0.0, 4) == [3, 3, 8]
    with pytest.raises(IndexError, match="there are 5"):
        resample_actions(list(range(5)), 30, 10, 0.0, 3)


@pytest.mark.parametrize("fps", [30, 25, 24])
def test_resample_follows_the_decoder(tmp_path, fps):
    """The source frame each clip frame shows, as resample_actions assumes it, is the one
    ingest's decoder shows (frames that draw their own index)."""
    from genie_pipeline.corpus.encode import VideoWriter
    from genie_pipeline.ingest.decode import iter_frames

    path = tmp_path / "idx.mp4"
    with VideoWriter(path, 160, 96, fps, crf=10) as w:
        for j in range(fps * 3):
            w.write(index_frame(j, 96, 160))
    for start in (None, 1.0):
        shown = [frame_index(f) for f in iter_frames(str(path), ClipsConfig(), start_s=start)]
        ramp = list(range(fps * 3))
        assert resample_actions(ramp, fps, 10, start or 0.0, len(shown)) == shown[:-1], (fps, start)


# --------------------------------------------------------------------------------- sidecars
def sidecar(actions, fps=30, space="ale:Pitfall:18") -> bytes:
    return json.dumps({"fps": fps, "action_space": space, "actions": actions}).encode()


@pytest.mark.parametrize("data, why", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (sidecar([1, 2], fps="30"), "not a frame rate"),
    (sidecar([1, 2], space="Pitfall"), "'<sim>:<game>:<n>'"),
    (sidecar([1, 2.5, 3]), "actions[1] = 2.5"),
    (sidecar([1, True]), "actions[1] = True"),
    (sidecar([1, 18]), "actions[1] = 18 is not an int in [0, 18)"),
    (sidecar([]), "non-empty list"),
])
def test_bad_sidecars_are_named(data, why):
    with pytest.raises(IngestError, match="gc0042.actions.json") as e:
        parse_sidecar(data, "/corpus/videos/gc0042.actions.json")
    assert why in str(e.value) and (e.value.stage, e.value.error_type) == ("actions", "BadActions")


def test_sidecar_must_fit_the_video():
    true = parse_sidecar(sidecar([1] * 300), "x.actions.json")
    true.check_video(10.0, 30.0)
    true.check_video(float("nan"), 0.0)  # a header that says nothing: nothing to check
    with pytest.raises(IngestError, match="300 actions, the video 600 frames"):
        true.check_video(20.0, 30.0)
    with pytest.raises(IngestError, match="says 30 FPS, the video runs at 25"):
        true.check_video(12.0, 25.0)
    with pytest.raises(IngestError, match="x.actions.json.*frames 298..300, there are 300"):
        true.for_clip(9.0, 10, 11)


def test_read_sidecar_from_a_path_and_through_the_guard(small_corpus, corpus_server, tmp_path):
    row = next(r for r in catalog_rows(small_corpus) if r["actions"])
    want = json.loads((small_corpus / row["actions"]).read_text())["actions"]
    assert read_sidecar(str(small_corpus / row["actions"]), DownloadConfig()).actions.tolist() == want
    url = f"{corpus_server.url}/{row['actions']}"
    got = read_sidecar(url, DownloadConfig(allow_private_networks=True))
    assert isinstance(got, TrueActions) and got.actions.tolist() == want
    with pytest.raises(IngestError, match="private or internal address"):
        read_sidecar(url, DownloadConfig())  # the download guard's address policy applies
    with pytest.raises(IngestError, match="not in download.allowed_schemes"):
        read_sidecar(url, DownloadConfig(allowed_schemes=["https"]))
    with pytest.raises(IngestError, match=r"missing\.json: cannot read it \(FileNotFoundError"):
        read_sidecar(str(tmp_path / "missing.json"), DownloadConfig())
    # issue 24: a bucket path ignored allowed_schemes (148 s per row trying to reach the store)
    local = small_corpus / row["actions"]
    for location in ("gs://bucket/a.actions.json", "s3://bucket/a.actions.json", f"file://{local}"):
        t0 = time.monotonic()
        with pytest.raises(IngestError, match="scheme '(gs|s3|file)' not in download.allowed_schemes"):
            read_sidecar(location, DownloadConfig())
        assert time.monotonic() - t0 < 1.0
    assert read_sidecar(f"file://{local}", DownloadConfig(allowed_schemes=["file"])).actions.tolist() == want


def test_a_site_cannot_name_a_local_sidecar():
    from genie_pipeline.ingest.sources import _actions_of

    assert _actions_of("http://127.0.0.1:8000/videos/a.actions.json", remote=True)
    for local in ("/etc/passwd", "file:///etc/passwd", "gs://bucket/a.json", "videos/a.actions.json"):
        assert _actions_of(local, remote=True) == {}
    assert _actions_of("videos/a.actions.json") == {"actions": "videos/a.actions.json"}  # a catalog's own


# ---------------------------------------------------------------------------------- ingest
@pytest.fixture(scope="module")
def ingested(small_corpus, corpus_server, tmp_path_factory):
    """A catalog (sidecars by absolute and relative path, one corrupt) and a search through the
    corpus server (sidecar over HTTP), through the real Beam FnApiRunner."""
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import run_ingest

    rows = {r["id"]: r for r in catalog_rows(small_corpus)}
    pitfall, kuka, kangaroo = rows["gc0001"], rows["gc0005"], rows["gc0003"]
    assert (pitfall["game"], kuka["game"], kangaroo["game"]) == ("pitfall", "kuka", "kangaroo")
    base = tmp_path_factory.mktemp("actions")
    (base / "videos").mkdir()
    shutil.copy(small_corpus / kuka["file"], base / "videos" / "arm.mp4")
    shutil.copy(small_corpus / kuka["actions"], base / "videos" / "arm.actions.json")
    corrupt = json.loads((small_corpus / kangaroo["actions"]).read_text())
    corrupt["actions"][5] = "jump"
    (base / "corrupt.actions.json").write_text(json.dumps(corrupt))
    cat = [
        {"id": "pitfall", "path": str(small_corpus / pitfall["file"]), "actions": str(small_corpus / pitfall["actions"]),
         "title": "pitfall"},
        {"id": "arm", "path": "videos/arm.mp4", "actions": "videos/arm.actions.json", "title": "arm"},
        {"id": "corrupt", "path": str(small_corpus / kangaroo["file"]), "actions": "corrupt.actions.json",
         "title": "kangaroo"},
    ]
    (base / "cat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cat))
    cfg = parse_config({
        "sources": [{"type": "catalog", "name": "cat", "path": str(base / "cat.jsonl"), "keywords": "none"},
                    {"type": "search", "name": "gc", "prefix": "gcsearch", "queries": ["review"], "max_results": 1,
                     "keywords": "none", "extractor_args": {"geniecorpus": {"server": [corpus_server.url]}}}],
        "download": {"allow_private_networks": True, "per_host_rate": 50},
        "filters": {"dedupe": {"enabled": False}},
        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
        "output": {"dir": str(base / "out")},
    })
    stats = run_ingest(cfg)
    return {"out": base / "out", "stats": stats, "corpus": small_corpus, "rows": rows, "base": base}


def sidecar_of(ingested, video_id: str) -> dict:
    rows, corpus = ingested["rows"], ingested["corpus"]
    path = {"pitfall": corpus / rows["gc0001"]["actions"], "arm": ingested["base"] / "videos" / "arm.actions.json",
            "gc0010": corpus / rows["gc0010"]["actions"]}[video_id]
    return json.loads(path.read_text())


def test_ingest_carries_true_actions_into_the_manifest(ingested):
    manifest = pq.read_table(ingested["out"] / "manifest").to_pylist()
    by_video: dict[str, list[dict]] = {}
    for r in manifest:
        by_video.setdefault(r["video_id"], []).append(r)
    assert set(by_video) == {"pitfall", "arm", "corrupt", "gc0010"}  # gc0010: the search hit, over HTTP
    for vid in ("pitfall", "arm", "gc0010"):
        doc = sidecar_of(ingested, vid)
        for r in by_video[vid]:
            assert len(r["true_actions"]) == r["n_frames"] - 1 == SPEC.frames - 1
            assert r["action_space"] == doc["action_space"]
            assert r["true_actions"] == resample_actions(doc["actions"], doc["fps"], SPEC.fps, r["start_s"],
                                                         r["n_frames"])
    schema = pq.read_schema(next((ingested["out"] / "manifest").glob("*.parquet")))
    assert schema.names[-4:-2] == ["true_actions", "action_space"]  # then schema 4's cut_frames, returns_per_min
    assert schema.field("true_actions").type.value_type == pa.int16()


def test_a_corrupt_sidecar_costs_only_the_actions(ingested):
    out = ingested["out"]
    clips = [r for r in pq.read_table(out / "manifest").to_pylist() if r["video_id"] == "corrupt"]
    assert clips and all(r["true_actions"] is None and r["action_space"] is None for r in clips)
    video = next(r for r in pq.read_table(out / "videos").to_pylist() if r["video_id"] == "corrupt")
    assert video["status"] == "done" and video["n_clips"] == len(clips)
    assert video["error"].startswith("actions:BadActions:") and "corrupt.actions.json" in video["error"]
    assert "actions[5] = jump" in video["error"]
    counters = ingested["stats"]["last_run"]["counters"]
    assert counters["actions_bad"] == 1


def test_shard_json_carries_true_actions(ingested):
    manifest = {r["key"]: r for r in pq.read_table(ingested["out"] / "manifest").to_pylist()}
    stats = {"bad_shards": 0, "bad_samples": 0}
    metas = [c.meta for split in ("train", "val") for s in sorted((ingested["out"] / "shards").glob(f"{split}-*.tar"))
             for c in iter_tar_clips(str(s), stats)]
    assert metas and any(m["true_actions"] for m in metas) and any(m["true_actions"] is None for m in metas)
    for m in metas:
        assert m["true_actions"] == manifest[m["key"]]["true_actions"]
        assert m["action_space"] == manifest[m["key"]]["action_space"]


# ---------------------------------------------------------------------------------- loader
def action_of(i: int) -> int:
    return (7 * i + 3) % 18


@pytest.fixture(scope="module")
def index_output(tmp_path_factory):
    """Two clips whose frames show their index, one with true actions action_of(i) for step i
    and one without, written the way ingest writes (clip store, shards, commit)."""
    out = tmp_path_factory.mktemp("index")
    frames = np.stack([index_frame(i, SPEC.height, SPEC.width) for i in range(SPEC.frames)])
    data = encode_clip(frames, SPEC)
    videos, cands = [], []
    for vid, actions in (("acted", [action_of(i) for i in range(SPEC.frames - 1)]), ("unknown", None)):
        vk = video_key("t", vid)
        row = ClipRow(key=clip_key(vk, 0), video_key=vk, video_id=vid, source="t", title=vid, start_s=0.0,
                      duration_s=SPEC.frames / SPEC.fps, n_frames=SPEC.frames, bytes=len(data), split="val",
                      true_actions=actions, action_space="ale:Pitfall:18" if actions else None)
        videos.append((VideoResult(video_key=vk, video_id=vid, source="t", title=vid, status="done", clips=[row],
                                   split="val"), [(row.key, data)]))
        cands.append(Candidate(source="t", video_id=vid, title=vid, keyword_verdict="keep"))
    write_output(out, videos, cands, SPEC)
    return resolve_inputs([str(out)], "val").shards


def check_alignment(batch) -> int:
    checked = 0
    for b, key in enumerate(batch["keys"]):
        idx = [frame_index(f.numpy()) for f in batch["video"][b]]
        start = int(batch["starts"][b])
        assert idx == list(range(start, start + len(idx))), key
        got = batch["true_actions"][b].tolist()
        if "acted" in key:
            assert got == [action_of(i) for i in idx[:-1]] and batch["action_spaces"][b] == "ale:Pitfall:18"
            checked += 1
        else:
            assert got == [-1] * (len(idx) - 1) and batch["action_spaces"][b] is None
    return checked


def test_loader_true_actions_line_up_with_the_frames(index_output):
    loader = WindowLoader(index_output, batch_size=4, frames=16, num_workers=0, windows_per_clip=4,
                          clips_per_group=2, shuffle_buffer=4, decoder="pyav")
    checked, starts = 0, set()
    for _, batch in zip(range(3), loader):
        assert batch["true_actions"].shape == (4, 15) and batch["true_actions"].dtype == torch.long
        checked += check_alignment(batch)
        starts |= {int(s) for s in batch["starts"]}
    assert checked > 0 and len(starts) > 1


def test_eval_windows_are_in_order_with_their_actions(index_output):
    batches = list(eval_windows(index_output, frames=16, step=40, batch_size=3, decoder="pyav"))
    keys = [k for b in batches for k in b["keys"]]
    starts = [int(s) for b in batches for s in b["starts"]]
    assert starts == [0, 40, 80, 120] * 2  # clip by clip, in tar order
    assert len(set(keys[:4])) == len(set(keys[4:])) == 1 and keys[0] != keys[4]
    assert sum(check_alignment(b) for b in batches) == 4
    again = list(eval_windows(index_output, frames=16, step=40, batch_size=3, decoder="pyav"))
    assert all(torch.equal(a["video"], b["video"]) for a, b in zip(batches, again))
    assert len([k for b in eval_windows(index_output, frames=16, max_windows=5, decoder="pyav") for k in b["keys"]]) == 5
