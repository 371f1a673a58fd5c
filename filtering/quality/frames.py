"""Frame sampling for the quality classifier: the ONE function training and scoring share.

Kept free of torch and Beam so the labelling page can draw frame strips cheaply.
"""
from __future__ import annotations

import io

import av
import numpy as np

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.media import CLIP_MAX_PIXELS, TooManyPixels, open_video, refusal

# the classifier's input size: the default clip size (clips of another size are resized to it)
FRAME_H, FRAME_W = ClipsConfig().height, ClipsConfig().width


# ------------------------------------------------------------------------ frame sampling
def sample_indices(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n): the centres of k equal segments."""
    if n <= 0:
        raise QualityError("clip has no frames")
    return [min(n - 1, (2 * i + 1) * n // (2 * k)) for i in range(k)]


def sample_frames(data: bytes, k: int, height: int = FRAME_H, width: int = FRAME_W) -> np.ndarray:
    """K frames of an mp4 clip as uint8 (K, height, width, 3) RGB — used by training AND scoring.

    The clip's keyframes are listed without decoding (demux only); when there are at least K
    of them, K keyframes spread evenly over the clip are decoded, each on its own (a pipeline
    clip has a keyframe every `clips.keyframe_interval` frames, so this decodes K frames of the
    clip, not all of them). Otherwise
    (few keyframes, B-frames reordering) the clip is decoded and K evenly spaced frames
    are taken. Frames of another size are resized with ffmpeg's area scaler.
    """
    try:
        with open_video(io.BytesIO(data), CLIP_MAX_PIXELS, "the clip pixel cap") as c:
            if not c.streams.video:
                raise QualityError("no video stream")
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            packets = [p for p in c.demux(s) if p.size]
            frames = _decode_keyframes(s.codec_context, packets, k)
            if frames is None:
                frames = _decode_spread(data, k)
    except TooManyPixels as e:
        raise QualityError(f"cannot decode clip: TooManyPixels: {e}") from None
    except av.FFmpegError as e:
        over = refusal(e, CLIP_MAX_PIXELS, "the clip pixel cap")
        raise QualityError(f"cannot decode clip: {f'TooManyPixels: {over}' if over else f'{type(e).__name__}: {e}'}") from None
    return np.stack([f.to_ndarray(format="rgb24", width=width, height=height, interpolation="AREA")
                     if (f.width, f.height) != (width, height) else f.to_ndarray(format="rgb24")
                     for f in frames])


def _decode_keyframes(ctx, packets: list, k: int):
    if not packets:
        raise QualityError("clip has no frames")
    pts = [p.pts for p in packets]
    if any(p is None for p in pts) or any(b <= a for a, b in zip(pts, pts[1:])):
        return None  # reordered (B-frames) or unknown timestamps: decode everything
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    if len(keys) < k:
        return None
    out = []
    for j in sample_indices(len(keys), k):
        out += ctx.decode(packets[keys[j]])
    out += ctx.decode(None)
    return out if len(out) == k else None


def _decode_spread(data: bytes, k: int):
    with open_video(io.BytesIO(data), CLIP_MAX_PIXELS, "the clip pixel cap") as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        frames = list(c.decode(s))
    return [frames[i] for i in sample_indices(len(frames), k)]
