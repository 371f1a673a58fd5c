"""Cheap per-clip scores computed on the decoded frames, before any model runs.

All scores are stored in the manifest whatever the verdict, so thresholds can be tuned later
(`refilter`) without decoding again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from genie_pipeline.filtering.config import HeuristicsConfig

# a pixel "changes" when its grey level moves by more than this (codec noise stays below);
# game footage moves small sprites, so change is counted in pixels, not as a mean difference
_PIXEL_DIFF = 8.0
# a frame with fewer changed pixels than this (at half resolution) repeats its predecessor
_MIN_CHANGED_PIXELS = 3
# L1 distance between 32-bin grey histograms (0..2) above which a frame starts a new shot
_CUT_HIST_L1 = 0.6
_DARK_LUMA = 20.0
_BLANK_STD = 4.0


@dataclass(frozen=True)
class Scores:
    motion: float  # mean share of pixels that change between frames, in percent
    dark_fraction: float  # share of frames that are near-black or a single flat colour
    unique_fraction: float  # share of frames that differ from their predecessor
    cuts_per_min: float  # hard cuts per minute

    def as_dict(self) -> dict[str, float]:
        return {"motion": self.motion, "dark_fraction": self.dark_fraction,
                "unique_fraction": self.unique_fraction, "cuts_per_min": self.cuts_per_min}


def score_clip(frames_THWC: np.ndarray, fps: float) -> Scores:
    # grey at half resolution: the scores are about whole-frame change, not detail
    grey_THW = frames_THWC[:, ::2, ::2].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    t = grey_THW.shape[0]
    changed_T1 = (np.abs(np.diff(grey_THW, axis=0)) > _PIXEL_DIFF).sum(axis=(1, 2))
    dark = (grey_THW.mean(axis=(1, 2)) < _DARK_LUMA) | (grey_THW.std(axis=(1, 2)) < _BLANK_STD)
    bins_THW = np.minimum(grey_THW, 255).astype(np.int32) // 8 + 32 * np.arange(t, dtype=np.int32)[:, None, None]
    hist_TB = np.bincount(bins_THW.ravel(), minlength=32 * t).reshape(t, 32).astype(np.float32)
    hist_TB /= hist_TB.sum(axis=1, keepdims=True)
    hist_jump_T1 = np.abs(np.diff(hist_TB, axis=0)).sum(axis=1)
    minutes = t / fps / 60.0
    return Scores(
        motion=float(100.0 * changed_T1.mean() / grey_THW[0].size) if t > 1 else 0.0,
        dark_fraction=float(dark.mean()),
        unique_fraction=float((1 + (changed_T1 >= _MIN_CHANGED_PIXELS).sum()) / t),
        cuts_per_min=float((hist_jump_T1 > _CUT_HIST_L1).sum() / minutes),
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
    if s.cuts_per_min > cfg.max_cuts_per_min:
        return "cuts"
    return ""
