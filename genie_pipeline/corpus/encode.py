"""Writing (and probing) corpus videos with PyAV: h264 yuv420p in mp4, like uploads.

One x264 thread per file: the output is byte-identical from run to run, and the generator
runs files in parallel instead.
"""
from __future__ import annotations

import hashlib
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AUDIO_RATE = 32000


def resize_rgb(rgb: np.ndarray, width: int, height: int, interpolation: str = "BILINEAR") -> np.ndarray:
    """Resize an RGB frame with ffmpeg's scaler (fast; one implementation everywhere)."""
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    f = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return f.reformat(width=width, height=height, format="rgb24", interpolation=interpolation).to_ndarray()


class VideoWriter:
    """h264 (+ optional AAC) mp4 writer; frames of any size are scaled (bilinear) to the output.

    `write(rgb)` for constant frame rate; `write(rgb, pts=...)` with `time_base` for VFR.
    """

    def __init__(self, path, width: int, height: int, fps: float = 30, *, crf: int = 23,
                 preset: str = "veryfast", gop: int = 60, rotation: int = 0, audio: bool = False,
                 faststart: bool = False, time_base: Fraction | None = None):
        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        opts = {"movflags": "+faststart"} if faststart else {}
        self._c = av.open(str(self.path), "w", format="mp4", options=opts)
        s = self._c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        s.width, s.height, s.pix_fmt = self.width, self.height, "yuv420p"
        cc = s.codec_context
        cc.thread_count = 1
        cc.gop_size = gop
        if time_base is not None:
            cc.time_base = time_base
            s.time_base = time_base
        s.options = {"preset": preset, "crf": str(crf)}
        if rotation:
            s.set_display_rotation(rotation)
        self._v = s
        self._a = None
        if audio:
            a = self._c.add_stream("aac", rate=AUDIO_RATE)
            a.codec_context.layout = "mono"
            a.codec_context.bit_rate = 64000
            self._a = a
            self._resampler = av.AudioResampler(format="fltp", layout="mono", rate=AUDIO_RATE)
        self.frames = 0

    def write(self, rgb: np.ndarray, pts: int | None = None) -> None:
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
            f = f.reformat(width=self.width, height=self.height, format="yuv420p", interpolation="BILINEAR")
        f.pts = self.frames if pts is None else pts
        for p in self._v.encode(f):
            self._c.mux(p)
        self.frames += 1

    def write_audio(self, samples: np.ndarray, rate: int) -> None:
        """Mono float samples in [-1, 1] at `rate` Hz (resampled to AUDIO_RATE)."""
        if self._a is None or len(samples) == 0:
            return
        fr = av.AudioFrame.from_ndarray(np.asarray(samples, np.float32)[None, :], format="flt", layout="mono")
        fr.sample_rate = int(rate)
        self._encode_audio(self._resampler.resample(fr))

    def _encode_audio(self, frames) -> None:
        for fr in frames:
            for p in self._a.encode(fr):
                self._c.mux(p)

    def close(self) -> None:
        for p in self._v.encode():
            self._c.mux(p)
        if self._a is not None:
            self._encode_audio(self._resampler.resample(None))
            for p in self._a.encode():
                self._c.mux(p)
        self._c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_audio_only(path, seconds: float, freq: float = 440.0) -> None:
    """An mp4 with one AAC stream (a sine wave) and no video."""
    c = av.open(str(path), "w", format="mp4")
    a = c.add_stream("aac", rate=AUDIO_RATE)
    a.codec_context.layout = "mono"
    a.codec_context.bit_rate = 64000
    n = int(round(seconds * AUDIO_RATE))
    t = np.arange(n) / AUDIO_RATE
    x = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    step = 1024
    for i in range(0, n, step):
        fr = av.AudioFrame.from_ndarray(x[None, i:i + step].copy(), format="fltp", layout="mono")
        fr.sample_rate = AUDIO_RATE
        fr.pts = i
        for p in a.encode(fr):
            c.mux(p)
    for p in a.encode():
        c.mux(p)
    c.close()


def probe(path) -> dict:
    """What a reader sees: duration of the video stream, coded size, frame rate, rotation."""
    with av.open(str(path)) as c:
        out = {"container_duration": (c.duration / 1e6) if c.duration else None,
               "has_audio": bool(c.streams.audio), "has_video": bool(c.streams.video)}
        if not c.streams.video:
            return out
        s = c.streams.video[0]
        dur = float(s.duration * s.time_base) if s.duration else out["container_duration"]
        out.update(duration=dur, width=s.codec_context.width, height=s.codec_context.height,
                   frames=s.frames, avg_fps=float(s.average_rate) if s.average_rate else None)
        rot = 0
        for f in c.decode(s):
            rot = int(getattr(f, "rotation", 0) or 0)
            break
        out["rotation"] = rot
    return out


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


# ----------------------------------------------------------------------------- broken files
def _boxes(data: bytes):
    """Top-level mp4 boxes: (type, offset, size)."""
    i = 0
    while i + 8 <= len(data):
        size = int.from_bytes(data[i:i + 4], "big")
        typ = data[i + 4:i + 8].decode("latin-1")
        hdr = 8
        if size == 1:
            size = int.from_bytes(data[i + 8:i + 16], "big")
            hdr = 16
        elif size == 0:
            size = len(data) - i
        yield typ, i, size, hdr
        i += size


def strip_moov(src, dst) -> None:
    """Copy an mp4 without its moov box (no index: unplayable, like an interrupted recording)."""
    data = Path(src).read_bytes()
    out = bytearray()
    found = False
    for typ, off, size, _ in _boxes(data):
        if typ == "moov":
            found = True
            continue
        out += data[off:off + size]
    if not found:
        raise ValueError(f"{src}: no moov box")
    Path(dst).write_bytes(bytes(out))


def garble_mdat(src, dst, seed: int) -> None:
    """Keep the container (moov intact), overwrite the media payload with random bytes."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    for typ, off, size, hdr in _boxes(bytes(data)):
        if typ == "mdat":
            n = size - hdr
            data[off + hdr:off + size] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))


def truncate(src, dst, fraction: float) -> None:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
