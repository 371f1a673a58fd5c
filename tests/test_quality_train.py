"""train-quality: threshold choice, video split, the whole training run, clear errors."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genie_pipeline.cli import main  # noqa: E402
from genie_pipeline.filtering.quality.label.store import LabelStore  # noqa: E402
from genie_pipeline.filtering.quality.metrics import choose_threshold, clip_metrics  # noqa: E402
from genie_pipeline.filtering.quality.train import split_videos  # noqa: E402
from genie_pipeline.shards.reader import live_shards  # noqa: E402
from genie_pipeline.shards.reader import ClipIndex  # noqa: E402
from tests.fixtures.output import write_quality_output  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    out = tmp_path_factory.mktemp("tfx") / "out"
    info = write_quality_output(out, n_good=5, n_bad=5, clips_per_video=2, seed=11)
    return out, info


def _sets(**values) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"filters.quality.{k}={v}")]


def _fails(capsys, argv, pattern) -> None:
    """The CLI exits 2 with a message matching `pattern` (no traceback)."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert re.search(pattern, err), err


def test_choose_threshold_for_target_precision():
    y = np.array([1, 1, 1, 0, 1, 0, 0, 0])
    s = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.1])
    t, met = choose_threshold(y, s, 0.9)
    assert met and t == pytest.approx(0.75)  # keeps 0.95..0.8 (all good); 0.6 would give 4/5; midpoint to 0.7
    t, met = choose_threshold(y, s, 0.75)
    assert met and t == pytest.approx(0.5)
    m = clip_metrics(y, s, 0.75)
    assert (m["precision"], m["recall"], m["roc_auc"]) == (1.0, 0.75, 0.9375)
    t, met = choose_threshold(np.array([0, 1]), np.array([0.9, 0.1]), 0.9)  # unreachable
    assert not met and 0 <= t <= 1


def test_split_is_by_video_and_stratified():
    vl = {f"g{i}": "good" for i in range(10)} | {f"b{i}": "bad" for i in range(5)}
    sp = split_videos(vl, 0.2, 0.2, seed=0)
    assert sorted(sum(sp.values(), [])) == sorted(vl)  # each video in exactly one part
    for part in ("val", "test"):
        assert {vl[v] for v in sp[part]} == {"good", "bad"}
    assert split_videos(vl, 0.2, 0.2, seed=0) == sp
    tiny = split_videos({"a": "good", "b": "bad"}, 0.2, 0.2, seed=0)
    assert sorted(tiny["train"]) == ["a", "b"] and tiny["val"] == tiny["test"] == []


def test_split_by_game_holds_whole_games_out():
    """`group_of`: no game has videos in two parts (the demo's held-out AUC is on unseen games)."""
    vl, game = {}, {}
    for g in range(8):
        for i in range(4):
            v = f"g{g}v{i}"
            vl[v], game[v] = ("good" if i < 2 else "bad"), f"game{g}"
    sp = split_videos(vl, 0.2, 0.2, seed=3, group_of=game)
    assert sorted(sum(sp.values(), [])) == sorted(vl)
    games = {p: {game[v] for v in vs} for p, vs in sp.items()}
    assert not (games["train"] & games["test"]) and not (games["train"] & games["val"]) \
        and not (games["val"] & games["test"])
    for part in ("val", "test"):
        assert {vl[v] for v in sp[part]} == {"good", "bad"} and len(sp[part]) >= 0.2 * len(vl)
    assert split_videos(vl, 0.2, 0.2, seed=3, group_of=game) == sp
    one = split_videos({"a": "good", "b": "bad"}, 0.2, 0.2, seed=0, group_of={"a": "x", "b": "x"})
    assert sorted(one["train"]) == ["a", "b"]  # one game: all of it trains


TINY = dict(epochs=3, min_epochs=1, patience=3, frames_per_clip=2, train_batch_size=8, train_frame_pool=4,
            steps_per_epoch=2)


@pytest.fixture(scope="module")
def trained(fixture, tmp_path_factory):
    """One training run through the CLI (reference labels), shared by the tests below."""
    out, info = fixture
    model = tmp_path_factory.mktemp("tq") / "q" / "model.pt"
    rc = main(["train-quality", str(out), "--reference-catalog", str(info["catalog"]), "--no-progress",
               *_sets(model=model, **TINY)])
    assert rc == 0
    return model


def test_train_quality_cli_end_to_end(fixture, trained):
    """Reference labels -> trained model, metadata and pictures; the model file loads with
    weights_only and scores clips like the metadata says."""
    from PIL import Image

    from genie_pipeline.filtering.quality import load_quality_model
    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.score import score_clips

    out, info = fixture
    model = trained
    meta = json.loads(model.with_suffix(".json").read_text())
    assert meta["input"]["frames_per_clip"] == 2 and (meta["input"]["height"], meta["input"]["width"]) == (90, 160)
    assert 0 <= meta["threshold"] <= 1 and meta["target_precision"] == 0.9
    assert len(meta["labels"]["hash"]) == 64 and meta["labels"]["n_clips"] == 20
    assert meta["training"]["seconds"] > 0 and 1 <= meta["training"]["epochs_run"] <= 3
    for part in ("train", "val", "test"):
        assert {"roc_auc", "precision", "recall", "n"} <= set(meta["metrics"][part])
    assert set(meta["metrics"]["pooling_roc_auc"]["test"]) == {"mean_prob", "mean_logit", "min_prob", "learned"}
    assert meta["pooling"] in meta["metrics"]["pooling_roc_auc"]["val"] and meta["model_params"]["pooling"] == meta["pooling"]
    assert "keeps_accuracy" in meta["bf16"]
    split = meta["split"]
    assert not (set(split["train"]) & set(split["val"])) and not (set(split["train"]) & set(split["test"]))
    for pic in meta["pictures"].values():
        with Image.open(model.parent / pic) as im:
            assert im.format == "PNG" and im.size[0] > 300
    net, meta2 = load_quality_model(str(model), bf16="off")
    assert meta2 == meta
    index = ClipIndex.open(out)
    test_keys = [k for k, c in index.clips.items() if c.video_id in split["test"]]
    s = score_clips(net, [sample_frames(index.read(k), 2) for k in test_keys])
    y = np.array([1 if "good" in index[k].title else 0 for k in test_keys])
    again = clip_metrics(y, s, meta["threshold"])
    assert again["roc_auc"] == pytest.approx(meta["metrics"]["test"]["roc_auc"], abs=1e-6)


def test_int8_scoring_from_the_calibration_stored_with_the_model(fixture, trained):
    """Training stores 64 of its training frames and measures int8 against fp32 on held-out
    clips; loading with int8 quantizes the trunk from those frames, and its scores follow the
    fp32 model's (same ranking to within what the metadata reports). Without calibration
    frames `auto` scores in fp32 and `on` names the problem."""
    import torch

    from genie_pipeline.filtering.quality import QualityError, load_quality_model
    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.model import INT8_CALIBRATION, save_quality_model, use_int8
    from genie_pipeline.filtering.quality.score import score_clips

    out, _ = fixture
    meta = json.loads(trained.with_suffix(".json").read_text())
    calib = torch.load(trained, weights_only=True)[INT8_CALIBRATION]
    assert calib.dtype == torch.uint8 and tuple(calib.shape) == (meta["int8"]["calibration_frames"], 90, 160, 3)
    assert calib.float().std() > 5  # real frames, not a constant
    assert {"keeps_accuracy", "roc_auc_fp32", "roc_auc_int8", "decision_agreement"} <= set(meta["int8"])

    fp32, _ = load_quality_model(str(trained), bf16="off", int8="off")
    int8, _ = load_quality_model(str(trained), bf16="off", int8="on")
    assert not fp32.int8 and int8.int8 and int8.int8_trunk is not None
    index = ClipIndex.open(out)
    clips = [sample_frames(index.read(k), 2) for k in list(index.clips)[:12]]
    s32, s8 = score_clips(fp32, clips), score_clips(int8, clips)
    assert not np.array_equal(s32, s8)  # the int8 trunk really ran
    assert np.abs(s32 - s8).max() < 0.15
    assert np.corrcoef(s32, s8)[0, 1] > 0.9
    auto, _ = load_quality_model(str(trained), bf16="off", int8="auto")
    assert auto.int8 == bool(meta["int8"]["keeps_accuracy"])
    # the state dict keeps the fp32 weights: saving an int8-loaded model writes the same file
    assert set(int8.state_dict()) == set(fp32.state_dict())

    old = save_quality_model(fp32, trained.parent / "old" / "model.pt", {**meta, "int8": {}})  # no calibration
    assert not load_quality_model(str(old), bf16="off", int8="auto")[0].int8
    with pytest.raises(QualityError, match="no int8 calibration frames"):
        load_quality_model(str(old), bf16="off", int8="on")
    with pytest.raises(QualityError, match="int8 scoring is for CPUs"):
        use_int8("on", meta, True, device="cuda")
    assert not use_int8("auto", {"int8": {"keeps_accuracy": True}}, True, device="cuda")


def test_train_quality_clear_errors(fixture, tmp_path, capsys):
    out, info = fixture
    keys = list(ClipIndex.open(out).clips)

    def train(input_dir, labels_db):  # the CLI without --config: defaults
        return ["train-quality", input_dir, *_sets(labels_db=labels_db)]

    empty = tmp_path / "empty.sqlite"
    LabelStore(empty).close()
    _fails(capsys, train(out, empty), "no labels")

    one = tmp_path / "one.sqlite"
    with LabelStore(one) as st:
        for k in keys[:4]:
            st.add(k, "good", "ann")
        st.add(keys[4], "skip", "ann")
    _fails(capsys, train(out, one), "all 4 labelled clips are 'good'")

    ghost = tmp_path / "ghost.sqlite"
    with LabelStore(ghost) as st:
        st.add(keys[0], "good", "ann")
        st.add(keys[1], "bad", "ann")
        st.add("yt_gone_000016000", "bad", "ann")
    _fails(capsys, train(out, ghost), "don't exist.*yt_gone_000016000")

    broken = tmp_path / "broken.sqlite"
    broken.write_bytes(b"SQLite format 3\x00" + b"\x00garbage" * 500)
    _fails(capsys, train(out, broken), "corrupted")
    not_json = tmp_path / "labels.json"
    not_json.write_text('[{"data": ')
    _fails(capsys, train(out, not_json), "corrupted")
    _fails(capsys, train(out, tmp_path / "missing.sqlite"), "does not exist")
    _fails(capsys, train(tmp_path / "no-such-dir", one), "does not exist")


def test_refilter_rescore_cli(fixture, trained, tmp_path, capsys):
    """`refilter OUT --rescore --set filters.quality.model=M`: every clip scored by the Beam
    stage, kept/reason from the model's threshold, shards rewritten from the clip store."""
    import math
    import shutil
    import tarfile

    import pyarrow.parquet as pq

    from genie_pipeline.filtering.quality import read_metadata

    src, _ = fixture
    out = tmp_path / "out"
    shutil.copytree(src, out)
    assert main(["refilter", str(out), "--rescore", *_sets(model=trained)]) == 0
    assert "refilter" in capsys.readouterr().out
    threshold = read_metadata(trained)["threshold"]
    rows = pq.read_table(out / "manifest").to_pylist()
    assert all(not math.isnan(r["quality_score"]) for r in rows)
    for r in rows:
        if r["reason"] not in ("", "quality"):
            assert not r["kept"]
        else:
            assert r["kept"] == (r["quality_score"] >= threshold)
    in_shards = set()
    for shard in live_shards(str(out / "shards"), "train") + live_shards(str(out / "shards"), "val"):
        with tarfile.open(shard) as tar:
            in_shards |= {n[:-4] for n in tar.getnames() if n.endswith(".mp4")}
    assert in_shards == {r["key"] for r in rows if r["kept"]}
    _fails(capsys, ["refilter", out], "threshold")  # no threshold, no model: a clear error


@pytest.mark.slow
def test_demo_quality_from_reference_labels(fixture, tmp_path):
    """`make demo`'s step: reference labels -> model -> every clip scored -> shards filtered."""
    import shutil
    from types import SimpleNamespace

    import pyarrow.parquet as pq

    from genie_pipeline.corpus.reference import APPLY_MIN_ROC_AUC, demo_quality
    from genie_pipeline.filtering.config import FiltersConfig
    from genie_pipeline.filtering.quality import QualityConfig
    from genie_pipeline.shards.config import ClipsConfig, OutputConfig, ShardsConfig

    src, info = fixture
    out = tmp_path / "out"
    shutil.copytree(src, out)
    cfg = SimpleNamespace(output=OutputConfig(dir=str(out)), shards=ShardsConfig(), clips=ClipsConfig(),
                          filters=FiltersConfig(quality=QualityConfig(**TINY)))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = [json.loads(x) for x in open(info["catalog"])]
    for i, r in enumerate(rows):
        r["game"] = f"game{i % 4}"  # 10 videos over 4 games
    (corpus / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = demo_quality(cfg, corpus, progress=False)
    assert "ROC-AUC" in summary and "games it never trained on" in summary
    meta = json.loads((out / "quality" / "model.json").read_text())
    game = {r["id"]: r["game"] for r in rows}
    trained = {game[v] for v in meta["split"]["train"]}
    assert trained and not trained & {game[v] for p in ("val", "test") for v in meta["split"][p]}
    rows = pq.read_table(out / "manifest").to_pylist()
    assert all(r["quality_score"] == r["quality_score"] for r in rows)  # no NaN
    before, after = (int(x) for x in summary.rsplit("clips kept ", 1)[1].split(" -> "))
    auc = meta["metrics"]["test" if meta["metrics"].get("test") else "val"]["roc_auc"]
    if auc is None or auc < APPLY_MIN_ROC_AUC:  # a model no better than that filters nothing
        assert "not applied" in summary and after == before
    else:
        assert after == sum(r["kept"] for r in rows) and all(
            not r["kept"] or r["quality_score"] >= meta["threshold"] for r in rows)
    # a threshold the config names is applied whatever the model's ROC-AUC
    cfg.filters = FiltersConfig(quality=QualityConfig(**{**TINY, "threshold": 0.999}))
    strict = demo_quality(cfg, corpus, progress=False)
    assert "not applied" not in strict and strict.endswith(f"-> {sum(r['kept'] for r in pq.read_table(out / 'manifest').to_pylist())}")


def test_mil_frame_loss_and_training_views():
    import torch

    from genie_pipeline.filtering.quality.train import _frame_loss, _pick

    logits = torch.tensor([[2.0, -1.0, 0.5], [1.0, -3.0, 0.0]], requires_grad=True)
    target = torch.tensor([1.0, 0.0])  # a good clip, a bad clip
    _frame_loss(logits, target, "mil").backward()
    g = logits.grad
    assert (g[0] != 0).all()  # a good clip: every frame pushed up
    assert g[1, 1] != 0 and g[1, 0] == 0 and g[1, 2] == 0  # a bad clip: only its least good frame
    logits.grad = None
    _frame_loss(logits, target, "frame").backward()
    assert (logits.grad != 0).all()
    pool = np.arange(2 * 10).reshape(2, 10)[..., None]  # (B, P, 1): frame index as value
    views = _pick(pool, 4, np.random.default_rng(0))[..., 0]
    base = np.array([1, 3, 6, 8])  # sample_indices(10, 4): where scoring looks
    assert views.shape == (2, 4) and np.all(np.abs(views % 10 - base) <= 1)
    assert np.all(np.diff(views, axis=1) >= 0)  # time order kept


def test_cli_reports_bad_labels_without_a_traceback(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    bad = tmp_path / "labels.parquet"
    bad.write_bytes(b"not parquet")
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "train-quality", str(tmp_path),
                        "--set", f"filters.quality.labels_db={bad}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "labels" in r.stderr.lower(), r.stderr
