"""Fetch one candidate's video into the scratch dir: yt-dlp for URLs, a copy for cloud paths.

Politeness and robustness: per-host concurrency and start rate shared by every worker process
on the machine (lock files in the scratch dir), exponential backoff with jitter on 429, 5xx
and timeouts, size/duration caps, and only the schemes the config allows (for URLs and remote
paths alike). Safety: every request runs under a `NetGuard` (ingest/netguard.py: no internal
addresses, a deadline per video, a minimum rate), and a video's scratch files are cleared before
each attempt and after a failure, so a killed run's `.part` files neither pile up nor pass for
a download.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import random
import re
import shutil
import time
import urllib.parse
from dataclasses import dataclass, field

from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.netguard import AddressPolicy, NetGuard, guarded_ydl
from genie_pipeline.shards import fs
from genie_pipeline.shards.records import Candidate

_RETRYABLE = re.compile(r"HTTP Error (429|5\d\d)|timed? ?out|Connection (reset|refused|aborted)|"
                        r"Temporary failure|Remote end closed|IncompleteRead", re.I)
_HTTP_CODE = re.compile(r"HTTP Error (\d{3})")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class YtdlpLog:
    """yt-dlp prints errors to stderr even when quiet; ours become failure rows instead."""

    def __init__(self):
        import logging

        self.log = logging.getLogger("genie_pipeline.ytdlp")

    def debug(self, msg):
        self.log.debug(msg)

    info = debug

    def warning(self, msg):
        self.log.info(msg)

    def error(self, msg):
        self.log.info(msg)


@dataclass
class Fetched:
    path: str
    temporary: bool  # delete after cutting (unless download.keep)
    attempts: int = 1
    meta: dict = field(default_factory=dict)  # what the site says: channel, uploader, upload_date, license


def ffmpeg_exe() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class HostGate:
    """At most `concurrency` downloads per host at once and `rate` starts per second, across
    every process sharing `lock_dir` (Beam's local multi-process workers do)."""

    def __init__(self, lock_dir: str, concurrency: int, rate: float):
        self.lock_dir, self.concurrency, self.min_gap = lock_dir, concurrency, 1.0 / rate
        os.makedirs(lock_dir, exist_ok=True)

    @contextlib.contextmanager
    def slot(self, host: str):
        h = hashlib.sha1(host.encode()).hexdigest()[:12]
        while True:
            for i in range(self.concurrency):
                fh = open(os.path.join(self.lock_dir, f"{h}.{i}.lock"), "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.close()
                    continue
                try:
                    self._pace(h)
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
                    fh.close()
                return
            time.sleep(0.05)

    def _pace(self, h: str) -> None:
        with open(os.path.join(self.lock_dir, f"{h}.rate"), "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            try:
                last = float(fh.read() or 0)
            except ValueError:
                last = 0.0
            wait = last + self.min_gap - time.time()
            if wait > 0:
                time.sleep(wait)
            fh.seek(0)
            fh.truncate()
            fh.write(repr(time.time()))


class Downloader:
    """Created once per worker (by the VideoProcessor); `fetch` per candidate."""

    def __init__(self, cfg: DownloadConfig, scratch_dir: str):
        self.cfg = cfg
        self.scratch = scratch_dir
        os.makedirs(scratch_dir, exist_ok=True)
        self.gate = HostGate(os.path.join(scratch_dir, ".hosts"), cfg.per_host_concurrency, cfg.per_host_rate)
        self.policy = AddressPolicy(cfg.allow_private_networks, cfg.allowed_networks)

    def fetch(self, cand: Candidate) -> Fetched:
        """The candidate's video as a local file; IngestError (stage "download") if there is none.
        What an earlier, killed or failed download of the video left in the scratch dir is
        deleted first, and a failed download leaves nothing behind."""
        if cand.url:
            return self._fetch_url(cand.url, cand.video_key)
        if cand.path and fs.is_remote(cand.path):
            # an http(s) path is a URL: it goes through yt-dlp and the guard, not fsspec
            if self._scheme(cand.path) in ("http", "https"):
                return self._fetch_url(cand.path, cand.video_key)
            return self._copy_remote(cand)
        path = fs.local(cand.path or "")
        if not path:
            raise _failed("NoLocation", "candidate has neither url nor path")
        if not os.path.isfile(path):
            raise _failed("FileNotFound", f"no such file: {path}")
        return Fetched(path, temporary=False)

    def _scheme(self, location: str) -> str:
        """`location`'s scheme; DisallowedScheme unless download.allowed_schemes lists it."""
        scheme = location.partition(":")[0].lower() if _SCHEME.match(location) else ""
        if scheme not in self.cfg.allowed_schemes:
            raise _failed("DisallowedScheme",
                          f"scheme {scheme or '(none)'!r} of {location[:200]!r} not in download.allowed_schemes "
                          f"{self.cfg.allowed_schemes}")
        return scheme

    def _clear(self, vkey: str) -> None:
        """Delete the scratch files of video `vkey`: a finished file never cut, `.part`, `.ytdl`
        and fragment files. Keys hold no dot, so `vkey.` names this video's files only."""
        for p in glob.glob(os.path.join(glob.escape(self.scratch), glob.escape(vkey) + ".*")) + [
                os.path.join(self.scratch, vkey)]:
            if os.path.isdir(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                fs.remove(p)

    # ------------------------------------------------------------------ URLs via yt-dlp
    def _fetch_url(self, url: str, vkey: str) -> Fetched:
        try:
            host = urllib.parse.urlsplit(url).hostname or ""
        except ValueError as e:
            raise _failed("BadURL", f"cannot parse URL: {e}") from None
        self._scheme(url)
        guard = None
        attempts = 0
        while True:
            attempts += 1
            self._clear(vkey)
            try:
                with self.gate.slot(host):
                    # the deadline runs from the first attempt's start, not from the wait for a slot
                    guard = guard or NetGuard(self.policy, self.cfg.deadline_s, self.cfg.min_rate_bytes_s,
                                              self.cfg.rate_window_s)
                    path, meta = self._ytdlp(url, vkey, guard)
                if guard.refusal:  # yt-dlp carried on without it (a skipped fragment): not a whole video
                    raise guard.refusal
                return Fetched(path, temporary=not self.cfg.keep, attempts=attempts, meta=meta)
            except IngestError:
                self._clear(vkey)
                raise
            except Exception as e:
                self._clear(vkey)
                # the guard's verdict, whatever yt-dlp made of it (a TLS handshake cut short by
                # the deadline surfaces as a plain timeout)
                refusal = guard and (guard.refusal or guard.overdue())
                if refusal:
                    raise _failed(refusal.error_type, str(refusal)) from None
                msg = _clean(str(e))
                code = _HTTP_CODE.search(msg)
                if attempts <= self.cfg.retries and _RETRYABLE.search(msg):
                    delay = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (attempts - 1))
                    delay *= 0.5 + random.random()  # jitter: workers don't retry in step
                    time.sleep(max(0.0, min(delay, guard.remaining() if guard else delay)))
                    continue
                raise _failed(_error_type(msg, code, e), f"after {attempts} attempt(s): {msg}") from None

    def _ytdlp(self, url: str, vkey: str, guard: NetGuard) -> tuple[str, dict]:
        from yt_dlp.utils import match_filter_func

        c = self.cfg
        opts = {
            "format": c.format,
            # vkey is derived by safe_id(): nothing from a title or URL reaches the path
            "outtmpl": os.path.join(self.scratch, f"{vkey}.%(ext)s"),
            "paths": {"temp": self.scratch},
            "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
            "socket_timeout": c.timeout_s, "retries": 0, "fragment_retries": 2,
            "max_filesize": int(c.max_filesize_mb * 1024 * 1024),
            "match_filter": match_filter_func(f"duration <=? {int(c.max_duration_s)}"),
            "ffmpeg_location": ffmpeg_exe(), "overwrites": True, "continuedl": False,
            "restrictfilenames": True, "windowsfilenames": True, "logger": YtdlpLog(),
        }
        if c.cookiefile:
            opts["cookiefile"] = c.cookiefile
        if c.proxy:
            opts["proxy"] = c.proxy
        opts.update(c.ytdlp_options)
        with guarded_ydl(opts, guard) as ydl:
            info = ydl.extract_info(url, download=True)
        if info is None:
            raise _failed("Filtered", "yt-dlp skipped the video (match filter: too long, or a playlist)")
        if info.get("_type") == "playlist":
            raise _failed("Playlist", "URL is a playlist, not a video")
        for d in info.get("requested_downloads") or []:
            if d.get("filepath") and os.path.exists(d["filepath"]):
                return d["filepath"], site_provenance(info)
        if info.get("filesize") and info["filesize"] > opts["max_filesize"]:
            raise _failed("TooLarge", f"{info['filesize']} bytes > download.max_filesize_mb")
        raise _failed("NoFile", "yt-dlp finished without a file (over max_filesize_mb, or no format matched)")

    # ------------------------------------------------------------------ cloud paths
    def _copy_remote(self, cand: Candidate) -> Fetched:
        ext = os.path.splitext(cand.path)[1][:8] if re.match(r"^\.[A-Za-z0-9]{1,7}$", os.path.splitext(cand.path)[1]) else ""
        local = os.path.join(self.scratch, cand.video_key + ext)
        self._clear(cand.video_key)
        try:
            with fs.open_read(cand.path) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except Exception as e:
            self._clear(cand.video_key)
            raise _failed(type(e).__name__, f"cannot copy {cand.path}: {e}") from None
        return Fetched(local, temporary=not self.cfg.keep)


def site_provenance(info) -> dict:
    """The provenance a yt-dlp info dict (an entry, an .info.json) gives: channel, uploader,
    license, upload_date as YYYY-MM-DD; None where it says nothing."""
    if not isinstance(info, dict):
        return {}
    date = str(info.get("upload_date") or "")
    return {"channel": info.get("channel") or info.get("uploader"), "uploader": info.get("uploader"),
            "license": info.get("license"),
            "upload_date": f"{date[:4]}-{date[4:6]}-{date[6:8]}" if re.fullmatch(r"\d{8}", date) else (date or None)}


def _failed(error_type: str, message: str) -> IngestError:
    return IngestError("download", error_type, message)


_KINDS = [(re.compile(r"timed? ?out", re.I), "Timeout"), (re.compile(r"Connection refused", re.I), "ConnectionRefused"),
          (re.compile(r"Did not get any data blocks|empty file", re.I), "EmptyDownload"),
          (re.compile(r"Unsupported URL", re.I), "UnsupportedURL")]


def _error_type(msg: str, code, exc: Exception) -> str:
    if code:
        return f"HTTP{code.group(1)}"
    return next((kind for rx, kind in _KINDS if rx.search(msg)), type(exc).__name__)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean(msg: str) -> str:
    return _ANSI.sub("", msg).replace("ERROR: ", "")[:2000]
