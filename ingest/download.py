"""Fetch one candidate's video into the scratch dir: yt-dlp for URLs, a copy for cloud paths.

Politeness (ingest/politeness.py): per-host start rate and concurrency are this process's
share of job-wide limits, and a host that answers 429 or a bot wall is left alone by the
whole job until its back-off record (OUT/_hosts) expires. Retries: yt-dlp retries the
request that failed (`retries` for the media file on 5xx and network errors,
`fragment_retries` for HLS/DASH fragments, `extractor_retries` where an extractor knows
its transient errors), sleeping `backoff_s × 2^n` (capped at `backoff_max_s`, ±50 % jitter)
between tries. Ours retries only what yt-dlp does not: a failed page extraction (429, 5xx,
timeouts, resets) re-extracts, and a 429/408 on the media file downloads it again from the
info already extracted, so the page is not fetched again. A bot wall is not retried.

Secrets: `download.cookiefile` (any fs path: a bucket on remote workers) is copied once per
worker to a private temp file (mode 0600) that yt-dlp reads and writes back to, and
`download.proxy_file` (any fs path) holds the proxy URL, so credentials sit neither in
pipeline.yaml nor on a command line; URL credentials are masked in every message.

Robustness: size/duration caps, and only the schemes the config allows (for URLs and
remote paths alike). Safety: every request runs under a `NetGuard` (ingest/netguard.py: no
internal addresses, a deadline per video, a minimum rate), and a video's scratch files are
cleared before each attempt and after a failure, so a killed run's `.part` files neither
pile up nor pass for a download.
"""
from __future__ import annotations

import contextlib
import copy
import glob
import os
import random
import re
import shutil
import tempfile
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field

from genie_pipeline.ingest.config import CHEAPEST_SORT, DownloadConfig, PreflightError
from genie_pipeline.ingest.errors import Count, IngestError, no_count
from genie_pipeline.ingest.identity import Identity, IdentityPool, Tally, read_proxies
from genie_pipeline.ingest.netguard import AddressPolicy, NetGuard, guarded_ydl
from genie_pipeline.ingest.politeness import BOT_WALL, HostBackingOff, HostBackoff, process_limiter, worker_share
from genie_pipeline.shards import fs
from genie_pipeline.shards.records import RETRY_LATER, Candidate, redact

# what a failed page extraction may be retried for (yt-dlp's extractors mostly do not retry)
_RETRYABLE = re.compile(r"HTTP Error (429|5\d\d)|timed? ?out|Connection (reset|refused|aborted)|"
                        r"Temporary failure|Remote end closed|IncompleteRead", re.I)
# what yt-dlp's media download does not retry itself (it retries 5xx and network errors)
_RETRY_MEDIA = re.compile(r"HTTP Error (408|429)")
_HTTP_CODE = re.compile(r"HTTP Error (\d{3})")
# a proxy's own failure (it is down, refuses us, cannot reach the site), not the site's answer
_PROXY_TROUBLE = re.compile(r"proxy|Tunnel connection failed|HTTP Error 40[7]|HTTP Error 50[24]|"
                            r"Connection (refused|reset)|Remote end closed", re.I)
_GEO = re.compile(r"not available (in|from) your (country|location)|geo.?restrict", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_PROXY_URL = re.compile(r"^(https?|socks4a?|socks5h?)://[^\s]+$", re.I)


class YtdlpLog:
    """yt-dlp prints errors to stderr even when quiet; ours become failure rows instead."""

    def __init__(self):
        import logging

        self.log = logging.getLogger("genie_pipeline.ytdlp")

    def debug(self, msg):
        self.log.debug(redact(msg))  # a verbose yt-dlp prints its proxy

    info = debug

    def warning(self, msg):
        self.log.info(redact(msg))

    error = warning


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


class Downloader:
    """Created once per worker (by the VideoProcessor); `fetch` per candidate.

    `job_workers` is the number of worker processes in the job (politeness.job_worker_processes):
    this process takes 1/job_workers of the per-host budget. Back-off records go to
    `backoff_dir` (OUT/_hosts for an ingest; default: a folder in the scratch dir, which only
    this machine sees). IngestError (stage "download") if the cookie or proxy file cannot be read."""

    def __init__(self, cfg: DownloadConfig, scratch_dir: str, *, backoff_dir: str | None = None,
                 job_workers: int = 1, count: Count = no_count, clip_height: int = 90):
        self.cfg, self.clip_height = cfg, clip_height
        self.scratch = scratch_dir
        os.makedirs(scratch_dir, exist_ok=True)
        share = worker_share(cfg, job_workers)
        self.limiter = process_limiter(share)
        # rests per (site, identity), job-wide (ingest/identity.py)
        self.backoff = HostBackoff(backoff_dir or os.path.join(scratch_dir, ".hosts"), cfg.backoff_s,
                                   cfg.backoff_max_s, spread_s=1.0 / share.rate)
        self.policy = AddressPolicy(cfg.allow_private_networks, cfg.allowed_networks)
        self.proxy = read_proxy(cfg.proxy_file) if cfg.proxy_file else cfg.proxy
        self.cookiefile = private_copy(cfg.cookiefile) if cfg.cookiefile else None
        if self.cookiefile:
            weakref.finalize(self, fs.remove, self.cookiefile)
        self.count = count
        proxies = read_proxies(cfg.proxies, _PROXY_URL.match) if cfg.proxies else []
        # the first identity shares the worker's copy; every other one gets its own jar
        jars = iter([self.cookiefile])
        self.pool = IdentityPool(cfg, self.backoff, proxies, direct_proxy=self.proxy, job_workers=job_workers,
                                 cookie_copy=lambda: next(jars, None) or (private_copy(cfg.cookiefile)
                                                                          if cfg.cookiefile else None),
                                 count=count)

    def fetch(self, cand: Candidate) -> Fetched:
        """The candidate's video as a local file; IngestError (stage "download") if there is none.
        What an earlier, killed or failed download of the video left in the scratch dir is
        deleted first, and a failed download leaves nothing behind."""
        if cand.url:
            return self._fetch_url(cand.url, cand.video_key)
        if (cand.path or "")[:7].lower() == "file://":  # a local file named by a scheme: allowed like any
            self._scheme(cand.path)
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
        """Download `url` as one identity after another (ingest/identity.py): a wall, a 429, a
        failing proxy or a refusal that may be the address's (403, geo-blocked) moves the
        video to the identity free soonest, at most download.identity_attempts times. Out of
        attempts (or of time), a video that met a wall fails retryable (a later run takes it
        up again); one refused by every identity fails for good."""
        try:
            host = urllib.parse.urlsplit(url).hostname or ""
        except ValueError as e:
            raise _failed("BadURL", f"cannot parse URL: {e}") from None
        self._scheme(url)
        tally, guard = Tally(), [None]  # one guard (its deadline) for every identity
        for _ in range(self.cfg.identity_attempts):
            ident = self.pool.choose(host, tally.tried)
            if ident is None:
                break
            tally.tried.add(ident.name)
            try:
                got = self._fetch_as(url, vkey, host, ident, guard)
                self.pool.succeeded(ident)
                return got
            except SwitchIdentity as e:
                tally.last = f"{e.error_type}: {e}"
                if e.error_type in RETRY_LATER:
                    tally.walls += 1
                    if e.error_type == "ProxyError":
                        self.pool.failed(ident, str(e)[:200])
                    elif e.error_type != "HostBackoff":
                        self.pool.walled(ident)
                    if len(tally.tried) >= self.pool.live():
                        tally.tried.clear()  # every identity met: wait for the one that rests least
                if guard[0] is not None and guard[0].overdue():
                    break
                if guard[0] is not None and guard[0].refusal and guard[0].refusal.error_type == "HostBackoff":
                    guard[0].refusal = None  # that identity's rest, not the video's: the next may go
        self.count("identity_gave_up")
        kind = tally.last.partition(":")[0]
        if tally.walls:
            raise _failed(kind if kind in RETRY_LATER else "BotWall",
                          f"walled or refused on {self.pool.live()} identit(ies) after {self.cfg.identity_attempts} "
                          f"attempt(s), retried by the next run; last: {tally.last}")
        raise _failed(kind or "NoIdentity", f"refused to every identity ({self.pool.live()} live): {tally.last}")

    def _fetch_as(self, url: str, vkey: str, host: str, ident: Identity, guard_box: list) -> Fetched:
        """`url` through `ident`, retrying what yt-dlp does not; SwitchIdentity for what
        another identity may not meet."""
        c = self.cfg
        backoff = self.pool.backoff_of(ident)
        ydl, info, attempts = None, None, 0
        with contextlib.ExitStack() as stack:
            while True:
                attempts += 1
                self._clear(vkey)
                guard = guard_box[0]
                try:
                    with self.limiter.slot(host), self.pool.slot(host, ident):
                        self._await_backoff(backoff, host, guard.remaining() if guard else c.deadline_s)
                        if guard is None:  # the deadline runs from the first start, not from the wait for a slot
                            guard = guard_box[0] = NetGuard(self.policy, c.deadline_s, c.min_rate_bytes_s,
                                                            c.rate_window_s, backoff,
                                                            max_bytes=int(c.max_filesize_mb * 1024 * 1024))
                        if ydl is None:
                            guard.backoff = backoff
                            ydl = stack.enter_context(guarded_ydl(self._options(vkey, guard, ident), guard))

                        def turn():
                            self.limiter.pace(host)
                            self.pool.pace(host, ident)
                        guard.before_start = turn  # this attempt's start
                        if info is None:  # the page, once: a retry of the media reuses what it said
                            info = ydl.extract_info(url, download=False, process=False)
                        path, meta = self._download(ydl, info)
                    if guard.refusal:  # yt-dlp carried on without it (a skipped fragment): not a whole video
                        raise guard.refusal
                    return Fetched(path, temporary=not c.keep, attempts=attempts, meta=meta)
                except IngestError:
                    self._clear(vkey)
                    raise
                except Exception as e:
                    self._clear(vkey)
                    if env := fs.environment_error(e):  # scratch full or read-only: the machine's fault, not the video's
                        raise env from None
                    delay = self._retry_delay(e, guard, backoff, host, attempts, extracted=info is not None,
                                              proxied=ident.proxy is not None)
                    time.sleep(delay)

    def _await_backoff(self, backoff, host: str, budget_s: float) -> None:
        """Wait out the identity's back-off at the host before getting yt-dlp ready (the guard
        checks it again before every request); SwitchIdentity if it outlasts `budget_s`."""
        try:
            backoff.wait(host, budget_s)
        except HostBackingOff as e:
            raise SwitchIdentity("HostBackoff", str(e)) from None

    def _retry_delay(self, e: Exception, guard: NetGuard | None, backoff, host: str, attempts: int,
                     extracted: bool, proxied: bool) -> float:
        """Seconds to wait before the next attempt after `e`; raises the IngestError to give
        up with, or SwitchIdentity for what is this identity's trouble."""
        # the guard's verdict, whatever yt-dlp made of it (a TLS handshake cut short by the
        # deadline surfaces as a plain timeout)
        refusal = guard and (guard.refusal or guard.overdue())
        if refusal:
            if refusal.error_type == "HostBackoff":
                raise SwitchIdentity("HostBackoff", str(refusal)) from None
            raise _failed(refusal.error_type, str(refusal)) from None
        msg = _clean(str(e))
        code = _HTTP_CODE.search(msg)
        if guard and guard.walled:  # a wall page (the guard struck the identity already)
            walled, guard.walled = guard.walled, None
            raise SwitchIdentity("BotWall", f"{walled}: {msg}") from None
        if BOT_WALL.search(msg):  # retrying would only confirm it: this identity rests, another goes
            backoff.strike(host, f"bot wall: {msg[:200]}")
            raise SwitchIdentity("BotWall", msg) from None
        if code and code.group(1) == "429" and (self.pool.live() > 1 or attempts > self.cfg.retries):
            raise SwitchIdentity("HTTP429", msg) from None  # the guard struck the identity; another goes at once
        if proxied and _PROXY_TROUBLE.search(msg):
            raise SwitchIdentity("ProxyError", msg) from None
        if (code and code.group(1) == "403") or _GEO.search(msg):  # may be this address's: ask another
            raise SwitchIdentity(f"HTTP{code.group(1)}" if code else "GeoBlocked", msg) from None
        retry = _RETRY_MEDIA if extracted else _RETRYABLE
        if attempts > self.cfg.retries or not retry.search(msg):
            raise _failed(_error_type(msg, code, e), f"after {attempts} attempt(s): {msg}") from None
        return max(0.0, min(backoff_delay(self.cfg, attempts - 1), guard.remaining() if guard else float("inf")))

    def _options(self, vkey: str, guard: NetGuard, ident: Identity) -> dict:
        from yt_dlp.utils import match_filter_func

        c = self.cfg

        def sleep(n: int) -> float:  # yt-dlp's own retries wait as ours do, within the deadline
            return max(0.0, min(backoff_delay(c, n), guard.remaining()))

        opts = {
            "format": c.selected_format(self.clip_height),
            # vkey is derived by safe_id(): nothing from a title or URL reaches the path
            "outtmpl": os.path.join(self.scratch, f"{vkey}.%(ext)s"),
            "paths": {"temp": self.scratch},
            "quiet": True, "no_warnings": True, "noprogress": True, "noplaylist": True,
            "socket_timeout": c.timeout_s,
            "retries": c.retries, "fragment_retries": c.retries, "extractor_retries": c.retries,
            "retry_sleep_functions": {"http": sleep, "fragment": sleep, "extractor": sleep},
            "max_filesize": int(c.max_filesize_mb * 1024 * 1024),
            "match_filter": match_filter_func(f"duration <=? {int(c.max_duration_s)}"),
            "ffmpeg_location": ffmpeg_exe(), "overwrites": True, "continuedl": False,
            "restrictfilenames": True, "windowsfilenames": True, "logger": YtdlpLog(),
        }
        if c.format is None:  # the default format picks the smallest stream that serves the clip
            opts["format_sort"] = CHEAPEST_SORT
        if ident.cookiefile:
            opts["cookiefile"] = ident.cookiefile
        if ident.proxy:
            opts["proxy"] = ident.proxy
        opts.update(c.ytdlp_options)
        if c.pot_provider != "none":  # beside any extractor_args of ytdlp_options
            opts["extractor_args"] = {**c.pot_extractor_args(), **(opts.get("extractor_args") or {})}
        return opts

    def _download(self, ydl, info: dict) -> tuple[str, dict]:
        """Download the video an extracted (unprocessed) `info` describes; (file, provenance)."""
        if info is None:
            raise _failed("Filtered", "yt-dlp skipped the video (match filter: too long, or a playlist)")
        if info.get("_type") == "playlist":
            raise _failed("Playlist", "URL is a playlist, not a video")
        # processing fills in the info it is given: a retry starts from the extractor's answer
        done = ydl.process_ie_result(copy.deepcopy(info), download=True)
        if done is None:
            raise _failed("Filtered", "yt-dlp skipped the video (match filter: too long, or a playlist)")
        for d in done.get("requested_downloads") or []:
            if d.get("filepath") and os.path.exists(d["filepath"]):
                return d["filepath"], site_provenance(done)
        if done.get("filesize") and done["filesize"] > int(self.cfg.max_filesize_mb * 1024 * 1024):
            raise _failed("TooLarge", f"{done['filesize']} bytes > download.max_filesize_mb")
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
            if env := fs.environment_error(e):
                raise env from None
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


def check_secret_files(cfg: DownloadConfig) -> None:
    """PreflightError unless download.cookiefile and download.proxy_file, where set, exist
    (on this machine or in a bucket): checked before any work starts, rather than by every
    worker as it sets up."""
    for key, path in (("download.cookiefile", cfg.cookiefile), ("download.proxy_file", cfg.proxy_file)):
        try:
            found = bool(path) and fs.exists(path)
        except Exception as e:  # noqa: BLE001 — no credentials, a bucket that does not answer
            raise PreflightError(key, f"cannot reach {path!r}: {_clean(str(e))[:300]}") from None
        if path and not found:
            raise PreflightError(key, f"{path!r} does not exist")


POT_PLUGIN = {"bgutil_http": "yt_dlp_plugins.extractor.getpot_bgutil_http",
              "bgutil_script": "yt_dlp_plugins.extractor.getpot_bgutil_script"}


def check_pot_provider(cfg: DownloadConfig) -> None:
    """PreflightError unless the token provider plugin download.pot_provider names is
    installed (yt-dlp would otherwise go on without tokens and meet the wall)."""
    import importlib.util

    module = POT_PLUGIN.get(cfg.pot_provider)
    if module and importlib.util.find_spec(module) is None:
        raise PreflightError("download.pot_provider", f"{cfg.pot_provider}: the provider plugin is not installed "
                                                      f"(pip install 'genie-pipeline[pot]', or the Dataflow image)")


def backoff_delay(cfg: DownloadConfig, n: int) -> float:
    """The wait before retry n+1 (n from 0): backoff_s × 2^n capped at backoff_max_s, ±50 % jitter
    so that workers do not retry in step."""
    return min(cfg.backoff_max_s, cfg.backoff_s * 2 ** min(n, 60)) * (0.5 + random.random())


def private_copy(location: str) -> str:
    """A copy of `location` (any fs path) in a new temp file only this user may read or write
    (mkstemp creates it 0600); IngestError if it cannot be read."""
    fd, path = tempfile.mkstemp(prefix="genie-cookies-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as dst, fs.open_read(location) as src:
            shutil.copyfileobj(src, dst, 1 << 20)
    except Exception as e:
        os.remove(path)
        raise _failed("CookieFile", f"cannot read download.cookiefile {location}: {_clean(str(e))}") from None
    return path


def read_proxy(location: str) -> str:
    """The proxy URL stored in `location` (any fs path); IngestError without ever quoting it."""
    try:
        url = fs.read_bytes(location).decode("utf-8").strip()
    except Exception as e:
        raise _failed("ProxyFile", f"cannot read download.proxy_file {location}: {_clean(str(e))}") from None
    if not _PROXY_URL.match(url):
        raise _failed("ProxyFile", f"download.proxy_file {location} does not hold one proxy URL "
                                   f"(http://, https://, socks4://, socks5://...)")
    return url


class SwitchIdentity(IngestError):
    """This identity's trouble (a wall, a 429, its proxy failing, a refusal that may be its
    address's): the video goes on with another one."""

    def __init__(self, error_type: str, message: str):
        super().__init__("download", error_type, message)


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
    """A message fit for a failure row or a log: no colour codes, no credentials in URLs."""
    return redact(_ANSI.sub("", msg).replace("ERROR: ", ""))[:2000]
