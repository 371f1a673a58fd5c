"""Probe, decode, cut and encode on real ffmpeg-made videos; heuristic scores."""
import io
import subprocess

import av
import numpy as np
import pytest

from genie_pipeline.filtering.heuristics import score_clip, verdict
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.filtering.config import HeuristicsConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.decode import iter_clips, iter_frames, probe
from genie_pipeline.shards.clip import decode_clip, encode_clip
from tests.conftest import ffmpeg, make_video

CFG = ClipsConfig()


@pytest.mark.parametrize("seconds, clips", [(35.0, 2), (16.5, 1), (15.0, 0), (48.2, 3)])
def test_clip_count_from_duration(tmp_path, seconds, clips):
    p = make_video(tmp_path / "v.mp4", seconds)
    assert abs(probe(str(p)).duration_s - seconds) < 0.1
    out = list(iter_clips(str(p), CFG))
    assert [w.start for w in out] == [160 * i for i in range(clips)]
    assert all(w.frames_THWC.shape == (160, 90, 160, 3) and w.frames_THWC.dtype == np.uint8 for w in out)


def test_variable_frame_rate_resampled_by_timestamp(tmp_path):
    # all 30 fps frames for 10 s, then only every fourth one: 20 s of VFR must give 200 frames
    vfr = make_video(tmp_path / "vfr.mp4", 20, extra=["-vf", "select='lt(t,10)+not(mod(n,4))'",
                                                      "-fps_mode", "vfr"])
    with av.open(str(vfr)) as c:
        times = [f.time for f in c.decode(video=0)]
    gaps = np.diff(times)
    assert gaps.min() < 0.05 and gaps.max() > 0.1  # really variable
    n = sum(1 for _ in iter_frames(str(vfr), CFG))
    assert abs(n - 200) <= 2


def test_rotation_metadata_is_honoured(tmp_path):
    plain = make_video(tmp_path / "p.mp4", 2, size="640x480")
    rot = tmp_path / "r.mp4"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", "-display_rotation", "90", "-i", str(plain),
                    "-c", "copy", str(rot)], check=True)
    assert probe(str(rot)).rotation in (90, 270)
    frame = next(iter_frames(str(rot), CFG))
    content_cols = int((frame.max(axis=(0, 2)) > 20).sum())
    assert frame.shape == (90, 160, 3) and content_cols < 80  # portrait: pillarboxed


@pytest.mark.parametrize("aspect", ["pad", "crop", "stretch"])
def test_aspect_policies(tmp_path, aspect):
    p = make_video(tmp_path / "sq.mp4", 1, size="480x480", src="color=c=white:size=480x480:rate=30")
    f = next(iter_frames(str(p), CFG.model_copy(update={"aspect": aspect})))
    white_cols = int((f.min(axis=(0, 2)) > 200).sum())
    assert f.shape == (90, 160, 3)
    assert white_cols == {"pad": 90, "crop": 160, "stretch": 160}[aspect] or (aspect == "pad" and abs(white_cols - 90) <= 1)
    if aspect == "pad":
        assert f[:, :10].max() < 20  # black bars left and right


def test_lerobot_style_span(tmp_path):
    p = make_video(tmp_path / "v.mp4", 40)
    clips = list(iter_clips(str(p), CFG, start_s=20.0, end_s=38.0))
    assert len(clips) == 1


def test_encoded_clip_roundtrip_and_keyframes(tmp_path):
    p = make_video(tmp_path / "v.mp4", 17)
    frames = next(iter_clips(str(p), CFG)).frames_THWC
    data = encode_clip(frames, CFG.spec)
    back = decode_clip(data)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 8
    with av.open(io.BytesIO(data)) as c:
        keys = [i for i, pkt in enumerate(c.demux(video=0)) if pkt.is_keyframe]
    assert keys[:4] == [0, 16, 32, 48]


@pytest.mark.parametrize("content", [b"", b"not a video at all\n" * 10])
def test_broken_inputs_raise_video_error(tmp_path, content):
    p = tmp_path / "b.mp4"
    p.write_bytes(content)
    with pytest.raises(IngestError) as e:
        probe(str(p))
    assert (e.value.stage, e.value.error_type) == ("probe", "VideoError")
    with pytest.raises(IngestError) as e:
        list(iter_clips(str(p), CFG))
    assert e.value.stage in ("probe", "decode") and e.value.error_type == "VideoError"


def test_truncated_and_audio_only(tmp_path):
    good = make_video(tmp_path / "g.mp4", 20)
    trunc = tmp_path / "t.mp4"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 3])  # moov at the end: gone
    with pytest.raises(IngestError):
        list(iter_clips(str(trunc), CFG))
    audio = tmp_path / "a.mp4"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine", "-t", "20", str(audio)], check=True)
    with pytest.raises(IngestError, match="no video stream") as e:
        probe(str(audio))
    assert (e.value.stage, e.value.error_type) == ("probe", "VideoError")


# --------------------------------------------------------------------------- heuristics
def _clip(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(160)
    if kind == "moving":
        x = np.zeros((160, 90, 160, 3), np.uint8) + 60
        for i in t:
            x[i, 30:60, (i * 3) % 130:(i * 3) % 130 + 30] = 220
        return x
    if kind == "black":
        return rng.integers(0, 6, (160, 90, 160, 3), dtype=np.uint8)
    if kind == "static":
        base = rng.integers(0, 255, (1, 90, 160, 3), dtype=np.uint8)
        return np.repeat(base, 160, axis=0)
    if kind == "slideshow":
        imgs = rng.integers(0, 255, (6, 90, 160, 3), dtype=np.uint8)
        return np.repeat(imgs, 30, axis=0)[:160]
    if kind == "cuts":
        imgs = [np.full((90, 160, 3), v, np.uint8) for v in (30, 220)]
        x = np.stack([imgs[(i // 3) % 2] for i in t])
        x[:, 10:20, 10:20] = (t[:, None, None, None] * 7 % 255).astype(np.uint8)
        return x
    raise ValueError(kind)


@pytest.mark.parametrize("kind, reason", [("moving", ""), ("black", "black"), ("static", "static"),
                                          ("slideshow", "slideshow"), ("cuts", "cuts")])
def test_heuristic_verdicts(kind, reason):
    assert verdict(score_clip(_clip(kind), 10), HeuristicsConfig()) == reason


def test_heuristics_can_be_disabled():
    assert verdict(score_clip(_clip("black"), 10), HeuristicsConfig(enabled=False)) == ""
