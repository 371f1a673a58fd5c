"""The clip format: one `ClipSpec`, and the one encoder and decoder of a clip's mp4.

A clip is h264 in mp4, `frames` frames of `height`×`width` at `fps`, with a keyframe every
`keyframe_interval` frames so that a random training window decodes without decoding the
whole clip. The spec an output was written with is recorded in its own metadata (every
sample's json and `stats.json`), so readers check clips against the output, not a constant.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import av
import numpy as np

from genie_pipeline.shards.media import CLIP_MAX_PIXELS, TooManyPixels, open_video, refusal


class ClipFormatError(Exception):
    """An mp4 that cannot be encoded or decoded as a clip."""


@dataclass(frozen=True)
class ClipSpec:
    fps: int
    width: int
    height: int
    frames: int
    keyframe_interval: int
    crf: int

    @property
    def shape_THWC(self) -> tuple[int, int, int, int]:
        return (self.frames, self.height, self.width, 3)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ClipSpec":
        return cls(**{k: int(d[k]) for k in cls.__dataclass_fields__})


def encode_clip(frames_THWC: np.ndarray, spec: ClipSpec) -> bytes:
    """h264 mp4 in memory, at the spec's fps, crf and keyframe interval."""
    t, h, w, _ = frames_THWC.shape
    buf = io.BytesIO()
    try:
        with av.open(buf, "w", format="mp4") as out:
            s = out.add_stream("libx264", rate=spec.fps)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            g = str(spec.keyframe_interval)
            s.options = {"crf": str(spec.crf), "preset": "veryfast", "g": g, "keyint_min": g,
                         "sc_threshold": "0", "bf": "0"}
            s.codec_context.thread_count = 1
            for img in frames_THWC:
                for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(pkt)
            for pkt in s.encode():
                out.mux(pkt)
    except av.FFmpegError as e:
        raise ClipFormatError(f"{type(e).__name__}: {e}") from None
    return buf.getvalue()


def decode_clip(data: bytes, max_pixels: int = CLIP_MAX_PIXELS) -> np.ndarray:
    """All frames of an encoded clip, (T, H, W, 3) uint8. A clip whose frames are over
    `max_pixels` is refused before a frame is decoded (a bomb in a shard costs no memory)."""
    try:
        with open_video(io.BytesIO(data), max_pixels, "the clip's size") as c:
            return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    except TooManyPixels as e:
        raise ClipFormatError(f"TooManyPixels: {e}") from None
    except (av.FFmpegError, ValueError) as e:
        over = refusal(e, max_pixels, "the clip's size")
        raise ClipFormatError(f"TooManyPixels: {over}" if over else f"{type(e).__name__}: {e}") from None


def clip_fps(data: bytes) -> float:
    with open_video(io.BytesIO(data), CLIP_MAX_PIXELS) as c:
        return float(c.streams.video[0].average_rate or 0)


def check_clip(data: bytes, spec: ClipSpec) -> str | None:
    """What is wrong with an encoded clip against `spec` (None: nothing)."""
    try:
        # headroom over the spec: decoders count padded (aligned) widths against the cap
        arr = decode_clip(data, max(CLIP_MAX_PIXELS, 4 * spec.width * spec.height))
    except ClipFormatError as e:
        return f"mp4 does not decode ({e})"
    if arr.shape != spec.shape_THWC:
        return f"decodes to {arr.shape}, expected {spec.shape_THWC}"
    fps = clip_fps(data)
    if abs(fps - spec.fps) > 1e-3:
        return f"{fps} fps, expected {spec.fps}"
    return None
