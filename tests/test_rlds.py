"""RLDS sources: TFRecord files written here with the real RLDS/TFDS layout (one
tf.train.Example per episode, `steps/...` features flattened, JPEG frames), framed by Beam's
own TFRecord writer and read by ours without TensorFlow; an ingest through the real Beam
FnApiRunner resamples 5 Hz and 15 Hz episodes to 10 FPS clips."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from genie_pipeline import cli
from genie_pipeline.config import parse_config
from genie_pipeline.ingest import rlds
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.decode import iter_frames
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.pipeline import run_ingest
from genie_pipeline.ingest.sources import discover
from genie_pipeline.shards.clip import clip_fps, decode_clip
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.verify import verify

H, W = 90, 160  # the clip size: frames are not rescaled, so a decoded frame shows its step


# ------------------------------------------------------------------ writing a dataset
def jpeg(frame_HWC: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame_HWC).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def moving_frame(step: int, seed: int) -> np.ndarray:
    """A gradient with a square gliding over it: motion, no cut."""
    y, x = np.mgrid[0:H, 0:W]
    frame = np.stack([(x + seed * 40) % 256, (y * 2 + seed * 70) % 256, np.full_like(x, 60 + 20 * seed)], -1)
    cx = (10 + 2 * step) % (W - 20)
    frame[30:50, cx:cx + 20] = 255
    return frame.astype(np.uint8)


def grey_frame(step: int) -> np.ndarray:
    return np.full((H, W, 3), 10 + 4 * step, np.uint8)


def episode(frames: list[np.ndarray], image_key: str = "steps/observation/image") -> bytes:
    """One episode as RT-1's fractal20220817_data stores it: a tf.train.Example whose step
    features are flattened lists over the steps (images, instruction, action, flags)."""
    n = len(frames)
    ex = rlds.Example()
    f = ex.features.feature
    f[image_key].bytes_list.value.extend(jpeg(x) for x in frames)
    f["steps/observation/natural_language_instruction"].bytes_list.value.extend([b"pick coke can"] * n)
    f["steps/observation/base_pose_tool_reached"].float_list.value.extend([0.1] * 7 * n)
    f["steps/action/world_vector"].float_list.value.extend([0.01] * 3 * n)
    f["steps/action/gripper_closedness_action"].float_list.value.extend([0.0] * n)
    f["steps/action/terminate_episode"].int64_list.value.extend([0, 1, 0] * n)
    f["steps/is_first"].int64_list.value.extend([1] + [0] * (n - 1))
    f["steps/is_last"].int64_list.value.extend([0] * (n - 1) + [1])
    f["steps/is_terminal"].int64_list.value.extend([0] * (n - 1) + [1])
    f["steps/reward"].float_list.value.extend([0.0] * (n - 1) + [1.0])
    return ex.SerializeToString()


def image_feature(shape: list[int]) -> dict:
    return {"pythonClassName": "tensorflow_datasets.core.features.image_feature.Image",
            "image": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": "uint8", "encodingFormat": "jpeg"}}


def write_dataset(root: Path, name: str, files: list[list[bytes]], split: str = "train", info: bool = True) -> Path:
    """DATASET/VERSION as TFDS writes it: NAME-SPLIT.tfrecord-NNNNN-of-MMMMM framed by Beam's
    TFRecord writer, dataset_info.json with shardLengths, features.json."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    version = root / name / "0.1.0"
    version.mkdir(parents=True)
    for i, records in enumerate(files):
        with open(version / f"{name}-{split}.tfrecord-{i:05d}-of-{len(files):05d}", "wb") as fh:
            for r in records:
                _TFRecordUtil.write_record(fh, r)
    if info:
        (version / "dataset_info.json").write_text(json.dumps({
            "name": name, "version": "0.1.0", "fileFormat": "tfrecord", "moduleName": f"{name}.{name}_dataset_builder",
            "splits": [{"name": split, "filepathTemplate": "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
                        "shardLengths": [str(len(r)) for r in files],
                        "numBytes": str(sum(len(x) for r in files for x in r))}]}))
        steps = {"pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                 "featuresDict": {"features": {"observation": {
                     "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
                     "featuresDict": {"features": {"image": image_feature([H, W, 3])}}}}}}
        (version / "features.json").write_text(json.dumps({
            "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
            "featuresDict": {"features": {"steps": {
                "pythonClassName": "tensorflow_datasets.core.features.dataset_feature.Dataset",
                "sequence": {"feature": steps, "length": "-1"}}}}}))
    return version


def corrupt_payload(path: Path, record: int) -> None:
    """Flip one byte in the middle of a record's payload (its length header stays intact)."""
    data = bytearray(path.read_bytes())
    pos = 0
    for _ in range(record):
        pos += 16 + int.from_bytes(data[pos:pos + 8], "little")
    length = int.from_bytes(data[pos:pos + 8], "little")
    data[pos + 12 + length // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rlds_source(root: Path, name: str = "rt1", hz: float = 3, **kw) -> dict:
    return {"type": "rlds", "name": name, "root": str(root), "control_hz": hz, **kw}


def source_cfg(d: dict):
    return parse_config({"sources": [d]}).sources[0]


# ------------------------------------------------------------------------ discovery
@pytest.mark.parametrize("with_info", [True, False])
def test_every_episode_is_a_candidate_naming_its_record(tmp_path, with_info):
    """dataset_info.json's shardLengths say how many episodes each file holds; without it the
    records are counted from their headers. Either way nothing else is read."""
    eps = [episode([grey_frame(i) for i in range(2)]) for _ in range(3)]
    root = write_dataset(tmp_path, "fractal20220817_data", [eps[:2], eps[2:]], info=with_info)
    out = list(discover(source_cfg(rlds_source(root))))
    assert [c.video_id for c in out] == ["train-00000-00000", "train-00000-00001", "train-00001-00000"]
    assert [c.extra["rlds_record"] for c in out] == [0, 1, 0]
    assert out[2].path.endswith("fractal20220817_data-train.tfrecord-00001-of-00002")
    assert out[0].title.startswith("fractal20220817_data train")
    assert {c.extra["camera"] for c in out} == {"steps/observation/image"}
    assert list(discover(source_cfg(rlds_source(root, split="test")))) == []


def test_reader_reads_what_beam_writes(tmp_path):
    eps = [episode([grey_frame(i)] * (i + 1)) for i in range(4)]
    root = write_dataset(tmp_path, "ds", [eps])
    path = str(next(root.glob("*.tfrecord-*")))
    assert rlds.count_records(path) == 4
    assert [rlds.read_record(path, i, 2**30) for i in range(4)] == eps
    with pytest.raises(rlds.RecordError, match="holds only 4 records"):
        rlds.read_record(path, 4, 2**30)
    corrupt_payload(Path(path), 2)
    with pytest.raises(rlds.RecordError, match="record 2 of .*payload checksum mismatch"):
        rlds.read_record(path, 2, 2**30)
    assert rlds.read_record(path, 3, 2**30) == eps[3]  # skipping a corrupt record uses its header only


# ----------------------------------------------------------------------- resampling
@pytest.mark.parametrize("hz, steps", [(5, 20), (15, 60), (3, 12)])
def test_episode_resampled_to_clips_fps(tmp_path, hz, steps):
    """At each 10 FPS output time the step on screen then: below 10 Hz steps repeat (5 Hz:
    each twice; 3 Hz: 3 or 4 times), above it steps are dropped (15 Hz: every third); the
    episode keeps its real duration."""
    root = write_dataset(tmp_path, "ds", [[episode([grey_frame(i) for i in range(steps)])]])
    c = next(discover(source_cfg(rlds_source(root, hz=hz))))
    fetched = rlds.fetch_episode(c, DownloadConfig(), str(tmp_path / "scratch"))
    frames = list(iter_frames(fetched.path, ClipsConfig()))
    assert len(frames) == round(steps / hz * 10)
    shown = [round((float(f[40:50, 70:90].mean()) - 10) / 4) for f in frames]
    assert shown[0] == 0 and all(0 <= b - a <= -(-hz // 10) for a, b in zip(shown, shown[1:])), shown
    if hz == 5:
        assert shown == [i // 2 for i in range(2 * steps)]
    elif hz == 3:
        assert set(shown) == set(range(steps)) and {shown.count(s) for s in range(steps)} <= {3, 4}
    else:
        assert len(set(shown)) == len(shown) and shown[-1] >= steps - 2


def test_a_frame_over_max_pixels_is_refused_before_decoding(tmp_path):
    root = write_dataset(tmp_path, "ds", [[episode([grey_frame(0)] * 2)]])
    c = next(discover(source_cfg(rlds_source(root))))
    with pytest.raises(IngestError) as e:
        rlds.fetch_episode(c, DownloadConfig(max_pixels=160 * 90 - 1), str(tmp_path / "scratch"))
    assert (e.value.stage, e.value.error_type) == ("probe", "TooManyPixels") and "160x90" in str(e.value)


# --------------------------------------------------------------------------- ingest
@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    base = tmp_path_factory.mktemp("rlds")
    slow = [episode([moving_frame(i, 0) for i in range(90)]),        # 18 s at 5 Hz: 1 clip
            episode([moving_frame(i, 1) for i in range(90)]),        # corrupted below
            episode([moving_frame(i, 2) for i in range(170)])]       # 34 s: 2 clips
    slow_root = write_dataset(base, "slow_robot", [slow])
    corrupt_payload(next(slow_root.glob("*.tfrecord-*")), 1)
    fast_root = write_dataset(base, "fast_robot", [[episode([moving_frame(i, 3) for i in range(270)])]])  # 18 s at 15 Hz
    cfg = parse_config({
        "sources": [rlds_source(slow_root, "slow", 5), rlds_source(fast_root, "fast", 15)],
        "filters": {"heuristics": {"enabled": False}, "dedupe": {"enabled": False}},
        "shards": {"val_fraction": 0},
        "output": {"dir": str(base / "out")},
    })
    stats = run_ingest(cfg)
    return {"out": base / "out", "stats": stats, "slow": slow_root}


def table(out: Path, name: str) -> list[dict]:
    return pq.read_table(out / name).to_pylist()


def test_ingest_cuts_10_fps_clips_from_5_and_15_hz_episodes(ingested):
    out = ingested["out"]
    clips: dict[str, list] = {}
    for r in table(out, "manifest"):
        clips.setdefault(r["video_key"], []).append(r)
    assert {k: sorted(r["start_s"] for r in v) for k, v in clips.items()} == {
        "slow_train-00000-00000": [0.0], "slow_train-00000-00002": [0.0, 16.0], "fast_train-00000-00000": [0.0]}
    assert all(r["n_frames"] == 160 for v in clips.values() for r in v)
    videos = {r["video_key"]: r for r in table(out, "videos")}
    assert videos["slow_train-00000-00002"]["seconds_in"] == pytest.approx(34.0)
    assert videos["fast_train-00000-00000"]["seconds_in"] == pytest.approx(18.0)
    assert verify(str(out)) == []
    import tarfile

    shard = next((out / "shards").glob("train-*.tar"))
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".mp4"))
        data = tar.extractfile(member).read()
    assert decode_clip(data).shape == (160, 90, 160, 3) and clip_fps(data) == 10


def test_a_corrupt_record_is_a_failure_row_and_the_run_goes_on(ingested):
    fails = {r["video_key"]: r for r in table(ingested["out"], "failures")}
    f = fails["slow_train-00000-00001"]
    assert (f["stage"], f["error_type"]) == ("decode", "CorruptRecord")
    assert "record 1 of" in f["message"] and "slow_robot-train.tfrecord-00000-of-00001" in f["message"]
    assert len(fails) == 1


# ---------------------------------------------------------------------- bad input
def _ingest(tmp_path, capsys, source: dict) -> tuple[int, str]:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(json.dumps({"sources": [source], "output": {"dir": str(tmp_path / "out")}}))
    rc = cli.main(["ingest", "-c", str(cfg)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("image_key", ["steps/observation/wrist_image",  # absent
                                       "steps/observation/natural_language_instruction"])  # bytes, not images
def test_missing_image_feature_exits_2_naming_feature_and_file(tmp_path, capsys, image_key):
    root = write_dataset(tmp_path, "ds", [[episode([grey_frame(0)] * 2)]])
    rc, err = _ingest(tmp_path, capsys, rlds_source(root, image_key=image_key))
    assert rc == 2, err
    assert "sources.0.image_key" in err and f"{image_key!r}" in err
    assert "ds-train.tfrecord-00000-of-00001" in err and "steps/observation/image" in err  # what there is
    assert not (tmp_path / "out").exists(), "nothing started"


def test_a_split_without_files_exits_2_naming_the_root(tmp_path, capsys):
    root = write_dataset(tmp_path, "ds", [[episode([grey_frame(0)] * 2)]])
    rc, err = _ingest(tmp_path, capsys, rlds_source(root, split="validation"))
    assert rc == 2 and "sources.0.root" in err and "'validation'" in err and str(root) in err
    assert not (tmp_path / "out").exists()


def test_control_hz_is_required(tmp_path):
    from genie_pipeline.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config({"sources": [{"type": "rlds", "name": "rt1", "root": str(tmp_path)}]})
    assert e.value.key == "sources.0.control_hz"
