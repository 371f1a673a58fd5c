"""Probe, decode once to the clip format, cut into fixed windows.

One PyAV filter graph does everything after decoding (rotation, fps resampling by timestamp,
scaling with one scaler, padding/cropping, RGB), so every clip in the project is resized by
the same implementation. Decoding streams: at most one clip of frames is held at a time,
whatever the length of the source. A video that cannot be used raises IngestError (stage
probe or decode, error type "VideoError").
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator

import av
import numpy as np

from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards.config import ClipsConfig


MAX_PIXELS = DownloadConfig.model_fields["max_pixels"].default


def _unusable(stage: str, message: str) -> IngestError:
    """A video that cannot be used; `stage` says where it failed (probe, decode)."""
    return IngestError(stage, "VideoError", message)


@dataclass
class ProbeInfo:
    duration_s: float
    width: int
    height: int
    fps: float
    rotation: int  # degrees, as the display matrix says
    codec: str
    has_audio: bool


def _limit_pixels(stream, max_pixels: int) -> None:
    """Refuse a stream whose header claims more than `max_pixels` (a tiny GIF can claim
    16000×16000 and cost gigabytes to decode), and make the decoder refuse larger frames too,
    for streams whose header lies."""
    w, h = stream.codec_context.width, stream.codec_context.height
    if w * h > max_pixels:
        raise IngestError("probe", "TooManyPixels", f"{w}x{h} = {w * h} pixels > download.max_pixels ({max_pixels})")
    stream.codec_context.options = {"max_pixels": str(max_pixels)}


def probe(path: str, max_pixels: int = MAX_PIXELS) -> ProbeInfo:
    try:
        with av.open(path) as c:
            if not c.streams.video:
                raise _unusable("probe", "no video stream (audio-only or not a video)")
            s = c.streams.video[0]
            _limit_pixels(s, max_pixels)
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif c.duration is not None:
                duration = c.duration / av.time_base
            else:
                duration = float("nan")
            rotation = 0
            try:
                first = next(c.decode(s))
                rotation = int(round(first.rotation or 0)) % 360
            except (StopIteration, av.FFmpegError):
                raise _unusable("probe", "no decodable video frame") from None
            return ProbeInfo(
                duration_s=duration, width=s.codec_context.width, height=s.codec_context.height,
                fps=float(s.average_rate or s.guessed_rate or 0), rotation=rotation,
                codec=s.codec_context.name, has_audio=bool(c.streams.audio),
            )
    except IngestError:
        raise
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise _unusable("probe", f"{type(e).__name__}: {e}") from None


def _filter_chain(cfg: ClipsConfig, rotation: int) -> list[tuple[str, str]]:
    w, h = cfg.width, cfg.height
    # the display matrix's angle is counter-clockwise; transpose=clock undoes a -90° one
    rotate = {90: [("transpose", "cclock")], 270: [("transpose", "clock")],
              180: [("hflip", ""), ("vflip", "")]}.get(rotation, [])
    if cfg.aspect == "pad":
        fit = [("scale", f"{w}:{h}:force_original_aspect_ratio=decrease:flags=area"),
               ("pad", f"{w}:{h}:(ow-iw)/2:(oh-ih)/2:black")]
    elif cfg.aspect == "crop":
        fit = [("scale", f"{w}:{h}:force_original_aspect_ratio=increase:flags=area"), ("crop", f"{w}:{h}")]
    else:
        fit = [("scale", f"{w}:{h}:flags=area")]
    return rotate + [("fps", f"fps={cfg.fps}:round=near")] + fit + [("setsar", "1"), ("format", "rgb24")]


def iter_frames(path: str, cfg: ClipsConfig, start_s: float | None = None, end_s: float | None = None,
                max_pixels: int = MAX_PIXELS) -> Iterator[np.ndarray]:
    """Decoded frames at cfg.fps and cfg.height × cfg.width, RGB uint8 (H, W, 3); a source
    over `max_pixels` is refused before decoding."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise _unusable("decode", f"{type(e).__name__}: {e}") from None
    with container:
        if not container.streams.video:
            raise _unusable("probe", "no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
        _limit_pixels(stream, max_pixels)
        # one thread per worker process: Beam runs one worker per core, and codec threads
        # cost CPU time in synchronisation that a throughput job does not want to pay
        stream.codec_context.thread_count = 1
        if start_s:
            container.seek(int(start_s / stream.time_base), stream=stream, backward=True)
        graph = None
        sink = None
        # raw elementary streams (.h264) carry no timestamps: number frames at the guessed rate
        rate = stream.guessed_rate or stream.average_rate or 25
        time_base = stream.time_base or Fraction(1, 1000)
        try:
            for n, frame in enumerate(container.decode(stream)):
                if frame.pts is None:
                    frame.pts = int(n / (rate * time_base))
                    frame.time_base = time_base
                t = frame.time
                if t is not None and start_s is not None and t < start_s - 1e-6:
                    continue
                if t is not None and end_s is not None and t >= end_s - 1e-6:
                    break
                if graph is None:
                    graph, sink = _build_graph(stream, frame, cfg)
                graph.vpush(frame)
                yield from _drain(graph, sink)
            if graph is not None:
                graph.vpush(None)
                yield from _drain(graph, sink, final=True)
        except av.FFmpegError as e:
            raise _unusable("decode", f"{type(e).__name__}: {e}") from None
    if graph is None:
        raise _unusable("decode", "no decodable video frame")


def _build_graph(stream, first_frame, cfg: ClipsConfig):
    graph = av.filter.Graph()
    # build the buffer from the first decoded frame: streams may lie about size/format
    src = graph.add_buffer(
        width=first_frame.width, height=first_frame.height, format=first_frame.format.name,
        time_base=stream.time_base or Fraction(1, 1000),
    )
    node = src
    chain = _filter_chain(cfg, int(round(first_frame.rotation or 0)) % 360)
    sar = stream.sample_aspect_ratio
    if sar and sar != 1:
        # anamorphic pixels: make them square first so the aspect policy sees the true shape
        chain.insert(0, ("scale", f"{round(first_frame.width * sar)}:{first_frame.height}"))
    for name, args in chain:
        nxt = graph.add(name, args) if args else graph.add(name)
        node.link_to(nxt)
        node = nxt
    sink = graph.add("buffersink")
    node.link_to(sink)
    graph.configure()
    return graph, sink


def _drain(graph, sink, final: bool = False) -> Iterator[np.ndarray]:
    while True:
        try:
            out = graph.vpull()
        except (av.BlockingIOError, av.EOFError):
            return
        yield out.to_ndarray()


def iter_clips(path: str, cfg: ClipsConfig, start_s: float | None = None, end_s: float | None = None,
               max_pixels: int = MAX_PIXELS) -> Iterator[tuple[int, np.ndarray]]:
    """(index, frames_THWC) for each full window; the remainder shorter than a clip is dropped."""
    n = cfg.frames
    buf: list[np.ndarray] = []
    index = 0
    for frame in iter_frames(path, cfg, start_s, end_s, max_pixels):
        buf.append(frame)
        if len(buf) == n:
            yield index, np.stack(buf)
            buf = []
            index += 1
            if cfg.max_clips_per_video and index >= cfg.max_clips_per_video:
                return
