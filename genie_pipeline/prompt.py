"""A play prompt from any picture or video: its first frame, fitted like ingested footage.

A picture (PNG, JPEG, WebP, ...) is checked by PIL first: the size its header claims is
bounded by `download.max_pixels` before anything is decoded, and the whole image must
decode (a truncated file is refused, not padded with grey). The frame is then fitted to the
clip size by ingest's own decoder and aspect policy (`clips.aspect`: pad, crop or stretch),
the way every training clip was, so the prompt looks like what the model learnt from. A
video gives its first frame through the same decoder, which bounds its pixels itself.
"""
from __future__ import annotations

import os

import numpy as np

from genie_pipeline.ingest.decode import iter_frames
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.training.errors import TrainingError

# ingest resamples to clips.fps; a still image lasts one 1/25 s frame, which the fps filter
# drops at 10 FPS. At the highest rate it allows, the first output frame is the first frame.
_FIRST_FRAME_FPS = 240


def load_prompt(path: str | os.PathLike, clips: ClipsConfig, max_pixels: int) -> np.ndarray:
    """The first frame of the picture or video at `path`, (clips.height, clips.width, 3) uint8.

    Raises TrainingError (key `prompt`) for a missing, unreadable, truncated or oversized file."""
    path = str(path)
    _check_picture(path, max_pixels)
    fit = clips.model_copy(update={"fps": _FIRST_FRAME_FPS})
    try:
        return next(iter_frames(path, fit, max_pixels=max_pixels))
    except IngestError as e:
        raise TrainingError("prompt", f"{path}: {e}") from None
    except StopIteration:
        raise TrainingError("prompt", f"{path}: no decodable frame") from None


def _check_picture(path: str, max_pixels: int) -> None:
    """Refuse an oversized or truncated picture; anything PIL does not know is left to the
    video decoder."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
            if width * height > max_pixels:
                raise TrainingError("prompt", f"{path}: {width}x{height} = {width * height} pixels is over "
                                    f"download.max_pixels ({max_pixels})")
            image.load()
    except UnidentifiedImageError:
        return
    except Image.DecompressionBombError:
        raise TrainingError("prompt", f"{path}: over PIL's pixel limit (a decompression bomb?)") from None
    except FileNotFoundError:
        raise TrainingError("prompt", f"{path} does not exist") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise TrainingError("prompt", f"{path}: unreadable image ({e})") from None
