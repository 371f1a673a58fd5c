"""Clip decoders: frames of one compressed clip held in memory, as uint8 (N, 3, H, W) RGB.

One interface (`ClipDecoder.decode(data, indices)`), three backends (PyAV, decord and, when
installed, torchcodec), and `make_decoder(name)`, which for "auto" puts the fastest backend
that imports first and the next one behind it for the clips the first cannot decode.
"""
from __future__ import annotations

import importlib
import io
from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np
import torch

from genie_pipeline.shards.media import CLIP_MAX_PIXELS, TooManyPixels, check_pixels, open_video, refusal

# torchcodec spends about half the CPU per window of PyAV and decord (it seeks to the keyframe
# before each window; those two decode from frame 0): benchmarks/train.py, results in
# benchmarks/results/train.json. PyAV and decord are within noise of each other; PyAV, the
# library that encoded the clips, is the fallback. torchcodec is optional: without it "auto"
# starts at PyAV.
AUTO_ORDER = ("torchcodec", "pyav", "decord")


class DecodeError(RuntimeError):
    """One clip could not be decoded (or is shorter than the frames asked for)."""


class OversizeClip(DecodeError):
    """A clip whose frames are over the pixel cap, refused before decoding. No backend gets a
    second try at it: the next one would decode it."""


def _refuse_oversize(data: bytes) -> None:
    """For backends that take no pixel cap themselves: refuse from the headers first."""
    try:
        check_pixels(data, CLIP_MAX_PIXELS)
    except TooManyPixels as e:
        raise OversizeClip(f"TooManyPixels: {e}") from None


class ClipDecoder(ABC):
    """Decodes frames of one compressed clip held in memory. One interface, several backends."""

    name = "base"

    @abstractmethod
    def decode(self, data: bytes, indices: Sequence[int]) -> torch.Tensor:
        """Frames `indices` (any order, repeats allowed) of the clip as uint8 (N, 3, H, W) RGB."""

    @staticmethod
    def _gather(frames: np.ndarray, frame_ids: Sequence[int], indices: Sequence[int]) -> torch.Tensor:
        """Rows of `frames` (holding frames `frame_ids`, sorted) in the order of `indices`."""
        pos = np.searchsorted(frame_ids, indices)
        if np.any(pos >= len(frame_ids)) or np.any(np.asarray(frame_ids)[np.minimum(pos, len(frame_ids) - 1)] != indices):
            raise DecodeError(f"clip lacks some of the frames asked for (has {len(frame_ids)})")
        return torch.from_numpy(np.ascontiguousarray(frames[pos]))


def _yuv_luts(full_range: bool) -> tuple[np.ndarray, ...]:
    """int16 lookup tables with 5 fractional bits: Y, and the R/G/B contributions of U and V."""
    ys, cs = (1.0, 1.0) if full_range else (255.0 / 219.0, 255.0 / 224.0)
    y = (np.arange(256) - (0 if full_range else 16)) * ys
    c = (np.arange(256) - 128) * cs
    return tuple(np.round(t * 32).astype(np.int16) for t in (y, 1.402 * c, -0.344136 * c, -0.714136 * c, 1.772 * c))


_LUTS = {False: _yuv_luts(False), True: _yuv_luts(True)}


def yuv420_to_rgb(y: np.ndarray, u: np.ndarray, v: np.ndarray, full_range: bool = False) -> np.ndarray:
    """Batched BT.601 YUV 4:2:0 → RGB: y (N,H,W), u/v (N,ceil(H/2),ceil(W/2)) uint8 → (N,3,H,W) uint8.

    Fixed-point int16 lookup tables; the chroma terms are computed at chroma resolution and
    upsampled nearest. Matches swscale's rgb24 output (PyAV/decord) within ~1 grey level.
    NumPy, single-threaded on purpose: loader workers share the cores with training.
    """
    ly, lrv, lgu, lgv, lbu = _LUTS[bool(full_range)]
    h, w = y.shape[-2:]
    chroma = np.stack([lrv[v], lgu[u] + lgv[v], lbu[u]], 1)  # (N, 3, h/2, w/2) int16
    chroma += 16  # rounding before the >> 5
    out = np.repeat(np.repeat(chroma, 2, -2), 2, -1)[..., :h, :w]
    out += ly[y][:, None]
    out >>= 5
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


class PyAVDecoder(ClipDecoder):
    """PyAV (FFmpeg) decoder. Decodes sequentially up to the last frame asked for, keeps the
    YUV planes of the frames asked for and converts them to RGB in one batch (the per-frame
    `to_ndarray("rgb24")` conversion costs more than decoding); frames in other pixel formats
    go through swscale."""

    name = "pyav"

    def __init__(self):
        importlib.import_module("av")  # fail here, when the backend is missing, not at the first clip

    def decode(self, data: bytes, indices: Sequence[int]) -> torch.Tensor:
        import av

        want = set(int(i) for i in indices)
        if not want:
            raise DecodeError("no frames asked for")
        last = max(want)
        planes: dict[int, Any] = {}
        full_range = False
        try:
            with open_video(io.BytesIO(data), CLIP_MAX_PIXELS, "the clip pixel cap") as container:
                stream = container.streams.video[0]
                stream.thread_type = "SLICE"
                stream.codec_context.thread_count = 1
                for i, frame in enumerate(container.decode(stream)):
                    if i in want:
                        fmt = frame.format.name
                        if fmt in ("yuv420p", "yuvj420p"):
                            full_range = fmt == "yuvj420p"
                            planes[i] = tuple(_plane(p) for p in frame.planes[:3])
                        else:
                            planes[i] = frame.to_ndarray(format="rgb24").transpose(2, 0, 1)
                    if i >= last:
                        break
        except DecodeError:
            raise
        except TooManyPixels as e:
            raise OversizeClip(f"TooManyPixels: {e}") from None
        except Exception as e:  # av.error.*, struct errors on truncated data ...
            if over := refusal(e, CLIP_MAX_PIXELS, "the clip pixel cap"):
                raise OversizeClip(f"TooManyPixels: {over}") from None
            raise DecodeError(f"{type(e).__name__}: {e}") from None
        if len(planes) < len(want):
            raise DecodeError(f"clip has fewer frames than {last + 1}")
        keys = sorted(planes)
        if isinstance(planes[keys[0]], tuple):
            y, u, v = (np.stack([planes[k][c] for k in keys]) for c in range(3))
            rgb = yuv420_to_rgb(y, u, v, full_range)
        else:
            rgb = np.stack([planes[k] for k in keys])
        return self._gather(rgb, keys, list(indices))


def _plane(p) -> np.ndarray:
    return np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[: p.height, : p.width]


class DecordDecoder(ClipDecoder):
    """decord decoder (RGB from swscale; `get_batch` on the sorted unique frames, one thread)."""

    name = "decord"

    def __init__(self):
        importlib.import_module("decord")

    def decode(self, data: bytes, indices: Sequence[int]) -> torch.Tensor:
        import decord

        uniq = sorted(set(int(i) for i in indices))
        if not uniq:
            raise DecodeError("no frames asked for")
        _refuse_oversize(data)
        try:
            vr = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
            n = len(vr)
            if uniq[-1] >= n:
                raise DecodeError(f"clip has {n} frames, frame {uniq[-1]} asked for")
            arr = vr.get_batch(uniq).asnumpy()
            del vr
        except DecodeError:
            raise
        except Exception as e:  # decord.DECORDError, RuntimeError
            raise DecodeError(f"{type(e).__name__}: {e}") from None
        return self._gather(arr.transpose(0, 3, 1, 2), uniq, list(indices))


class TorchCodecDecoder(ClipDecoder):
    """torchcodec decoder. It seeks: for each frame asked for it either decodes on from where it
    is, when no keyframe lies in between, or jumps to the keyframe before it, so a 16-frame
    window of a clip with a keyframe every 16 frames decodes one or two GOPs instead of
    everything from frame 0. RGB from FFmpeg's swscale, one FFmpeg thread. Optional: needs the
    `torchcodec` package (extra `torchcodec`) and FFmpeg's shared libraries."""

    name = "torchcodec"

    def __init__(self):
        # the import loads FFmpeg's shared libraries: a machine without them fails here, not at
        # a clip, and as an ImportError so that "auto" goes on to the next backend
        try:
            importlib.import_module("torchcodec.decoders")
            # torchcodec ≥ 0.17 imports without FFmpeg (its image decoders need none) and loads
            # the FFmpeg-dependent libraries at first use: load them now (memoized there)
            load = getattr(importlib.import_module("torchcodec._internally_replaced_utils"),
                           "load_core_libraries", None)
            if load is not None:
                load()
        except (RuntimeError, OSError) as e:  # torchcodec is there but found no usable FFmpeg
            raise ImportError(f"torchcodec cannot load FFmpeg's libraries: {type(e).__name__}: {e}") from None

    def decode(self, data: bytes, indices: Sequence[int]) -> torch.Tensor:
        """As `ClipDecoder.decode`; `data` may also be a readable, seekable binary file."""
        from torchcodec.decoders import VideoDecoder

        uniq = sorted(set(int(i) for i in indices))
        if not uniq:
            raise DecodeError("no frames asked for")
        if isinstance(data, (bytes, bytearray, memoryview)):
            _refuse_oversize(bytes(data))
        try:
            # "approximate": frame i is found from the header's frame rate, without the scan of
            # every packet that "exact" does on open; our clips are constant frame rate.
            vd = VideoDecoder(data, seek_mode="approximate", num_ffmpeg_threads=1, dimension_order="NCHW")
            frames = vd.get_frames_at(uniq).data
        except Exception as e:  # RuntimeError from FFmpeg, IndexError past the last frame, ...
            raise DecodeError(f"{type(e).__name__}: {e}") from None
        return self._gather(frames.numpy(), uniq, list(indices))


class FallbackDecoder(ClipDecoder):
    """Decode with `primary`; a clip it fails on gets a second try with `secondary`."""

    def __init__(self, primary: ClipDecoder, secondary: ClipDecoder | None):
        self.primary, self.secondary = primary, secondary
        self.name = primary.name
        self.fallbacks = 0

    def decode(self, data: bytes, indices: Sequence[int]) -> torch.Tensor:
        try:
            return self.primary.decode(data, indices)
        except OversizeClip:
            raise
        except DecodeError:
            if self.secondary is None:
                raise
            self.fallbacks += 1
            return self.secondary.decode(data, indices)


DECODERS = {"pyav": PyAVDecoder, "decord": DecordDecoder, "torchcodec": TorchCodecDecoder}


def make_decoder(name: str = "auto") -> ClipDecoder:
    """`auto`: the first backend of AUTO_ORDER (the benchmark's ranking) that imports, with the
    next one that imports as fallback for the clips it cannot decode."""
    if name != "auto":
        if name not in DECODERS:
            raise ValueError(f"unknown decoder {name!r}; known: {sorted(DECODERS)} or 'auto'")
        return DECODERS[name]()
    made, errors = [], []
    for n in AUTO_ORDER:
        try:
            made.append(DECODERS[n]())
        except ImportError as e:
            errors.append(f"{n}: {e}")
        if len(made) == 2:
            break
    if not made:
        raise ImportError("no clip decoder available: " + "; ".join(errors))
    return FallbackDecoder(made[0], made[1] if len(made) > 1 else None)
