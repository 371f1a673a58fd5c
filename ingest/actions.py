"""True agent actions: a video's actions sidecar in, each clip's per-step actions out.

A source that knows what its agent did (the sample corpus's simulators) gives a candidate the
location of a JSON sidecar, `Candidate.extra["actions"]` (a local or cloud path, or an http(s)
URL fetched under the download guard):

    {"fps": 30, "action_space": "ale:Pitfall:18", "actions": [a_0, a_1, …]}

one int per video frame, a_i the action taken after frame i, 0 <= a_i < n for an
action_space "<sim>:<game>:<n>". A clip at clips.fps gets one action per step between its
consecutive frames (`resample_actions`). Anything wrong with a sidecar is an IngestError
(stage "actions", error type "BadActions") whose message names it; the processor then keeps
the video and leaves its clips' actions NULL.
"""
from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards import fs
from genie_pipeline.shards.records import printable_path

ACTIONS_KEY = "actions"  # the Candidate.extra key (and catalog column) holding the sidecar's location
MAX_SIDECAR_BYTES = 16 << 20  # ~1.5 M frames of actions: hours of 60 FPS video
_SPACE = re.compile(r"^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64}){1,4}$")
# a video's sidecar may miss or add this many frames against the length its header gives
LENGTH_SLACK_FRAMES = 2


def _bad(location: str, why: str) -> IngestError:
    return IngestError("actions", "BadActions", f"actions sidecar {printable_path(location)}: {why}")


@dataclass
class TrueActions:
    """A parsed sidecar: `actions` int16, one per video frame."""

    location: str
    fps: float
    action_space: str
    actions: np.ndarray

    def check_video(self, duration_s: float, fps: float) -> None:
        """BadActions unless the sidecar fits a video of `duration_s` at `fps` (either NaN or
        0 where the header does not say: that check is skipped)."""
        if fps and fps == fps and abs(self.fps - fps) > 0.01 * fps:
            raise _bad(self.location, f"says {self.fps:g} FPS, the video runs at {fps:g}")
        frames = duration_s * self.fps
        if frames == frames and abs(len(self.actions) - frames) > LENGTH_SLACK_FRAMES:
            raise _bad(self.location, f"has {len(self.actions)} actions, the video {frames:.0f} frames")

    def for_clip(self, start_s: float, clip_fps: float, n_frames: int) -> list[int]:
        """The actions of the clip of `n_frames` frames at `clip_fps` starting `start_s` into
        the video (`resample_actions`); BadActions if the clip runs past them."""
        try:
            return resample_actions(self.actions, self.fps, clip_fps, start_s, n_frames)
        except IndexError as e:
            raise _bad(self.location, str(e)) from None


def resample_actions(actions: Sequence[int], src_fps: float, clip_fps: float, start_s: float,
                     n_frames: int) -> list[int]:
    """The n_frames - 1 actions of a clip cut at `clip_fps` from a video at `src_fps` whose
    frame j was followed by `actions[j]`, the clip's frame 0 at `start_s` in the video.

    Step i (clip frame i to i + 1) takes the most frequent action among the source frames from
    the one clip frame i shows up to, not including, the one frame i + 1 shows (ties: the one
    that comes first); where both show the same source frame, that frame's action. Clip frame
    k (k counted from the video's start at clip_fps) shows what the decoder's fps filter
    (round to nearest) shows: the last source frame j with round(j * clip_fps / src_fps) <= k.
    IndexError if the clip needs an action past the end of `actions`.
    """
    ratio = Fraction(src_fps).limit_denominator(1001) / Fraction(clip_fps).limit_denominator(1001)
    k0 = round(start_s * clip_fps)
    shown = [math.ceil((k + Fraction(1, 2)) * ratio) - 1 for k in range(k0, k0 + n_frames)]
    out = []
    for a, b in zip(shown, shown[1:]):
        span = actions[a:max(b, a + 1)]
        if a < 0 or len(span) < max(b - a, 1):
            raise IndexError(f"a clip at {start_s:g} s needs the actions of frames {a}..{max(b, a + 1) - 1}, "
                             f"there are {len(actions)}")
        counts = Counter(int(x) for x in span)
        out.append(max(counts, key=counts.__getitem__))  # the first of the most frequent
    return out


def parse_sidecar(data: bytes, location: str) -> TrueActions:
    """A sidecar's bytes as TrueActions; BadActions naming `location` for anything else."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise _bad(location, f"not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise _bad(location, f"not a JSON object ({type(doc).__name__})")
    fps, space, actions = doc.get("fps"), doc.get("action_space"), doc.get("actions")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < 1000:
        raise _bad(location, f"fps {fps!r} is not a frame rate")
    if not isinstance(space, str) or not _SPACE.match(space) or not space.rsplit(":", 1)[1].isdigit():
        raise _bad(location, f"action_space {str(space)[:80]!r} is not '<sim>:<game>:<n>'")
    n = int(space.rsplit(":", 1)[1])
    if not 1 <= n <= np.iinfo(np.int16).max + 1:
        raise _bad(location, f"action_space {space!r}: {n} actions do not fit int16")
    if not isinstance(actions, list) or not actions:
        raise _bad(location, "`actions` is not a non-empty list")
    bad = next((i for i, a in enumerate(actions) if isinstance(a, bool) or not isinstance(a, int) or not 0 <= a < n),
               None)
    if bad is not None:
        raise _bad(location, f"actions[{bad}] = {str(actions[bad])[:40]} is not an int in [0, {n})")
    return TrueActions(location, float(fps), space, np.asarray(actions, np.int16))


def read_sidecar(location: str, download: DownloadConfig) -> TrueActions:
    """Fetch and parse the sidecar at `location`: an http(s) URL through the download guard
    (the address policy, timeout_s as its deadline), any other path through the filesystem
    layer; a location with a scheme (gs://, s3://, file://) only where download.allowed_schemes
    lists it; at most MAX_SIDECAR_BYTES. BadActions naming it otherwise."""
    # refused before any request: a bucket's client retries an unreachable store for minutes
    scheme = m.group(1).lower() if (m := re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", location)) else ""
    if scheme and scheme not in download.allowed_schemes:
        raise _bad(location, f"scheme {scheme!r} not in download.allowed_schemes {download.allowed_schemes}")
    try:
        if scheme in ("http", "https"):
            data = _fetch_url(location, download)
        else:
            with fs.open_read(location) as f:
                data = f.read(MAX_SIDECAR_BYTES + 1)
    except IngestError:
        raise
    except Exception as e:  # noqa: BLE001 — a missing file, a refused or failed request: one bad sidecar
        raise _bad(location, f"cannot read it ({type(e).__name__}: {e})") from None
    if len(data) > MAX_SIDECAR_BYTES:
        raise _bad(location, f"larger than {MAX_SIDECAR_BYTES} bytes")
    return parse_sidecar(data, location)


def _fetch_url(url: str, download: DownloadConfig) -> bytes:
    from genie_pipeline.ingest.download import YtdlpLog, read_proxy
    from genie_pipeline.ingest.netguard import AddressPolicy, NetGuard, guarded_ydl

    guard = NetGuard(AddressPolicy(download.allow_private_networks, download.allowed_networks),
                     download.timeout_s, download.min_rate_bytes_s, download.rate_window_s)
    opts = {"quiet": True, "no_warnings": True, "socket_timeout": download.timeout_s, "logger": YtdlpLog()}
    proxy = read_proxy(download.proxy_file) if download.proxy_file else download.proxy
    if proxy:
        opts["proxy"] = proxy
    try:
        with guarded_ydl(opts, guard) as ydl, ydl.urlopen(url) as resp:
            return resp.read(MAX_SIDECAR_BYTES + 1)
    except Exception:
        refusal = guard.refusal or guard.overdue()  # the guard's verdict, whatever yt-dlp wrapped it in
        if refusal:
            raise _bad(url, f"{refusal.error_type}: {refusal}") from None
        raise
