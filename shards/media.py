"""The one way a video is opened for reading: with a pixel cap in force before any frame is decoded.

`av.open` reads the container's headers and then runs `avformat_find_stream_info`, which opens
a decoder and decodes a frame of each stream whose header does not tell everything (a PNG
frame's size is only in the PNG). A few hundred bytes of PNG claiming 16000×16000 16-bit RGBA
made that decoder allocate 2 GB before any size check of ours ran. ffmpeg's answer is the
codec option `max_pixels` (`-max_pixels`): every decoder refuses a frame larger than it before
allocating the picture. `open_video` hands that option to the decoders find_stream_info opens,
refuses a header that claims more, and leaves it set on every video stream's decoder for the
frames that come later (a stream whose first frames are small can still carry a huge one).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import av
import av.logging

# frames of a clip in OUT/ (clips.width × clips.height, 160×90 by default) are far below this;
# a reader that does not know the output's clip spec uses it as the cap (4K, ~66 MB per frame
# even at 16-bit RGBA)
CLIP_MAX_PIXELS = 3840 * 2160

_REFUSED = re.compile(r"Picture size (\d+)x(\d+) exceeds specified max pixel count")


class TooManyPixels(ValueError):
    """A video whose frames are larger than the cap; `width`/`height` are what it claimed
    (0 when the decoder refused a frame without the size reaching us)."""

    def __init__(self, width: int, height: int, max_pixels: int, setting: str = "download.max_pixels"):
        self.width, self.height, self.max_pixels = width, height, max_pixels
        size = f"{width}x{height} = {width * height} pixels" if width and height else "a frame"
        super().__init__(f"{size} > {setting} ({max_pixels})")


@contextmanager
def _refusals() -> Iterator[list]:
    """ffmpeg's log lines of this thread while the block runs (the decoder says the refused size
    only there). PyAV keeps ffmpeg silent by default; the level is raised for the block only."""
    before, skip = av.logging.get_level(), av.logging.get_skip_repeated()
    with av.logging.Capture(local=True) as logs:
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)  # the second bomb's line is the same as the first's
        try:
            yield logs
        finally:
            av.logging.set_level(before)
            av.logging.set_skip_repeated(skip)


def _refused_size(logs: list) -> tuple[int, int] | None:
    for _, _, message in logs:
        m = _REFUSED.search(message)
        if m:
            return int(m.group(1)), int(m.group(2))
    return None


def open_video(source, max_pixels: int, setting: str = "download.max_pixels"):
    """`av.open(source)` for reading, with the decoders of every video stream capped at
    `max_pixels` from the first byte on. Raises TooManyPixels (naming `setting`) when a header
    claims more or when reading the headers needed a frame over the cap; av.FFmpegError and
    OSError as av.open does."""
    opts = {"max_pixels": str(int(max_pixels))}
    with _refusals() as logs:
        # the options reach the decoders avformat_find_stream_info opens (for formats that
        # declare their streams in the header: every container ingest keeps)
        container = av.open(source, options=opts)
    try:
        refused = _refused_size(logs)
        if refused:
            raise TooManyPixels(*refused, max_pixels, setting)
        for s in container.streams.video:
            w, h = s.codec_context.width, s.codec_context.height
            if w * h > max_pixels:
                raise TooManyPixels(w, h, max_pixels, setting)
            s.codec_context.options = opts
    except BaseException:
        container.close()
        raise
    return container


def refusal(error: BaseException, max_pixels: int, setting: str = "download.max_pixels") -> TooManyPixels | None:
    """The TooManyPixels behind a decoding error of a stream opened by `open_video`, if that is
    what it was: a capped decoder answers an oversize frame with EINVAL."""
    if isinstance(error, av.ArgumentError):
        return TooManyPixels(0, 0, max_pixels, setting)
    return None


def check_pixels(data: bytes, max_pixels: int, setting: str = "the clip pixel cap") -> None:
    """Raise TooManyPixels when an in-memory video's headers or first frame are over
    `max_pixels`, for decoders that cannot be given the cap themselves (decord, torchcodec).
    The first frame is decoded by a capped decoder: a header may say nothing of the size."""
    import io

    try:
        with open_video(io.BytesIO(data), max_pixels, setting) as c:
            if c.streams.video:
                next(c.decode(video=0), None)
    except (av.FFmpegError, OSError) as e:
        if over := refusal(e, max_pixels, setting):
            raise over from None
        # anything else is not a pixel matter: the decoder itself reports what is wrong
