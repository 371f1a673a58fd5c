"""Egress identities: what a site sees of a download, and what it blocks.

Video sites wall a client *address* (cloud and NAT egress ranges first), not a host name
of theirs. An identity is one address a worker can appear from: a proxy of the pool
(`download.proxies`, a file of proxy URLs, one a line, on any fs path), or the worker's own
address (no pool, or `download.use_own_address` beside one), each with its own cookie jar
(a private 0600 copy of `download.cookiefile`, so a session one proxy earns is not shown
from another address).

Per (site, identity), not per site:
- back-off: a 429 or a bot wall rests that identity for that site, job-wide, through the
  same records as the host back-off (OUT/_hosts, ingest/politeness.py) keyed by
  "HOST via IDENTITY": a 429 `backoff_s × 2^(strikes-1)` (capped at backoff_max_s, at least
  its Retry-After), a wall `identity_rest_s × 2^(strikes-1)` (capped at
  identity_rest_max_s), each jittered on the way back;
- rate: `identity_rate` starts per second, job-wide, through a start record per (site,
  identity) beside the rest records (every start moves the next one a gap on), so two
  worker processes cannot put two starts from one address inside a site's window;
- concurrency: `identity_concurrency` downloads in flight, each process taking its share as
  for hosts.
The site-wide `per_host_rate` / `per_host_concurrency` still bound the whole job.

Names: an identity is named `proxy-<sha256(url)[:10]>` or `own-<sha256(machine)[:10]>`,
so neither a credential nor an address reaches a record, a log or the run report. The own
address is per machine: a walled worker rests only itself.

Health: every proxy is probed (a TCP connect) when the pool is built; a proxy that cannot be
reached, or whose requests fail as a proxy's do (refused, 407, tunnel errors), counts a
failure and rests; `proxy_max_failures` failures in a row retire it for the rest of this
worker process (counted as `proxies_retired` in the run's stats). Choice: the identity free
soonest, least recently used first, so work rotates over the pool.
"""
from __future__ import annotations

import hashlib
import random
import socket
import threading
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field
from typing import Callable

from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.politeness import HostBackoff, HostLimiter, worker_share
from genie_pipeline.shards import fs

PROBE_S = 3.0  # how long a proxy may take to accept a connection when the pool is built


@dataclass(eq=False)
class Identity:
    name: str  # never the URL: safe for logs, records and reports
    proxy: str | None  # None: the worker's own address
    cookiefile: str | None = None
    failures: int = 0  # in a row, of the proxy itself
    retired: bool = False
    last_used: float = 0.0
    walls: int = 0
    downloads: int = 0


def identity_name(kind: str, secret: str) -> str:
    return f"{kind}-{hashlib.sha256(secret.encode()).hexdigest()[:10]}"


class IdentityBackoff:
    """The host back-off of one identity: a HostBackoff whose keys are "HOST via NAME", so
    that the download guard (which waits and strikes per host) rests this identity only. A
    429 rests it as the host back-off does (backoff_s doubling); a bot wall for `wall_s`
    doubling up to `wall_max_s` (a wall lifts after minutes, not seconds)."""

    def __init__(self, backoff: HostBackoff, name: str, wall_s: float, wall_max_s: float):
        self.inner, self.name = backoff, name
        self.wall_s, self.wall_max_s = wall_s, wall_max_s

    def key(self, host: str) -> str:
        return f"{host} via {self.name}"

    def wait(self, host: str, budget_s: float) -> float:
        return self.inner.wait(self.key(host), budget_s)

    def strike(self, host: str, reason: str, retry_after_s: float | None = None) -> float:
        if "bot wall" in reason:
            return self.inner.strike(self.key(host), reason, retry_after_s, base_s=self.wall_s, max_s=self.wall_max_s)
        return self.inner.strike(self.key(host), reason, retry_after_s)

    def current(self, host: str, fresh: bool = False) -> dict:
        return self.inner.current(self.key(host), fresh)


class IdentityPool:
    """The identities of one worker process's downloader. `proxies` are the pool's URLs
    (read by `read_proxies`); `direct_proxy` is the one proxy of `download.proxy` /
    `proxy_file`, used for the own-address identity's traffic as before."""

    def __init__(self, cfg: DownloadConfig, backoff: HostBackoff, proxies: list[str], *,
                 direct_proxy: str | None = None, cookie_copy: Callable[[], str | None] = lambda: None,
                 job_workers: int = 1, count: Callable[..., None] = lambda name, n=1: None):
        self.cfg, self.backoff, self.count = cfg, backoff, count
        self._lock = threading.Lock()
        self.identities: list[Identity] = []
        for url in proxies:
            self.identities.append(Identity(identity_name("proxy", url), url))
        if not proxies or cfg.use_own_address:
            own = identity_name("own", f"{socket.gethostname()}|{direct_proxy or ''}")
            self.identities.append(Identity(own, direct_proxy))
        for ident in self.identities:
            ident.cookiefile = cookie_copy()
            if ident.cookiefile:
                weakref.finalize(self, fs.remove, ident.cookiefile)
        share = worker_share(cfg, job_workers)
        # concurrency: each process its share, as for hosts; the rate is paced job-wide through
        # shared start records (below), since W processes each pacing rate/W at their own
        # phase would still put two starts from one address within a site's window
        self.limiter = HostLimiter(max(1, -(-cfg.identity_concurrency // share.workers)), float("inf"))
        self.gap_s = 1.0 / cfg.identity_rate if cfg.identity_rate else 0.0
        random.shuffle(self.identities)  # workers begin at different identities
        self.retired = 0
        for ident in self.identities:
            if ident.proxy and proxies and not probe(ident.proxy):
                self.failed(ident, "no answer to a connection when the pool was built")

    def backoff_of(self, ident: Identity) -> IdentityBackoff:
        return IdentityBackoff(self.backoff, ident.name, self.cfg.identity_rest_s, self.cfg.identity_rest_max_s)

    def choose(self, host: str, tried: set[str]) -> Identity | None:
        """The identity to try next for `host`: among those not retired and not in `tried`
        (names), the one free soonest (its rest for `host` over, its next start due), least
        recently used first; None when there is none."""
        now = self.backoff.clock()
        with self._lock:
            live = [i for i in self.identities if not i.retired and i.name not in tried]
        if not live:
            return None

        def free_at(i: Identity) -> float:
            rest = float(self.backoff_of(i).current(host).get("until", 0))
            due = float(self.backoff.current(self._starts(host, i)).get("until", 0)) if self.gap_s else 0.0
            return max(now, rest, due)

        best = min(live, key=lambda i: (free_at(i), i.last_used))
        with self._lock:
            best.last_used = time.monotonic()
        return best

    def _starts(self, host: str, ident: Identity) -> str:
        return f"{host} via {ident.name} (starts)"

    def pace(self, host: str, ident: Identity) -> None:
        """Wait for this identity's turn to start a download at `host` (identity_rate, whole
        job): the start record says when the next start may happen, and this start moves it
        one gap on. Best effort across machines (a record read and written, not locked)."""
        if not self.gap_s:
            return
        key = self._starts(host, ident)
        now = self.backoff.clock()
        with self._lock:  # threads of this process reserve in turn
            at = max(now, float(self.backoff.current(key, fresh=True).get("until", 0)))
            self.backoff.record(key, {"host": key, "until": at + self.gap_s, "reason": "paced", "strikes": 0})
        if at > now:
            self.backoff.sleep(at - now)

    def slot(self, host: str, ident: Identity):
        return self.limiter.slot(f"{host} via {ident.name}")

    def walled(self, ident: Identity) -> None:
        with self._lock:
            ident.walls += 1
        self.count("identity_walls")

    def succeeded(self, ident: Identity) -> None:
        with self._lock:
            ident.failures = 0
            ident.downloads += 1

    def failed(self, ident: Identity, why: str) -> None:
        """The proxy of `ident` failed as a proxy: one more in a row; retired at
        proxy_max_failures (the own address is never retired)."""
        if ident.proxy is None or ident.name.startswith("own-"):
            return
        with self._lock:
            ident.failures += 1
            retire = not ident.retired and ident.failures >= self.cfg.proxy_max_failures
            if retire:
                ident.retired = True
                self.retired += 1
        self.count("proxy_failures")
        if retire:
            import logging

            logging.getLogger(__name__).warning("retiring proxy %s after %d failures in a row (%s)", ident.name,
                                                ident.failures, why)
            self.count("proxies_retired")

    def live(self) -> int:
        with self._lock:
            return sum(not i.retired for i in self.identities)


def probe(proxy: str, timeout_s: float = PROBE_S) -> bool:
    """Whether the proxy's host:port accepts a TCP connection (a health check that sends
    nothing, so no credential travels)."""
    parts = urllib.parse.urlsplit(proxy)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 1080)
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def read_proxies(location: str, valid: Callable[[str], bool]) -> list[str]:
    """The proxy URLs in `location` (any fs path): one a line, `#` comments and blank lines
    skipped, duplicates once. IngestError (download, ProxyFile) naming the line number, never
    its content, for one that is not a proxy URL, and for a file that holds none."""
    try:
        text = fs.read_bytes(location).decode("utf-8")
    except Exception as e:  # noqa: BLE001 — the path is named, the content never
        raise IngestError("download", "ProxyFile", f"cannot read download.proxies {location}: "
                                                   f"{type(e).__name__}") from None
    urls: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not valid(line):
            raise IngestError("download", "ProxyFile", f"download.proxies {location} line {n} is not a proxy URL "
                                                       f"(http://, https://, socks4://, socks5://...)")
        if line not in urls:
            urls.append(line)
    if not urls:
        raise IngestError("download", "ProxyFile", f"download.proxies {location} lists no proxy")
    return urls


@dataclass
class Tally:
    """What one video's download met across identities (for its failure message)."""

    walls: int = 0
    proxy_failures: int = 0
    tried: set = field(default_factory=set)
    last: str = ""
