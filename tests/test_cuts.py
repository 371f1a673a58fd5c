"""Hard cuts are recorded, not fatal: clips on the 16 s grid keep their cuts' frames, readers never
take a window across one, and a montage (not a game's own level change or reset) is rejected.

Clips here carry cuts known to the frame: each span between cuts is painted with its own grey
level, so a window that spans a cut shows two levels and the test sees it in the pixels."""
from __future__ import annotations

import numpy as np
import pytest

from genie_pipeline.filtering.config import HeuristicsConfig
from genie_pipeline.filtering.heuristics import returns, score_clip, verdict
from genie_pipeline.shards.clip import encode_clip
from genie_pipeline.shards.config import ClipsConfig, ShardsConfig
from genie_pipeline.shards.reader import Clip, existing_shards
from genie_pipeline.shards.records import Candidate, ClipRow, VideoResult, clip_key, video_key
from genie_pipeline.training.loader import WindowDataset, eval_windows, shot_spans
from tests.fixtures.footage import render
from tests.fixtures.output import write_output

CLIPS = ClipsConfig()
SPEC = CLIPS.spec
T = 16  # window length
# cut frames per clip: spans 40/60/60; a cut every 10 frames (no span holds a window); one
# span of exactly a window at the end; no cut
CUTS = [[40, 100], list(range(10, 160, 10)), [144], []]
LEVELS = (40, 90, 140, 190, 240)


def _painted(cuts: list[int], rng) -> np.ndarray:
    """A clip whose span k between `cuts` is grey level LEVELS[k % 5], with a little moving noise."""
    bounds = [0, *cuts, SPEC.frames]
    frames = np.empty(SPEC.shape_THWC, np.uint8)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        frames[a:b] = LEVELS[k % len(LEVELS)]
    frames[:, :8, :8] = rng.integers(0, 255, (SPEC.frames, 8, 8, 3), dtype=np.uint8)
    return frames


def _span_of_frame(frame_CHW) -> int:
    level = float(frame_CHW[:, 20:, 20:].float().mean())
    return int(np.argmin([abs(level - v) for v in LEVELS]))


@pytest.fixture(scope="module")
def cut_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuts")
    rng = np.random.default_rng(0)
    videos, candidates = [], []
    for i, cuts in enumerate(CUTS * 2):  # two of each, so a shard holds several
        vid = f"cut{i:02d}"
        data = encode_clip(_painted(cuts, rng), SPEC)
        row = ClipRow(key=clip_key(video_key("syn", vid), 0), video_key=video_key("syn", vid), video_id=vid,
                      source="syn", title=vid, start_s=0.0, duration_s=CLIPS.seconds, n_frames=SPEC.frames,
                      bytes=len(data), split="train", cuts=len(cuts), cut_frames=list(cuts))
        videos.append((VideoResult(video_key=row.video_key, video_id=vid, source="syn", title=vid, status="done",
                                   clips=[row], seconds_in=16, seconds_out=16), [(row.key, data)]))
        candidates.append(Candidate(source="syn", video_id=vid, title=vid, duration_s=16, keyword_verdict="keep"))
    write_output(out, videos, candidates, SPEC, ShardsConfig(max_clips=3))
    return existing_shards(str(out / "shards"), "train"), {v.clips[0].key: v.clips[0].cut_frames for v, _ in videos}


def _spans_a_cut(start: int, cuts: list[int]) -> bool:
    return any(start < c < start + T for c in cuts)


def test_shot_spans():
    assert shot_spans({"cut_frames": [40, 100]}, 160, 16) == [(0, 40), (40, 100), (100, 160)]
    assert shot_spans({"cut_frames": list(range(10, 160, 10))}, 160, 16) == []
    assert shot_spans({"cut_frames": [144]}, 160, 16) == [(0, 144), (144, 160)]
    assert shot_spans({}, 160, 16) == shot_spans({"cut_frames": None}, 160, 16) == [(0, 160)]


def test_training_windows_never_span_a_cut(cut_output):
    shards, cuts = cut_output
    ds = WindowDataset(shards, batch_size=4, frames=T, windows_per_clip=16, decoder="pyav", infinite=False)
    windows = seen_clips = 0
    got: dict[str, set[int]] = {}
    for batch in ds.iter_stream(0):
        for video, key, start in zip(batch["video"], batch["keys"], batch["starts"].tolist()):
            assert not _spans_a_cut(start, cuts[key]), (key, start, cuts[key])
            # and in the pixels: one span's grey level from the window's first frame to its last
            assert _span_of_frame(video[0]) == _span_of_frame(video[-1]), (key, start)
            got.setdefault(key, set()).add(start)
            windows += 1
    seen_clips = len(got)
    # the clips cut every 10 frames give none; the others all give windows, the last span included
    assert seen_clips == 6 and windows == 6 * 16
    assert all(cuts[k] != list(range(10, 160, 10)) for k in got)


def test_window_starts_are_uniform_over_every_start_that_spans_no_cut(cut_output):
    shards, _ = cut_output
    ds = WindowDataset(shards, batch_size=4, frames=T, windows_per_clip=4000, decoder="pyav")
    for cuts, valid in (([40, 100], [*range(0, 25), *range(40, 85), *range(100, 145)]),
                        ([144], [*range(0, 129), 144]), ([], list(range(0, 145)))):
        starts = ds.window_starts(Clip("k", b"", {"n_frames": 160, "cut_frames": cuts}), epoch=0)
        assert set(starts) == set(valid), cuts
        counts = np.bincount(starts)[valid]
        assert counts.min() > 0.5 * counts.mean()  # uniform over the valid starts, not per span
    assert ds.window_starts(Clip("k", b"", {"n_frames": 160, "cut_frames": list(range(10, 160, 10))}), 0) == []


def test_eval_windows_never_span_a_cut(cut_output):
    shards, cuts = cut_output
    starts: dict[str, list[int]] = {}
    for batch in eval_windows(shards, T, decoder="pyav"):
        for video, key, start in zip(batch["video"], batch["keys"], batch["starts"].tolist()):
            assert not _spans_a_cut(start, cuts[key])
            assert _span_of_frame(video[0]) == _span_of_frame(video[-1])
            starts.setdefault(key, []).append(start)
    by_cuts = {tuple(cuts[k]): s for k, s in starts.items()}
    # windows restart at each span's first frame: 0, 16 | 40, 56, 72 | 100, 116, 132
    assert by_cuts[(40, 100)] == [0, 16, 40, 56, 72, 100, 116, 132]
    assert by_cuts[(144,)] == list(range(0, 129, 16)) + [144]
    assert by_cuts[()] == list(range(0, 145, 16))
    assert tuple(range(10, 160, 10)) not in by_cuts


# ---------------------------------------------------------------- montage against game resets
def _spliced(segments: list[tuple[int, int]], spec) -> tuple[np.ndarray, list[int]]:
    """Frames of rendered platformer footage: each (seed, frames) segment continues that seed's
    footage where it last left off (a montage going back to a game), and the cut frames."""
    long = {}
    pos: dict[int, int] = {}
    out, cuts = [], []
    for seed, n in segments:
        if seed not in long:
            long[seed] = render("platformer", np.random.default_rng(seed), spec)
        p = pos.get(seed, 0)
        if out:
            cuts.append(len(out))
        out.extend(long[seed][p:p + n])
        pos[seed] = p + n
    return np.stack(out)[:160], [c for c in cuts if c < 160]


def test_montage_returns_but_resets_do_not():
    spec = SPEC
    # four games cut every 1-3 s, the edit going back to each: A B C D A C B D …
    montage, m_cuts = _spliced([(s, n) for s, n in zip([1, 2, 3, 4, 1, 3, 2, 4, 1], [20, 15, 25, 10, 20, 25, 15, 15, 20])],
                               spec)
    # an agent that dies every 1-3 s: a new level each time, never one shown before
    resets, r_cuts = _spliced([(s, n) for s, n in zip(range(10, 19), [20, 15, 25, 10, 20, 25, 15, 15, 20])], spec)
    assert len(m_cuts) == len(r_cuts) == 8
    assert returns(montage, m_cuts) >= 4 and returns(resets, r_cuts) == 0
    cfg = HeuristicsConfig()
    assert verdict(score_clip(montage, CLIPS.fps, m_cuts), cfg) == "cuts"
    assert verdict(score_clip(resets, CLIPS.fps, r_cuts), cfg) == ""
    # the cut rate alone (30 a minute, 8 cuts in 16 s) lets both through: returns decide
    s = score_clip(montage, CLIPS.fps, m_cuts)
    assert s.cuts_per_min == pytest.approx(30.0) and s.cuts_per_min <= cfg.max_cuts_per_min


# ------------------------------------------------- the sample corpus's footage with jumps, ingested
@pytest.fixture(scope="module")
def jumpy_footage(tmp_path_factory):
    """The corpus's videos whose picture jumps (CUT_FOOTAGE), rendered by the corpus's own code,
    each cut by the real VideoProcessor (PyAV decode, cut detector, heuristics, x264 encode)
    and the results written as one output; {made_how: VideoResult}, the shard paths."""
    from genie_pipeline.corpus.generate import CUT_FOOTAGE, _render_one, plan
    from genie_pipeline.corpus.render import renderers_available
    from genie_pipeline.ingest.config import DownloadConfig
    from genie_pipeline.ingest.process import VideoProcessor
    from genie_pipeline.shards.store import read_store

    procgen = renderers_available()["procgen"]
    specs = [s for s in plan("full", procgen=procgen) if s["made_how"] in CUT_FOOTAGE]
    tmp = tmp_path_factory.mktemp("jumpy")
    proc = VideoProcessor(DownloadConfig(), CLIPS, HeuristicsConfig(), out=str(tmp / "out"),
                          scratch=str(tmp / "scratch"))
    results, videos, candidates = {}, [], []
    (tmp / "corpus" / "videos").mkdir(parents=True)
    for i, spec in enumerate(specs):
        spec["seed"] = 1000 + i
        _render_one(spec, str(tmp / "corpus"))
        c = Candidate(source="gc", video_id=spec["id"], path=str(tmp / "corpus" / spec["file"]), title=spec["title"])
        r = proc(c)
        assert isinstance(r, VideoResult), (spec["made_how"], r)
        results[spec["made_how"]] = r
        _, data = read_store(r.store)
        videos.append((r, [(k, data[k]) for k in (x.key for x in r.clips)]))
        candidates.append(c)
    write_output(tmp / "shards-out", videos, candidates, SPEC)
    return results, existing_shards(str(tmp / "shards-out" / "shards"), "train") + \
        existing_shards(str(tmp / "shards-out" / "shards"), "val")


@pytest.mark.slow  # renders and ingests 156 s of footage: about 90 s on 2 shared cores
def test_jumpy_gameplay_keeps_every_grid_clip_and_montages_none(jumpy_footage):
    from genie_pipeline.corpus.generate import CUT_FOOTAGE

    results, _ = jumpy_footage
    for how, r in results.items():
        grid, kept, reason = CUT_FOOTAGE[how]
        assert len(r.clips) == grid, how
        assert sum(c.kept for c in r.clips) == kept, (how, [(c.reason, c.cut_frames, c.returns_per_min) for c in r.clips])
        assert all(c.reason == reason for c in r.clips if not c.kept), how
        assert all(c.cuts == len(c.cut_frames) for c in r.clips)
    # the footage does jump: cuts are recorded, not dropped
    for how in ("flip_screen", "montage", *(("resets",) if "resets" in results else ())):
        assert sum(c.cuts for c in results[how].clips) >= 2, how


@pytest.mark.slow
def test_no_loader_window_spans_a_recorded_cut(jumpy_footage):
    results, shards = jumpy_footage
    cuts = {c.key: c.cut_frames for r in results.values() for c in r.clips}
    ds = WindowDataset(shards, batch_size=8, frames=T, windows_per_clip=32, decoder="pyav", infinite=False)
    windows = 0
    for batch in ds.iter_stream(0):
        for key, start in zip(batch["keys"], batch["starts"].tolist()):
            assert not _spans_a_cut(start, cuts[key]), (key, start)
            windows += 1
    assert windows == 32 * sum(c.kept and bool(shot_spans({"cut_frames": c.cut_frames}, 160, T))
                               for r in results.values() for c in r.clips)
