"""Probe, decode once to the clip format, cut into clips inside shots, spread them evenly.

One PyAV filter graph does everything after decoding (rotation, fps resampling by timestamp,
scaling with one scaler, padding/cropping, RGB), so every clip in the project is resized by
the same implementation. Hard cuts are found on those frames as they stream
(filtering.shots). Decoding streams: at most two clips of frames are held at a time (the one
being filled and the best candidate so far for an evenly spread pick), whatever the length
of the source. A video that cannot be used raises IngestError (stage probe or decode, error
type "VideoError").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Iterable, Iterator

import av
import numpy as np

from genie_pipeline.filtering.shots import CutDetector
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.media import TooManyPixels, open_video, refusal


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


def _open(path: str, max_pixels: int, stage: str):
    """The container, its decoders capped at `max_pixels` before any frame is decoded (a tiny
    PNG or GIF can claim 16000×16000 and cost gigabytes to decode)."""
    try:
        return open_video(path, max_pixels)
    except TooManyPixels as e:
        raise _too_many(e) from None
    except (av.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise _unusable(stage, f"{type(e).__name__}: {e}") from None


def _too_many(e: TooManyPixels) -> IngestError:
    return IngestError("probe", "TooManyPixels", str(e))


def probe(path: str, max_pixels: int = MAX_PIXELS) -> ProbeInfo:
    try:
        with _open(path, max_pixels, "probe") as c:
            if not c.streams.video:
                raise _unusable("probe", "no video stream (audio-only or not a video)")
            s = c.streams.video[0]
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
            except (StopIteration, av.FFmpegError) as e:
                if over := refusal(e, max_pixels):
                    raise _too_many(over) from None
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
                max_pixels: int = MAX_PIXELS, max_s: float | None = None) -> Iterator[np.ndarray]:
    """Decoded frames at cfg.fps and cfg.height × cfg.width, RGB uint8 (H, W, 3); a source
    over `max_pixels` is refused before decoding. More than `max_s` seconds of frames raise
    IngestError (decode, TooLong): a header can understate the length, and a video cut into
    short shots yields no clip to count by."""
    # half a second of slack: resampling to cfg.fps may round up one frame at the end
    limit = None if max_s is None else int((max_s + 0.5) * cfg.fps)
    for n, frame in enumerate(_decode(path, cfg, start_s, end_s, max_pixels)):
        if limit is not None and n >= limit:
            raise IngestError("decode", "TooLong", f"decoded more than download.max_duration_s ({max_s:g} s)")
        yield frame


def _decode(path: str, cfg: ClipsConfig, start_s: float | None, end_s: float | None,
            max_pixels: int) -> Iterator[np.ndarray]:
    with _open(path, max_pixels, "decode") as container:
        if not container.streams.video:
            raise _unusable("probe", "no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
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
                if start_s is not None or end_s is not None:  # frame.time costs a Fraction per frame
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
            if over := refusal(e, max_pixels):
                raise _too_many(over) from None
            raise _unusable("decode", f"{type(e).__name__}: {e}") from None
    if graph is None:
        raise _unusable("decode", "no decodable video frame")


def _build_graph(stream, first_frame, cfg: ClipsConfig):
    graph = av.filter.Graph()
    # one thread, like the decoder: by default the scaler runs slice threads whose
    # synchronisation costs ~20 % more CPU for the same frames
    graph.threads = 1
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


@dataclass
class Window:
    """One clip's frames and where they sit among the decoded frames."""

    start: int  # index of its first frame: it starts start / fps seconds after the decode start
    shot: int  # the shot it starts in, 0 = the first
    cuts: int  # hard cuts inside it: always 0 when clips are split at cuts
    frames_THWC: np.ndarray
    # the frames (0 = its first) that start a new shot inside it; len(cut_frames) == cuts
    cut_frames: list[int] = field(default_factory=list)


class ClipCutter:
    """Cuts a stream of frames into clips of cfg.frames.

    By default clips follow each other from the first frame whatever they span, and each
    records the cuts inside it (`Window.cut_frames`). With cfg.split_at_cuts, clips lie inside shots: a shot at least max(cfg.min_shot_s,
    cfg.seconds) long gives consecutive clips from its first frame; the rest of it, shorter
    than a clip, and every shorter shot give none. A clip goes out
    once no cut can still be reported inside it (the detector decides up to `lag` frames
    late), so at most max(one clip, min_shot_s) plus that lag of frames is held. Once the
    stream is exhausted it tells, for the caller's error message, how many `frames` and
    `shots` it saw and the `longest_shot` (in frames). One cutter per stream."""

    def __init__(self, cfg: ClipsConfig):
        self.cfg = cfg
        self.frames = self.shots = self.longest_shot = 0
        self._min_shot = int(round(cfg.min_shot_s * cfg.fps))
        self._held: list[np.ndarray] = []  # frames not yet in a clip nor dropped; [0] is frame _start
        self._start = self._shot_start = 0
        self._cuts: list[int] = []  # without split: reported cuts from _start on …
        self._cuts_passed = 0  # … and how many came before it

    def __call__(self, frames: Iterable[np.ndarray]) -> Iterator[Window]:
        detector = CutDetector(self.cfg.fps)
        for i, frame in enumerate(frames):
            self._held.append(frame)
            self.frames = i + 1
            for c in detector.push(frame):
                yield from self._cut(c)
            yield from self._clips(decided=i - detector.lag)
        for c in detector.flush():
            yield from self._cut(c)
        yield from self._clips(decided=self.frames - 1)
        self.longest_shot = max(self.longest_shot, self.frames - self._shot_start)
        self.shots = self.shots + 1 if self.frames else 0

    def _cut(self, c: int) -> Iterator[Window]:
        # cuts are reported in order: every frame before this one is decided
        yield from self._clips(decided=c - 1)
        self.longest_shot = max(self.longest_shot, c - self._shot_start)
        self.shots, self._shot_start = self.shots + 1, c  # counts cuts until the stream ends
        if self.cfg.split_at_cuts:  # the unfinished clip would span the cut
            del self._held[:c - self._start]
            self._start = c
        else:
            self._cuts.append(c)

    def _clips(self, decided: int) -> Iterator[Window]:
        """The clips whose frames are all decided (no cut can still be reported inside them)."""
        n = self.cfg.frames
        while len(self._held) >= n and self._start + n - 1 <= decided:
            if self.cfg.split_at_cuts:
                # a shot's first clips wait until the shot is known to be long enough
                if decided + 1 - self._shot_start < self._min_shot:
                    return
                shot, inside = self.shots, []
            else:
                shot = self._cuts_passed + sum(c <= self._start for c in self._cuts)
                inside = [c - self._start for c in self._cuts if self._start < c < self._start + n]
            yield Window(self._start, shot, len(inside), np.stack(self._held[:n]), inside)
            del self._held[:n]
            self._start += n
            kept = [c for c in self._cuts if c >= self._start]
            self._cuts_passed += len(self._cuts) - len(kept)
            self._cuts = kept


def pick_evenly(windows: Iterable[Window], n: int | None, span_frames: float, clip_frames: int) -> Iterator[Window]:
    """At most `n` of `windows` (all of them when n is None), spread evenly over a video of
    `span_frames` frames, deterministically.

    The k-th pick is the window whose start is nearest the middle of the k-th of n equal
    parts of the possible starts [0, span_frames - clip_frames] (so neither title screens nor
    end credits are favoured); each window is picked at most once, in order. The stream
    decides as it goes: a window is held while it is the nearest seen to the current target
    and given up when a later one is no nearer, so one window waits beside the one being cut,
    and decoding stops after the n-th pick. With an unknown span (NaN) the first n are taken.
    """
    if n is None:
        yield from windows
        return
    room = span_frames - clip_frames
    targets = [(k + 0.5) * room / n if room > 0 else 0.0 for k in range(n)]
    k, best = 0, None
    for w in windows:
        # starts only grow: once a window is no nearer the target, none after it will be
        while best is not None and abs(w.start - targets[k]) >= abs(best.start - targets[k]):
            yield best
            best, k = None, k + 1
            if k == n:
                return
        best = w if best is None or abs(w.start - targets[k]) < abs(best.start - targets[k]) else best
    if best is not None:
        yield best


def iter_clips(path: str, cfg: ClipsConfig, start_s: float | None = None, end_s: float | None = None,
               max_pixels: int = MAX_PIXELS, max_s: float | None = None, span_s: float = float("nan"),
               cutter: ClipCutter | None = None) -> Iterator[Window]:
    """The clips of a video as ingest keeps them: decoded once (`iter_frames`), cut inside
    shots (`ClipCutter`; pass one to read its counts afterwards), at most
    cfg.max_clips_per_video of them spread evenly over `span_s` seconds (`pick_evenly`)."""
    cutter = cutter or ClipCutter(cfg)
    frames = iter_frames(path, cfg, start_s, end_s, max_pixels, max_s)
    return pick_evenly(cutter(frames), cfg.max_clips_per_video, span_s * cfg.fps, cfg.frames)
