"""Cheap per-clip scores computed on the decoded frames, before any model runs.

All scores are stored in the manifest whatever the verdict, so thresholds can be tuned later
(`refilter`) without decoding again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genie_pipeline.filtering.config import HeuristicsConfig
from genie_pipeline.filtering.fingerprint import luma_of
from genie_pipeline.filtering.shots import distance, histogram

# a pixel "changes" when its grey level moves by more than this (codec noise stays below);
# game footage moves small sprites, so change is counted in pixels, not as a mean difference
_PIXEL_DIFF = 8.0
# a frame with fewer changed pixels than this (at half resolution) repeats its predecessor
_MIN_CHANGED_PIXELS = 3
# L1 distance between 32-bin grey histograms (0..2) above which a frame starts a new shot
_CUT_HIST_L1 = 0.6
_DARK_LUMA = 20.0
# a cut that leaves this share of the picture in place stays on one game's screen (its HUD,
# its frame): cuts between different Atari games in the sample corpus's montages keep 0-3 %,
# Private Eye's flip-screen cuts keep its 9 % score bar (tests/test_cuts.py measures both)
_SAME_SCREEN = 0.06
# a shot "goes back" to an earlier one when both its colours (histogram L1 distance) and its
# layout (mean grey-level difference of a 9x16 grid of mean colours) are that close to where
# the earlier shot left off. Measured on the corpus's footage: the montage's returns are within
# 0.1 and 2.4 levels; CoinRun levels drawn on a background picture shown before are 0.49-0.55
# and 28-42 levels apart (another part of the picture, the agent elsewhere)
_RETURN_JUMP = 0.3
_RETURN_THUMB = 10.0
_THUMB = (9, 16)
_SAME_PIXEL = 12
_BAR_LEVEL = 24
_BLANK_STD = 4.0


@dataclass(frozen=True)
class Scores:
    motion: float  # mean share of pixels that change between frames, in percent
    dark_fraction: float  # share of frames that are near-black or a single flat colour
    unique_fraction: float  # share of frames that differ from their predecessor
    cuts_per_min: float  # hard cuts per minute
    # shots that go back to footage shown earlier in the clip, per minute (`returns`)
    returns_per_min: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"motion": self.motion, "dark_fraction": self.dark_fraction,
                "unique_fraction": self.unique_fraction, "cuts_per_min": self.cuts_per_min,
                "returns_per_min": self.returns_per_min}


def returns(frames_THWC: np.ndarray, cut_frames: list[int]) -> int:
    """How many shots of the clip (cut at `cut_frames`, the first frames of its shots after the
    first) go back to footage shown before: the shot's first frame looks like (colours and
    layout, `_RETURN_*`) where an earlier shot, not the one just before, left off, and the cut
    into it keeps under `_SAME_SCREEN` of the picture in place.

    Why this separates a montage from a game's own jumps: an edit between several videos keeps
    going back to footage it showed a few seconds before (A B C A D B …), while a level change,
    a respawn or a procgen episode reset moves on to a picture the clip has not shown. Colour
    alone does not tell them apart: procgen draws each level's background and palette anew, so
    its resets look as unrelated as two different games. A flip-screen game does go back to a
    room it showed (Private Eye drives between two screens), but its cuts keep the game's own
    HUD and frame in place, which a cut to another video does not."""
    bounds = [0, *cut_frames, len(frames_THWC)]
    spans = list(zip(bounds[:-1], bounds[1:]))
    ends = [_look(frames_THWC[b - 1]) for _, b in spans]
    found = 0
    for k in range(2, len(spans)):
        a = spans[k][0]
        if _kept_in_place(frames_THWC[a - 1], frames_THWC[a]) >= _SAME_SCREEN:
            continue
        hist, thumb = _look(frames_THWC[a])
        found += any(distance(hist, h) <= _RETURN_JUMP and float(np.abs(thumb - t).mean()) <= _RETURN_THUMB
                     for h, t in ends[:k - 1])
    return found


def _look(frame_HWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A frame's colour histogram (the cut detector's) and its layout: a grid of mean colours."""
    h, w = frame_HWC.shape[:2]
    gh, gw = _THUMB
    crop = frame_HWC[: h - h % gh, : w - w % gw].astype(np.float32)
    thumb = crop.reshape(gh, crop.shape[0] // gh, gw, crop.shape[1] // gw, 3).mean(axis=(1, 3))
    return histogram(frame_HWC), thumb


def _kept_in_place(a_HWC: np.ndarray, b_HWC: np.ndarray) -> float:
    """The share of the picture (pixels not black on both sides: letterbox bars do not count)
    that a cut from frame a to frame b leaves unchanged, within `_SAME_PIXEL` per channel."""
    a, b = a_HWC.astype(np.int16), b_HWC.astype(np.int16)
    content = (a.max(axis=-1) > _BAR_LEVEL) | (b.max(axis=-1) > _BAR_LEVEL)
    same = (np.abs(a - b).max(axis=-1) <= _SAME_PIXEL) & content
    return float(same.sum() / max(1, content.sum()))


def score_clip(frames_THWC: np.ndarray, fps: float, cut_frames: list[int] | None = None) -> Scores:
    """The clip's scores. `cut_frames`: the hard cuts found while decoding (the first frame of
    each shot after the first, as the manifest records them); without them (None) cuts are
    counted here as grey-histogram jumps, and no return is counted."""
    # grey at half resolution: the scores are about whole-frame change, not detail
    grey_THW = luma_of(frames_THWC[:, ::2, ::2])
    t = grey_THW.shape[0]
    changed_T1 = (np.abs(np.diff(grey_THW, axis=0)) > _PIXEL_DIFF).sum(axis=(1, 2))
    dark = (grey_THW.mean(axis=(1, 2)) < _DARK_LUMA) | (grey_THW.std(axis=(1, 2)) < _BLANK_STD)
    minutes = t / fps / 60.0
    if cut_frames is None:
        bins_THW = np.minimum(grey_THW, 255).astype(np.int32) // 8 + 32 * np.arange(t, dtype=np.int32)[:, None, None]
        hist_TB = np.bincount(bins_THW.ravel(), minlength=32 * t).reshape(t, 32).astype(np.float32)
        hist_TB /= hist_TB.sum(axis=1, keepdims=True)
        hist_jump_T1 = np.abs(np.diff(hist_TB, axis=0)).sum(axis=1)
        cuts, back = int((hist_jump_T1 > _CUT_HIST_L1).sum()), 0
    else:
        cuts, back = len(cut_frames), returns(frames_THWC, cut_frames)
    return Scores(
        motion=float(100.0 * changed_T1.mean() / grey_THW[0].size) if t > 1 else 0.0,
        dark_fraction=float(dark.mean()),
        unique_fraction=float((1 + (changed_T1 >= _MIN_CHANGED_PIXELS).sum()) / t),
        cuts_per_min=float(cuts / minutes),
        returns_per_min=float(back / minutes),
    )


def verdict(s: Scores, cfg: HeuristicsConfig) -> str:
    """'' to keep, else the first reason to reject."""
    if not cfg.enabled:
        return ""
    if s.dark_fraction > cfg.max_dark_fraction:
        return "black"
    if s.motion < cfg.min_motion:
        return "static"
    if s.unique_fraction < cfg.min_unique_fraction:
        return "slideshow"
    if s.cuts_per_min > cfg.max_cuts_per_min or s.returns_per_min > cfg.max_returns_per_min:
        return "cuts"
    return ""
