"""Shot-aware clipping on real spliced footage with known cut times: ffmpeg test sources and
rendered game footage concatenated by ffmpeg, encoded as h264, decoded by the real decoder."""
import subprocess

import numpy as np
import pytest

from genie_pipeline.filtering.config import HeuristicsConfig
from genie_pipeline.filtering.shots import find_cuts
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.decode import ClipCutter, Window, iter_clips, iter_frames, pick_evenly
from genie_pipeline.ingest.process import VideoProcessor
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.records import Candidate, Failure, VideoResult, clip_key
from tests.conftest import ffmpeg
from tests.fixtures.footage import render

CFG = ClipsConfig()
SPLIT = CFG.model_copy(update={"split_at_cuts": True})  # clips inside shots (not the default)
FPS = CFG.fps
# cuts 1, 3 and 8 s apart; the first at 21 s falls inside what was the 16-32 s window
SPLICED = [("testsrc2", 21), ("mandelbrot", 1), ("smptebars", 3), (("platformer", 1), 8), ("testsrc", 17),
           (("shooter", 2), 12), ("rgbtestsrc", 5), (("platformer", 3), 18)]
# cuts between footage of one kind: similar palettes, dark backgrounds
SAME_KIND = [(("shooter", 11), 10), (("shooter", 12), 10), (("platformer", 13), 12), (("platformer", 14), 12),
             (("webcam", 15), 6), (("webcam", 16), 6)]


def splice(path, segments, size="320x180"):
    """An h264 mp4 of `segments` ((source, seconds); a source is an ffmpeg lavfi source or a
    (footage kind, seed) rendered at 10 FPS), all scaled to `size` at 30 FPS. Returns the
    cut times in seconds."""
    w, h = size.split("x")
    inputs, chains = [], []
    for i, (src, secs) in enumerate(segments):
        if isinstance(src, tuple):
            kind, seed = src
            spec = ClipSpec(fps=10, width=160, height=90, frames=secs * 10, keyframe_interval=1, crf=23)
            raw = path.with_suffix(f".{i}.rgb")
            raw.write_bytes(render(kind, np.random.default_rng(seed), spec).tobytes())
            inputs += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "160x90", "-r", "10", "-i", str(raw)]
        else:
            inputs += ["-f", "lavfi", "-i", f"{src}=size={size}:rate=30"]
        chains.append(f"[{i}:v]trim=duration={secs},setpts=PTS-STARTPTS,fps=30,scale={w}:{h},setsar=1,"
                      f"format=yuv420p[v{i}]")
    graph = ";".join(chains) + ";" + "".join(f"[v{i}]" for i in range(len(segments))) + \
        f"concat=n={len(segments)}:v=1:a=0[out]"
    subprocess.run([ffmpeg(), "-loglevel", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[out]",
                    "-c:v", "libx264", "-preset", "ultrafast", str(path)], check=True)
    return [float(t) for t in np.cumsum([s for _, s in segments])[:-1]]


@pytest.fixture(scope="module")
def spliced(tmp_path_factory):
    """(path, true cut frames at 10 FPS, decoded frames) of the SPLICED video."""
    path = tmp_path_factory.mktemp("shots") / "spliced.mp4"
    cuts = splice(path, SPLICED)
    return path, [round(t * FPS) for t in cuts], list(iter_frames(str(path), CFG))


def _matched(found, truth):
    """How many true cuts have a found cut within ±1 frame."""
    return sum(any(abs(f - t) <= 1 for f in found) for t in truth)


def test_every_cut_found_within_one_frame(spliced, tmp_path):
    _, truth, frames = spliced
    same_path = tmp_path / "same.mp4"
    same_truth = [round(t * FPS) for t in splice(same_path, SAME_KIND)]
    same_found = find_cuts(iter_frames(str(same_path), CFG), FPS)
    found = find_cuts(frames, FPS)
    # precision and recall on both splices: every cut, nothing else
    assert _matched(found, truth) == len(truth) == len(found), (found, truth)
    assert _matched(same_found, same_truth) == len(same_truth) == len(same_found), (same_found, same_truth)


@pytest.mark.parametrize("kind", ["platformer", "shooter"])
def test_no_cuts_in_continuous_game_footage(kind):
    # 40 s: the platformer's level scrolls and wraps round; the shooter's stars and ships move
    spec = ClipSpec(fps=10, width=160, height=90, frames=400, keyframe_interval=16, crf=23)
    assert find_cuts(render(kind, np.random.default_rng(5), spec), FPS) == []


@pytest.mark.parametrize("flash", [1, 2])
def test_a_flash_is_not_a_cut(flash):
    # an explosion whitens the screen for a frame or two, then the same shot goes on
    spec = ClipSpec(fps=10, width=160, height=90, frames=200, keyframe_interval=16, crf=23)
    frames = render("platformer", np.random.default_rng(1), spec)
    frames[100:100 + flash] = 235
    assert find_cuts(frames, FPS) == []


def test_shots_cut_back_and_forth_are_all_cuts():
    # a montage switching between two games every 0.3 s: each switch is a cut, not a flash
    spec = ClipSpec(fps=10, width=160, height=90, frames=60, keyframe_interval=16, crf=23)
    a, b = (render("platformer", np.random.default_rng(seed), spec) for seed in (1, 2))
    frames = np.where((np.arange(60) // 3 % 2 == 0)[:, None, None, None], a, b)
    assert find_cuts(frames, FPS) == list(range(3, 60, 3))


def test_no_cuts_in_the_sample_corpus_gameplay(small_corpus):
    """Rendered Atari, CoinRun and robot-arm footage: one shot each, except the montages."""
    import json

    rows = [json.loads(x) for x in (small_corpus / "catalog.jsonl").read_text().splitlines() if x.strip()]
    videos = [r for r in rows if r.get("file") and not r.get("expect_failure")]
    montages = {"rapid_cuts", "slideshow"}
    assert any(r["made_how"] in montages for r in videos) and len(videos) > 5
    for r in videos:
        cuts = find_cuts(iter_frames(str(small_corpus / r["file"]), CFG), FPS)
        assert (len(cuts) >= 5) if r["made_how"] in montages else (cuts == []), (r["id"], r["made_how"], cuts)


def test_no_cuts_in_continuous_test_source(tmp_path):
    path = tmp_path / "moving.mp4"
    splice(path, [("testsrc2", 40)])
    assert find_cuts(iter_frames(str(path), CFG), FPS) == []


def test_clips_start_at_shot_starts_and_never_span_a_cut(spliced):
    _, truth, frames = spliced
    n = CFG.frames
    windows = list(ClipCutter(SPLIT)(frames))
    bounds = [0, *truth, len(frames)]
    shots = list(zip(bounds[:-1], bounds[1:]))
    # every shot of at least one clip, and only those, gives clips from its first frame on;
    # the remainder of a shot is dropped
    expected = [(i, a + k * n) for i, (a, b) in enumerate(shots) for k in range((b - a) // n)]
    assert [w.shot for w in windows] == [i for i, _ in expected]
    for w, (_, start) in zip(windows, expected):
        assert abs(w.start - start) <= 1 and w.cuts == 0
        assert not any(w.start < t < w.start + n - 1 for t in truth), (w.start, truth)
        assert w.frames_THWC.shape == (n, 90, 160, 3)
    assert [start for _, start in expected] == [0, 330, 670]


def test_by_default_clips_lie_on_the_grid_and_record_their_cut_frames(spliced):
    _, truth, frames = spliced
    windows = list(ClipCutter(CFG)(frames))
    n = CFG.frames
    assert [w.start for w in windows] == [0, 160, 320, 480, 640]
    assert [w.cuts for w in windows] == [sum(s < t < s + n for t in truth) for s in (0, 160, 320, 480, 640)]
    assert [w.cuts for w in windows] == [0, 3, 1, 2, 1]
    # each cut to the frame (±1, the encoder's timing), relative to the clip's first frame
    for w in windows:
        inside = [t - w.start for t in truth if w.start < t < w.start + n]
        assert len(w.cut_frames) == len(inside) == w.cuts
        assert all(abs(f - t) <= 1 for f, t in zip(w.cut_frames, inside)), (w.start, w.cut_frames, inside)
    assert [w.shot for w in windows] == [0, 0, 3, 4, 6]  # the shot each starts in


def test_min_shot_s_drops_shorter_shots(spliced):
    _, _, frames = spliced
    cutter = ClipCutter(SPLIT.model_copy(update={"min_shot_s": 17.5}))
    windows = list(cutter(frames))
    # the 21 s and 18 s shots give a clip; the 17 s one no longer does
    assert [w.shot for w in windows] == [0, 7]
    assert [abs(w.start - s) <= 1 for w, s in zip(windows, (0, 670))] == [True, True]
    assert cutter.shots == len(SPLICED) and abs(cutter.longest_shot - 210) <= 1


def _processor(tmp_path, **clips):
    return VideoProcessor(DownloadConfig(), ClipsConfig(**clips), HeuristicsConfig(enabled=False),
                          out=str(tmp_path / "out"), scratch=str(tmp_path / "scratch"))


def test_manifest_rows_record_shot_cuts_and_true_start(spliced, tmp_path):
    path, _, _ = spliced
    c = Candidate(source="t", video_id="spliced", path=str(path), title="spliced")
    result = _processor(tmp_path, split_at_cuts=True)(c)
    assert isinstance(result, VideoResult), result
    starts_ms = [round(r.start_s * 1000) for r in result.clips]
    assert [abs(s - t) <= 100 for s, t in zip(starts_ms, (0, 33000, 67000))] == [True] * 3
    assert [r.key for r in result.clips] == [clip_key(c.video_key, s) for s in starts_ms]
    assert [(r.shot, r.cuts) for r in result.clips] == [(0, 0), (4, 0), (7, 0)]


def test_a_video_of_short_shots_is_a_failure_row(tmp_path):
    path = tmp_path / "short_shots.mp4"
    splice(path, [("testsrc2", 6), (("platformer", 1), 6), ("mandelbrot", 6), (("shooter", 2), 6)])
    c = Candidate(source="t", video_id="short", path=str(path), title="short shots")
    fail = _processor(tmp_path, split_at_cuts=True)(c)
    assert isinstance(fail, Failure), fail
    assert (fail.stage, fail.error_type) == ("cut", "NoShotLongEnough")
    assert (fail.title, fail.path) == ("short shots", str(path))  # the row says which file
    assert "longest of 4 shots is 6.0 s" in fail.message and "16 s" in fail.message
    # by default (split_at_cuts off) the same video gives its one 16 s window, its cuts recorded
    result = _processor(tmp_path / "grid")(c)
    assert [(r.shot, r.cuts) for r in result.clips] == [(0, 2)]
    assert [[abs(f - t) <= 1 for f, t in zip(r.cut_frames, (60, 120))] for r in result.clips] == [[True, True]]


# ------------------------------------------------------------------ clips spread evenly
def _windows(starts, consumed):
    for s in starts:
        consumed.append(s)
        yield Window(start=s, shot=0, cuts=0, frames_THWC=np.empty(0))


def test_pick_evenly_takes_the_window_nearest_each_part_middle_and_stops():
    starts, consumed = list(range(0, 801, 160)), []  # a 100 s video's six 16 s windows
    picked = [w.start for w in pick_evenly(_windows(starts, consumed), 3, 1000, 160)]
    # targets: the middles of three parts of [0, 840] frames = 140, 420, 700
    assert picked == [160, 480, 640]
    assert consumed == [0, 160, 320, 480, 640, 800]  # 800 settles the last target
    consumed.clear()
    assert [w.start for w in pick_evenly(_windows(starts, consumed), 1, 1000, 160)] == [480]
    assert consumed == [0, 160, 320, 480, 640]  # decoding stops once the pick is settled


def test_pick_evenly_takes_the_first_n_of_an_unknown_length_and_never_repeats():
    assert [w.start for w in pick_evenly(_windows(range(0, 801, 160), []), 2, float("nan"), 160)] == [0, 160]
    # windows only at the end: each is picked once, fewer than n
    assert [w.start for w in pick_evenly(_windows([800, 960], []), 3, 1200, 160)] == [800, 960]
    assert [w.start for w in pick_evenly(_windows([0, 160], []), None, 1200, 160)] == [0, 160]


def test_max_clips_per_video_spreads_over_a_real_video(tmp_path):
    path = tmp_path / "long.mp4"
    splice(path, [("testsrc2", 100)])
    cfg = CFG.model_copy(update={"max_clips_per_video": 3})
    assert [w.start for w in iter_clips(str(path), cfg, span_s=100.0)] == [160, 480, 640]


def test_min_shot_s_is_bounded_by_memory():
    with pytest.raises(ValueError, match="600 s at 1920x1080"):
        ClipsConfig(width=1920, height=1080, min_shot_s=600)
