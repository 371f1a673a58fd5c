"""Quality classifier: frame sampling, model files, the Beam scoring stage, refilter, reference labels."""
from __future__ import annotations

import json
import math
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genie_pipeline.corpus.reference import reference_labels  # noqa: E402
from genie_pipeline.filtering.quality import (QualityConfig, QualityError, ScoreQuality, apply_threshold,  # noqa: E402
                                              load_quality_model, read_metadata, refilter, save_quality_model)
from genie_pipeline.filtering.quality.frames import sample_frames, sample_indices  # noqa: E402
from genie_pipeline.filtering.quality.model import QualityNet, load_backbone_weights  # noqa: E402
from genie_pipeline.filtering.quality.score import score_clips  # noqa: E402
from genie_pipeline.shards.config import ClipsConfig, ShardsConfig  # noqa: E402
from genie_pipeline.shards.reader import ClipIndex, live_shards  # noqa: E402
from tests.fixtures.output import write_quality_output  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("qfx") / "out"
    info = write_quality_output(out, n_good=3, n_bad=3, clips_per_video=2, seed=3)
    return out, info


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A randomly initialised model (no training needed to test the plumbing)."""
    torch.manual_seed(0)
    m = QualityNet(frames_per_clip=3).eval()
    path = tmp_path_factory.mktemp("qmodel") / "model.pt"
    save_quality_model(m, path, {"threshold": 0.5, "bf16": {"keeps_accuracy": False}})
    return path


def _store_clips(store):
    with tarfile.open(store) as tar:
        return {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".mp4")}


# ------------------------------------------------------------------------------ sampling
def test_sample_indices_spread():
    assert sample_indices(160, 4) == [20, 60, 100, 140]
    assert sample_indices(10, 4) == [1, 3, 6, 8]
    assert sample_indices(2, 4) == [0, 0, 1, 1]
    with pytest.raises(QualityError):
        sample_indices(0, 4)


def test_sample_frames_keyframes_match_full_decode(fixture):
    """The keyframe fast path returns exactly the frames a full decode has at those positions."""
    from genie_pipeline.shards.clip import decode_clip

    out, info = fixture
    data = next(iter(_store_clips(info["videos"][0].store).values()))
    frames = sample_frames(data, 4)
    assert frames.shape == (4, 90, 160, 3) and frames.dtype == np.uint8
    full = decode_clip(data)
    assert full.shape[0] == 160
    keyframes = list(range(0, 160, 16))  # the pipeline's keyframe interval
    want = full[[keyframes[i] for i in sample_indices(len(keyframes), 4)]]
    assert np.array_equal(frames, want)
    # more frames than keyframes: the evenly spaced fallback
    many = sample_frames(data, 12)
    assert np.array_equal(many, full[sample_indices(160, 12)])


def test_image_stats_tell_degradations_apart():
    """Each statistic moves the way its docstring says, on made-up clips (B=1, K=4)."""

    def game(seed):  # a coloured scene with sharp blocks, and a sprite that moves
        r = np.random.default_rng(seed)
        base = np.repeat(np.repeat(r.integers(0, 256, (9, 16, 3)), 10, 0), 10, 1).astype(np.uint8)
        out = np.stack([base.copy() for _ in range(4)])
        for i in range(4):
            out[i, 40:50, 20 + 30 * i:30 + 30 * i] = 255
        return out

    clean = game(1)
    black = (clean // 12).astype(np.uint8)
    letterbox = np.zeros_like(clean)
    letterbox[:, 20:70, 35:125] = clean[:, 20:70, 35:125]
    static = np.stack([clean[0]] * 4)
    montage = np.stack([game(s)[0] for s in (1, 2, 3, 4)])
    blur = torch.nn.functional.avg_pool2d(torch.from_numpy(clean).permute(0, 3, 1, 2).float(), 9, 1, 4,
                                          count_include_pad=False).permute(0, 2, 3, 1).round().byte().numpy()
    st = {n: QualityNet.image_stats(torch.from_numpy(c)[None])[0].numpy()
          for n, c in dict(clean=clean, black=black, letterbox=letterbox, static=static, montage=montage,
                           blur=blur).items()}
    lum, sharp, flat, changed, dist = 0, 2, 3, 4, 7
    assert st["black"][lum] < st["clean"][lum] - 2
    assert st["blur"][sharp] < st["clean"][sharp] - 1
    assert st["letterbox"][flat] == 4 and st["clean"][flat] == 0
    assert st["static"][changed] == pytest.approx(math.log(1e-4))
    assert st["clean"][changed] > st["static"][changed] + 0.5  # a 10x10 sprite moves: 1.4% of pixels
    assert st["montage"][dist] > st["clean"][dist] + 0.2 and st["clean"][dist] < 0.05
    assert QualityNet.image_stats(torch.from_numpy(clean[:1])[None]).shape == (1, 11)  # K=1 works
    entropy = 10
    assert st["black"][entropy] < st["clean"][entropy]  # one colour vs many


def test_sample_frames_other_sizes_and_garbage(tmp_path):
    from genie_pipeline.shards.clip import encode_clip

    frames = np.random.default_rng(0).integers(0, 255, (40, 64, 96, 3), dtype=np.uint8)
    data = encode_clip(frames, ClipsConfig(width=96, height=64, keyframe_interval=40).spec)
    got = sample_frames(data, 3)
    assert got.shape == (3, 90, 160, 3)
    with pytest.raises(QualityError):
        sample_frames(b"not a video at all" * 10, 4)


# --------------------------------------------------------------------------------- model
def test_model_file_round_trip_weights_only(model_file, fixture):
    model, meta = load_quality_model(str(model_file), bf16="off")
    assert meta["model_params"]["frames_per_clip"] == 3 and meta["threshold"] == 0.5
    # the file itself loads with weights_only=True (no pickled code)
    sd = torch.load(model_file, weights_only=True)
    assert "backbone.conv1.weight" in sd
    _, info = fixture
    clips = [sample_frames(d, 3) for d in _store_clips(info["videos"][0].store).values()]
    s = score_clips(model, clips)
    assert s.shape == (len(clips),) and np.all((s >= 0) & (s <= 1))
    # channels_last and the plain layout agree
    plain, _ = load_quality_model(str(model_file), bf16="off", channels_last=False)
    assert np.allclose(score_clips(plain, clips), s, atol=1e-4)


def test_model_metadata_errors(tmp_path, model_file):
    with pytest.raises(QualityError, match="does not exist"):
        read_metadata(tmp_path / "nope.pt")
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(QualityError, match="metadata"):
        read_metadata(tmp_path / "m.pt")
    (tmp_path / "m.json").write_text("{broken")
    with pytest.raises(QualityError, match="not valid JSON"):
        read_metadata(tmp_path / "m.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_local_backbone_weights(tmp_path):
    import torchvision

    imagenet_like = torchvision.models.resnet18(weights=None)  # 1000-class head: fc is skipped
    path = tmp_path / "r18.pth"
    torch.save(imagenet_like.state_dict(), path)
    m = QualityNet()
    info = load_backbone_weights(m, str(path))
    assert info["loaded"] == len(imagenet_like.state_dict()) - 2  # all but fc.weight / fc.bias
    assert torch.equal(m.backbone.conv1.weight, imagenet_like.conv1.weight)
    import argparse

    pickled_code = tmp_path / "code.pt"  # needs arbitrary unpickling: refused
    torch.save({"state_dict": imagenet_like.state_dict(), "args": argparse.Namespace(lr=1)}, pickled_code)
    with pytest.raises(QualityError, match="weights_only"):
        load_backbone_weights(m, str(pickled_code))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04garbage")
    with pytest.raises(QualityError, match="cannot load"):
        load_backbone_weights(m, str(garbage))


# ----------------------------------------------------------------------------- the stage
def _run_stages(branches, workers=1, mode="in_memory"):
    """Run several ScoreQuality transforms in one pipeline: {name: (videos, cfg)} -> {name: {video_key: VideoResult}}."""
    import tempfile

    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from genie_pipeline.shards.records import VideoResult

    opts = PipelineOptions([f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"])
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(runner=FnApiRunner(), options=opts) as p:
            for name, (videos, qcfg) in branches.items():
                (p | f"Create{name}" >> beam.Create(videos) | f"Score{name}" >> ScoreQuality(qcfg, workers)
                 | f"Json{name}" >> beam.Map(lambda v: json.dumps(v.to_json()))
                 | f"Write{name}" >> beam.io.WriteToText(f"{tmp}/{name}"))
        for name in branches:
            got = [VideoResult.from_json(json.loads(line)) for f in sorted(os.listdir(tmp)) if f.startswith(name)
                   for line in open(os.path.join(tmp, f)) if line.strip()]
            out[name] = {v.video_key: v for v in got}
    return out


def test_score_quality_stage(fixture, model_file, tmp_path):
    """score_only / filter against scores computed outside Beam; two worker processes (the
    handler is pickled to them); bf16; a missing clip store (NaN, rejected); a failed video
    passed through; heuristic reasons never overridden, and in filter mode the clips they
    rejected not scored; inputs not mutated."""
    import copy

    out, info = fixture
    videos = info["videos"]
    model, meta = load_quality_model(str(model_file), bf16="off")
    direct = {}
    for v in videos:
        for key, data in _store_clips(v.store).items():
            direct[key] = float(score_clips(model, [sample_frames(data, 3)])[0])
    threshold = float(np.median(list(direct.values())))
    odd = [copy.deepcopy(v) for v in videos[:3]]
    odd[1].store = str(tmp_path / "missing.tar")
    odd[2].status, odd[2].clips = "failed", []
    # filter mode's input: one clip the heuristics rejected, one whole video
    to_filter = copy.deepcopy(videos)
    to_filter[0].clips[0].kept, to_filter[0].clips[0].reason = False, "static"
    for c in to_filter[1].clips:
        c.kept, c.reason = False, "black"

    got = _run_stages({
        "scoreonly": (videos, QualityConfig(mode="score_only", model=str(model_file), bf16="off")),
        "filter": (to_filter, QualityConfig(mode="filter", model=str(model_file), threshold=threshold, bf16="off")),
        "odd": (odd, QualityConfig(mode="filter", model=str(model_file), threshold=0.0, bf16="on")),
    }, workers=2, mode="multi_processing")

    scored, filtered = got["scoreonly"], got["filter"]
    assert set(scored) == set(filtered) == {v.video_key for v in videos}
    n_quality = n_unscored = 0
    for v, vf in zip(videos, to_filter):
        assert v.clips[0].quality_score is None  # not scored; the input elements were not mutated
        for c0, cf, c, f in zip(v.clips, vf.clips, scored[v.video_key].clips, filtered[v.video_key].clips):
            assert c.key == c0.key == f.key
            assert c.quality_score == pytest.approx(direct[c.key], abs=1e-4)
            assert (c.kept, c.reason) == (c0.kept, c0.reason)  # score_only keeps everything
            if cf.reason:  # an earlier heuristic verdict is never overridden, nor scored
                assert (f.kept, f.reason, f.quality_score) == (False, cf.reason, None)
                n_unscored += 1
                continue
            assert f.quality_score == pytest.approx(direct[c.key], abs=1e-4)
            if direct[c.key] >= threshold:
                assert (f.kept, f.reason) == (True, "")
            else:
                assert (f.kept, f.reason) == (False, "quality")
                n_quality += 1
    assert n_quality > 0 and n_unscored >= 1 + len(videos[1].clips)

    o = got["odd"]
    assert all(c.quality_score == pytest.approx(direct[c.key], abs=0.05) for c in o[odd[0].video_key].clips)  # bf16
    broken = o[odd[1].video_key].clips
    assert all(c.quality_score is None or math.isnan(c.quality_score) for c in broken)  # unscorable: no score
    assert all(not c.kept and c.reason in ("quality", "black") for c in broken)
    assert o[odd[2].video_key].status == "failed"


def test_score_quality_off_and_config_errors(fixture, tmp_path):
    _, info = fixture
    got = _run_stages({"off": (info["videos"][:2], QualityConfig(mode="off"))})["off"]
    v0 = info["videos"][0]
    assert [(c.key, c.kept, c.quality_score is None) for c in got[v0.video_key].clips] == \
        [(c.key, c.kept, True) for c in v0.clips]
    with pytest.raises(QualityError, match="filters.quality.model"):
        ScoreQuality(QualityConfig(mode="filter"), 1)
    with pytest.raises(QualityError, match="filters.quality.model: .*does not exist"):
        ScoreQuality(QualityConfig(mode="score_only", model=str(tmp_path / "none.pt")), 1)


def test_config_defaults_and_extra_forbidden():
    c = QualityConfig()
    assert (c.mode, c.target_precision, c.frames_per_clip) == ("off", 0.9, 4)
    with pytest.raises(Exception):
        QualityConfig(modle="x")
    from genie_pipeline.config import parse_config

    cfg = parse_config({"sources": [{"type": "urls", "name": "a", "urls": ["http://x/a.mp4"]}],
                        "filters": {"quality": {"mode": "filter", "model": "m.pt", "frames_per_clip": 6}}})
    assert cfg.filters.quality.frames_per_clip == 6


# ------------------------------------------------------------------------------ refilter
def test_apply_threshold_rules():
    rows = [{"kept": True, "reason": "", "quality_score": 0.2}, {"kept": False, "reason": "quality", "quality_score": 0.8},
            {"kept": False, "reason": "black", "quality_score": 0.9}, {"kept": True, "reason": "", "quality_score": float("nan")}]
    changed = apply_threshold(rows, 0.5)
    assert [(r["kept"], r["reason"]) for r in rows] == [(False, "quality"), (True, ""), (False, "black"), (True, "")]
    assert changed == {"kept": 1, "rejected": 1, "unscored": 1}


def test_refilter_rewrites_shards_from_manifest(tmp_path):
    out = tmp_path / "out"
    write_quality_output(out, n_good=2, n_bad=2, clips_per_video=2, seed=5)
    rows = pq.read_table(out / "manifest").to_pylist()
    for i, r in enumerate(rows):
        r["quality_score"] = (i + 0.5) / len(rows)
    import pyarrow as pa

    from genie_pipeline.shards.records import SCHEMAS

    for part in (out / "manifest").glob("*.parquet"):  # the manifest with the new scores, as one part
        part.unlink()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMAS["manifest"]), out / "manifest" / "part-scored.parquet")
    with pytest.raises(QualityError, match="no manifest"):
        refilter(str(tmp_path / "nothing"), 0.5, ShardsConfig(), ClipsConfig().spec)
    r = refilter(str(out), 0.5, ShardsConfig(), ClipsConfig().spec)
    after = {x["key"]: x for x in pq.read_table(out / "manifest").to_pylist()}
    for x in rows:
        a = after[x["key"]]
        if x["reason"] not in ("", "quality"):
            assert (a["kept"], a["reason"]) == (False, x["reason"])
        else:
            assert a["kept"] == (x["quality_score"] >= 0.5)
            assert a["reason"] == ("" if a["kept"] else "quality")
    kept = {k for k, a in after.items() if a["kept"]}
    in_shards = set()
    for shard in live_shards(str(out / "shards"), "train") + live_shards(str(out / "shards"), "val"):
        with tarfile.open(shard) as tar:
            in_shards |= {n[:-4] for n in tar.getnames() if n.endswith(".mp4")}
    assert in_shards == kept and r["kept_after"] == len(kept)
    # lowering the threshold restores the quality rejects: nothing was decoded from sources
    r2 = refilter(str(out), 0.0, ShardsConfig(), ClipsConfig().spec)
    assert r2["kept_after"] == sum(x["reason"] in ("", "quality") for x in rows)


# ---------------------------------------------------------------------- reference labels
def test_reference_labels_label_every_clip_by_video(fixture, tmp_path):
    out, info = fixture
    labels = reference_labels(str(out), info["catalog"])
    catalog = {json.loads(l)["id"]: json.loads(l)["quality_label"] for l in open(info["catalog"])}
    manifest = pq.read_table(out / "manifest").to_pylist()
    assert len(labels) == len(manifest)
    for lab in labels:
        assert lab["label"] == catalog[lab["video_id"]]
    assert {l["key"] for l in labels} <= set(ClipIndex.open(out).clips)
    bad = tmp_path / "cat.jsonl"
    bad.write_text('{"id": "x", "quality_label": "meh"}\n')
    with pytest.raises(QualityError, match="good\\|bad"):
        reference_labels(str(out), str(bad))


def test_bf16_auto_only_where_the_cpu_has_it():
    """Emulated bf16 costs many times fp32 (minutes per training step here): `auto` never picks it
    on a CPU without native bf16, for training or for scoring."""
    from genie_pipeline.filtering.quality.model import native_bf16, train_bf16, use_bf16

    measured_ok = {"bf16": {"keeps_accuracy": True}}
    assert use_bf16("auto", measured_ok) == native_bf16()
    assert use_bf16("auto", {"bf16": {"keeps_accuracy": False}}) is False
    assert use_bf16("on", {}) is True and use_bf16("off", measured_ok) is False
    assert train_bf16(QualityConfig().train_bf16) == native_bf16()
    assert train_bf16(True) is True and train_bf16(False) is False


# ------------------------------------------------------------- device, threads, bf16: on the worker
def test_device_selection_with_cuda_faked(monkeypatch):
    """`auto` scores on CUDA where a GPU is usable and on CPU elsewhere; `cuda` without one is an
    error naming the setting and the driver, never a quiet fallback to CPU; a GPU that torch
    reports but cannot allocate on counts as none."""
    from genie_pipeline.filtering.quality import model as qm

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert qm.resolve_device("auto") == "cpu" and qm.resolve_device("cpu") == "cpu"
    with pytest.raises(QualityError, match=r"filters.quality.device is cuda.*580 series"):
        qm.resolve_device("cuda")
    if not torch.cuda.device_count():  # on a machine with a GPU the allocation would succeed
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert qm.cuda_usable() is False and qm.resolve_device("auto") == "cpu"
        with pytest.raises(QualityError, match="is_available\\(\\) = True"):
            qm.resolve_device("cuda")
    monkeypatch.setattr(qm, "cuda_usable", lambda: True)
    assert qm.resolve_device("auto") == "cuda" and qm.resolve_device("cuda") == "cuda"
    assert qm.resolve_device("cpu") == "cpu"
    # bf16 `auto` asks the device the model runs on, not the CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(qm, "native_bf16", lambda: False)
    ok = {"bf16": {"keeps_accuracy": True}}
    assert qm.use_bf16("auto", ok, "cuda") is True and qm.use_bf16("auto", ok, "cpu") is False


def test_scoring_handler_decides_on_the_worker(model_file, monkeypatch):
    """The stage built on the launcher carries settings, not decisions: the worker's cores set
    the torch threads, its CPU or GPU the bf16 and the device, when the model loads. On a GPU
    the model is shared across the VM's processes; on CPU each process has its own."""
    from types import SimpleNamespace

    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from genie_pipeline.filtering.quality import model as qm
    from genie_pipeline.filtering.quality import score as qs

    meta = {**read_metadata(str(model_file)), "bf16": {"keeps_accuracy": True}}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    handler = qs.QualityModelHandler(str(model_file), meta, 4, processes=2)  # pickled to the worker here
    monkeypatch.setattr(qs.os, "cpu_count", lambda: 8)  # the worker: 8 cores, native bf16
    monkeypatch.setattr(qm, "native_bf16", lambda: True)
    threads = torch.get_num_threads()
    try:
        model = handler.load_model()
        assert torch.get_num_threads() == 4  # 8 cores over 2 processes
    finally:
        torch.set_num_threads(threads)
    assert model.device == "cpu" and model.net.bf16 is True and not model.net.training
    assert handler.share_model_across_processes() is False
    assert qs.QualityModelHandler(str(model_file), meta, 4, bf16="off").load_model().net.bf16 is False
    torch.set_num_threads(threads)
    # Dataflow runs one process per vCPU: one thread each; one process per VM takes them all
    assert qs.default_torch_threads(None) == 1 and qs.default_torch_threads(1) == 8
    remote = SimpleNamespace(runner=object(), options=PipelineOptions([]))
    one_per_vm = SimpleNamespace(runner=object(),
                                 options=PipelineOptions(["--experiments=no_use_multiple_sdk_containers"]))
    assert qs.processes_per_machine(remote, 3) is None and qs.processes_per_machine(one_per_vm, 3) == 1
    assert qs.processes_per_machine(SimpleNamespace(runner=FnApiRunner(), options=None), 3) == 3
    # a worker with a GPU: one model per VM
    monkeypatch.setattr(qm, "cuda_usable", lambda: True)
    gpu = qs.QualityModelHandler(str(model_file), meta, 4, device="auto")
    assert gpu.device() == "cuda" and gpu.share_model_across_processes() is True
    import pickle
    assert pickle.loads(pickle.dumps(gpu))._resolved is None  # decided again on each worker
    assert qs.QualityModelHandler(str(model_file), meta, 4, device="cpu").share_model_across_processes() is False


def test_shared_model_scores_through_beams_cross_process_proxy(fixture, model_file, tmp_path):
    """A GPU worker's processes call the one model through Beam's multi-process proxy: the same
    scores as the model called in-process (plain numpy in, floats out, nothing pickled that
    the proxy cannot carry)."""
    import uuid

    from apache_beam.utils.multi_process_shared import MultiProcessShared

    from genie_pipeline.filtering.quality import score as qs

    _, info = fixture
    handler = qs.QualityModelHandler(str(model_file), read_metadata(str(model_file)), 2, device="cpu", bf16="off")
    local = handler.run_inference(info["videos"][:2], handler.load_model())
    proxy = MultiProcessShared(handler.load_model, tag=f"quality-test-{uuid.uuid4().hex}", path=str(tmp_path),
                               always_proxy=True).acquire()
    shared = handler.run_inference(info["videos"][:2], proxy)
    assert [p.inference.keys() for p in shared] == [p.inference.keys() for p in local]
    assert all(len(p.inference) > 0 for p in local)
    for a, b in zip(local, shared):
        assert all(b.inference[k] == pytest.approx(a.inference[k], abs=1e-6) for k in a.inference)


class _SharedOnCpu:
    """Marks a handler as a GPU worker's would be (its model shared across the machine's
    processes) while it loads on CPU, and records each load in `loads` (one file per load)."""

    @staticmethod
    def make(model_file, loads):
        from genie_pipeline.filtering.quality.score import QualityModelHandler

        class Handler(QualityModelHandler):
            def share_model_across_processes(self):
                return True

            def load_model(self):
                import uuid
                open(os.path.join(loads, f"{os.getpid()}-{uuid.uuid4().hex}"), "w").close()
                return super().load_model()

        return Handler(str(model_file), read_metadata(str(model_file)), 2, device="cpu", bf16="off")


@pytest.mark.slow  # ~60 s: two SDK processes start and each imports Beam and torch
def test_one_model_per_machine_when_shared(fixture, model_file, tmp_path):
    """Two SDK processes, the handler shared as on a GPU worker: the model is loaded once on
    the machine and both processes score through it, with the scores of the model called
    directly. (Without the sharing each process loads its own: two loads, and this fails.)"""
    import tempfile

    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    _, info = fixture
    model, _ = load_quality_model(str(model_file), bf16="off")
    direct = {key: float(score_clips(model, [sample_frames(data, 3)])[0])
              for v in info["videos"] for key, data in _store_clips(v.store).items()}
    loads = tmp_path / "loads"
    loads.mkdir()
    handler = _SharedOnCpu.make(model_file, str(loads))
    opts = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(runner=FnApiRunner(), options=opts) as p:
            (p | beam.Create(info["videos"]) | beam.Reshuffle() | RunInference(handler)
             | beam.FlatMap(lambda r: [json.dumps([k, s]) for k, s in r.inference.items()])
             | beam.io.WriteToText(f"{tmp}/scores"))
        got = dict(json.loads(line) for f in sorted(os.listdir(tmp)) for line in open(os.path.join(tmp, f)))
    assert got.keys() == direct.keys()
    assert all(got[k] == pytest.approx(direct[k], abs=1e-4) for k in direct)
    assert len(os.listdir(loads)) == 1, os.listdir(loads)
