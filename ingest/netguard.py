"""The network rules of one video's download, enforced inside yt-dlp's own networking.

`guarded_ydl(params, guard)` is a YoutubeDL whose every request (the page, each redirect, the
media file, every HLS/DASH fragment) goes through one request handler, yt-dlp's urllib
handler with the connection step replaced:

- Where. A connection is made only to addresses the `AddressPolicy` allows: public ones, plus
  private networks when the config says so. The host is resolved here, every address it
  resolves to is checked (one forbidden address blocks the host: a DNS answer that mixes
  public and internal addresses is a rebinding trick) and the socket connects to an address
  that was checked, so a second DNS answer cannot swap it. Request URLs and redirect targets
  are checked the same way before they are sent or followed, which is what covers a proxy
  (the connection then goes to the proxy, trusted because the operator configured it).
- How long and how slow. Every socket connect, read and write waits at most until the
  video's deadline; after each `window_s` seconds spent waiting on reads, the bytes read must
  average `min_rate` per second of that waiting. A server that trickles its headers or its
  body, or goes quiet, fails within a window or at the deadline.

- Whom, when. With a `HostBackoff` (ingest/politeness.py), every request first waits out
  its host's job-wide back-off (or fails HostBackoff when that outlasts the deadline), and a
  429 answer or a 403 bot-wall page becomes a strike for the host, honouring Retry-After. The
  error still reaches yt-dlp unchanged (a peeked error body is replayed to it).

Downloads that yt-dlp would hand to another program (ffmpeg for a live stream, rtmpdump, an
`external_downloader`) are refused before they start, since that program's requests would
bypass all of this; and ffmpeg as a downloader is confined to `file,crypto,data` (no network),
which also covers hlsnative handing a stream to ffmpeg at run time. Merging formats with
ffmpeg reads local files only and is unaffected.

Not covered: SOCKS proxies connect through yt-dlp's own socket code (the URL checks still
apply, the connection and pace checks do not), and through any proxy the target name is
resolved again by the proxy. DNS lookups and local work (ffmpeg merging) are not interrupted
by the deadline.
"""
from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import socket
import ssl
import time
import urllib.parse
import urllib.request
from typing import Callable

from yt_dlp import YoutubeDL
from yt_dlp.downloader import get_suitable_downloader
from yt_dlp.downloader.dash import DashSegmentsFD
from yt_dlp.downloader.hls import HlsFD
from yt_dlp.downloader.http import HttpFD
from yt_dlp.networking.exceptions import HTTPError
from yt_dlp.networking._urllib import HTTPHandler, ProxyHandler, RedirectHandler, UrllibRH
from yt_dlp.postprocessor.common import PostProcessor

from genie_pipeline.ingest.politeness import BOT_WALL, HostBackingOff, HostBackoff, retry_after_s

# downloaders that fetch through YoutubeDL.urlopen, hence through the guard
_OWN_DOWNLOADERS = (HttpFD, HlsFD, DashSegmentsFD)
# ffmpeg as a downloader may read no network protocol (merging is a postprocessor: unaffected)
_FFMPEG_OFFLINE = {"ffmpeg_i": ["-protocol_whitelist", "file,crypto,data"]}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
PEEK_BYTES = 64 * 1024  # of a 403 HTML page, searched for a bot wall
# the guard replaces this YoutubeDL attribute: a yt-dlp that renames it must fail here, closed,
# rather than download around the guard
if not isinstance(YoutubeDL.__dict__.get("_request_director"), functools.cached_property):
    raise ImportError("this yt-dlp has no YoutubeDL._request_director: the download guard cannot attach to it")


class Refused(OSError):
    """The guard stopped a download: `error_type` is BlockedAddress, Deadline, TooSlow,
    HostBackoff or ExternalDownloader. An OSError, so yt-dlp treats it as the network error it is."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


# ------------------------------------------------------------------------------ where
class AddressPolicy:
    """Which addresses a download may connect to: any global unicast address; link-local,
    private, loopback, unspecified, multicast and reserved ones only if `allow_private`, or if
    inside one of `networks` (CIDR strings). IPv4 addresses embedded in IPv6 ones (mapped,
    6to4, NAT64) are judged as the IPv4 address they reach."""

    def __init__(self, allow_private: bool = False, networks: list[str] | tuple = ()):
        self.allow_private = allow_private
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def allows(self, address: str) -> bool:
        raw = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
        ip = _reached(raw)
        if self.allow_private or any(a in n for n in self.networks for a in (raw, ip) if a.version == n.version):
            return True
        return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def _reached(ip):
    """The IPv4 address an IPv6 address stands for, if it embeds one."""
    if ip.version == 6:
        if ip.ipv4_mapped:
            return ip.ipv4_mapped
        if ip.sixtofour:
            return ip.sixtofour
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


# ------------------------------------------------------------------------------ the guard
class NetGuard:
    """One video's download: its address policy, its deadline (from creation), its pace and
    (optionally) the job-wide back-off of the hosts it talks to. `refusal` is the first thing
    refused, whatever yt-dlp made of the exception."""

    def __init__(self, policy: AddressPolicy, deadline_s: float, min_rate: float, window_s: float,
                 backoff: HostBackoff | None = None, max_bytes: int | None = None):
        self.policy, self.backoff = policy, backoff
        self.max_bytes = max_bytes  # of one response's body, counted as it is read (curl's --max-filesize)
        # called once, before the next request: the start of a download attempt waits its turn
        self.before_start: Callable[[], None] | None = None
        self.deadline_s, self.deadline = deadline_s, time.monotonic() + deadline_s
        self.min_rate, self.window_s = min_rate, window_s
        self.window_wait, self.window_bytes = 0.0, 0
        self.refusal: Refused | None = None
        self.walled: str | None = None  # a bot-wall page met (the address's trouble, not the video's)
        self.socket_class = type("GuardedSocket", (_Metered, socket.socket), {"guard": self})
        self.ssl_socket_class = type("GuardedSSLSocket", (_Metered, ssl.SSLSocket), {"guard": self})

    def refuse(self, error_type: str, message: str) -> Refused:
        err = Refused(error_type, message)
        self.refusal = self.refusal or err
        return err

    # where
    def check_url(self, url: str) -> None:
        """Refuse a URL whose host is or resolves to a forbidden address. A name that does not
        resolve here (or a URL that does not parse) is left to the connection step, or to the
        proxy that will resolve it."""
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname if parts.scheme in ("http", "https") else None
            infos = socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM) if host else []
        except (ValueError, OSError):
            return
        self._check(host, [info[4][0] for info in infos])

    def connect(self, address, timeout=None, source_address=None, *, trusted=frozenset()) -> socket.socket:
        """http.client's `_create_connection`: resolve, check every address, connect to a
        checked one. `trusted` hosts (the configured proxies) are not checked."""
        host, port = address
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        if host.lower() not in trusted:
            self._check(host, [info[4][0] for info in infos])
        err: OSError = OSError(f"no address for {host}")
        for family, kind, proto, _, sockaddr in infos:
            sock = self.socket_class(family, kind, proto)
            try:
                sock.settimeout(timeout if isinstance(timeout, (int, float)) else None)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                err = e
        raise err

    def _check(self, host: str, addresses: list[str]) -> None:
        for a in addresses:
            if not self.policy.allows(a):
                where = a if a == host else f"{host} ({a})"
                raise self.refuse("BlockedAddress", f"{where} is a private or internal address; see "
                                                    "download.allow_private_networks and download.allowed_networks")

    # whom, when
    def await_host(self, url: str) -> None:
        """Wait out the back-off of `url`'s host (Refused, HostBackoff, if it ends after the
        deadline), then, on an attempt's first request, for the attempt's turn (`before_start`)."""
        host = _hostname(url)
        if self.backoff is not None and host:
            try:
                self.backoff.wait(host, self.remaining())
            except HostBackingOff as e:
                raise self.refuse("HostBackoff", str(e)) from None
        turn, self.before_start = self.before_start, None
        if turn is not None:
            turn()

    def answered(self, url: str, error: HTTPError) -> None:
        """A strike for the host of `url` if `error` says slow down: a 429, or a 403 whose
        HTML page is a captcha or bot check (peeked, then replayed to yt-dlp)."""
        host = _hostname(url)
        if self.backoff is None or not host:
            return
        if error.status == 429:
            self.backoff.strike(host, "HTTP 429", retry_after_s(error.response.headers.get("Retry-After")))
        elif error.status == 403 and "html" in (error.response.headers.get("Content-Type") or "").lower():
            try:
                head = error.response.fp.read(PEEK_BYTES)
            except (OSError, http.client.HTTPException):
                return  # a page that cannot be read says nothing; yt-dlp meets the same error
            error.response.fp = _Replay(head, error.response.fp)
            if BOT_WALL.search(head.decode("utf-8", "replace")):
                self.walled = f"bot wall (HTTP 403 page) at {host}"
                self.backoff.strike(host, "bot wall (HTTP 403 page)",
                                    retry_after_s(error.response.headers.get("Retry-After")))

    # how long, how slow
    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def overdue(self) -> Refused | None:
        """The Deadline refusal (recorded) once the deadline has passed, else None."""
        return self._late() if self.remaining() <= 0 else None

    def cap(self, timeout: float | None) -> float:
        """`timeout` shortened to the deadline; Refused once the deadline has passed."""
        left = self.remaining()
        if left <= 0:
            raise self._late()
        return left if timeout is None else min(timeout, left)

    def _late(self) -> Refused:
        return self.refuse("Deadline", f"download.deadline_s ({self.deadline_s:g} s) passed before the download finished")

    def waited(self, seconds: float, nbytes: int) -> None:
        """Account one read; Refused when a full window of waiting brought too few bytes."""
        self.window_wait += seconds
        self.window_bytes += nbytes
        if self.min_rate and self.window_wait >= self.window_s:
            rate = self.window_bytes / self.window_wait
            if rate < self.min_rate:
                raise self.refuse("TooSlow", f"{rate:.1f} bytes/s over {self.window_wait:.1f} s of waiting < "
                                             f"download.min_rate_bytes_s {self.min_rate:g}")
            self.window_wait, self.window_bytes = 0.0, 0

    def body_read(self, total: int) -> None:
        """Account a response body read so far; Refused (TooLarge) past `max_bytes`, whatever
        the server declared (a body without Content-Length is bounded only here)."""
        if self.max_bytes is not None and total > self.max_bytes:
            raise self.refuse("TooLarge", f"the server sent more than download.max_filesize_mb "
                                          f"({self.max_bytes} bytes) in one response; stopped there")

    def window_left(self) -> float:
        return self.window_s - self.window_wait if self.min_rate else float("inf")


def _hostname(url: str) -> str | None:
    try:
        return urllib.parse.urlsplit(url).hostname
    except ValueError:
        return None


class _Replay(io.IOBase):
    """A response body whose first bytes were read already: those, then the rest."""

    def __init__(self, head: bytes, rest):
        super().__init__()
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def read(self, amt: int | None = None) -> bytes:
        if not self.head:
            return self.rest.read(amt)
        whole = amt is None or amt < 0
        n = len(self.head) if whole else amt
        data, self.head = self.head[:n], self.head[n:]
        return data + self.rest.read() if whole else data

    def close(self) -> None:
        self.rest.close()
        super().close()


def _cap_body(response, guard: NetGuard, chunk: int = 1 << 16):
    """`response` with its body counted as it is read (`NetGuard.body_read`); a whole-body read
    goes in chunks, so a page without Content-Length cannot fill memory before the count stops
    it. The read is replaced on the instance: yt-dlp's adapter keeps its own checks of its fp."""
    read, total = response.read, 0

    def counted(amt: int | None = None) -> bytes:
        nonlocal total
        if amt is not None and amt >= 0:
            data = read(amt)
            total += len(data)
            guard.body_read(total)
            return data
        parts = []
        while data := counted(chunk):
            parts.append(data)
        return b"".join(parts)

    response.read = counted
    return response


class _Metered:
    """A socket (plain or TLS) whose waits end at its guard's deadline and pace windows.
    `settimeout` from http.client sets the per-operation timeout, which still applies."""

    guard: NetGuard
    io_timeout: float | None = None

    def settimeout(self, value):
        self.io_timeout = value
        super().settimeout(self.guard.cap(value))  # a TLS handshake runs under this

    def gettimeout(self):
        return self.io_timeout

    def sendall(self, data, *args):
        super().settimeout(self.guard.cap(self.io_timeout))
        return super().sendall(data, *args)

    def recv_into(self, buffer, *args):
        start = time.monotonic()
        while True:
            io_left = None if self.io_timeout is None else self.io_timeout - (time.monotonic() - start)
            if io_left is not None and io_left <= 0:
                raise TimeoutError("timed out")
            limit = min(self.guard.cap(io_left), self.guard.window_left())
            super().settimeout(max(limit, 0.001))
            t0 = time.monotonic()
            try:
                n = super().recv_into(buffer, *args)
            except TimeoutError:
                self.guard.waited(time.monotonic() - t0, 0)
                continue  # a guard limit or the socket's own timeout: the next turn tells which
            self.guard.waited(time.monotonic() - t0, n)
            return n


# ------------------------------------------------------------------------------ yt-dlp glue
class _GuardedHTTPHandler(HTTPHandler):
    def __init__(self, guard: NetGuard, trusted: frozenset, **kwargs):
        super().__init__(**kwargs)
        self.connect = functools.partial(guard.connect, trusted=trusted)

    def _connections(self, base, req):
        """yt-dlp's connection factory, with the guard's connect (a SOCKS class ignores it)."""
        conn_class = self._make_conn_class(base, req)

        def make(*args, **kwargs):
            conn = conn_class(*args, **kwargs)
            conn._create_connection = self.connect
            if self._source_address is not None:
                conn.source_address = (self._source_address, 0)
            return conn
        return make

    def http_open(self, req):
        return self.do_open(self._connections(http.client.HTTPConnection, req), req)

    def https_open(self, req):
        return self.do_open(self._connections(http.client.HTTPSConnection, req), req, context=self._context)


class _GuardedRedirectHandler(RedirectHandler):
    def __init__(self, guard: NetGuard):
        self.guard = guard

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        self.guard.check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class GuardedRH(UrllibRH):
    """yt-dlp's urllib request handler, every connection through `guard`. No FTP (it would
    connect around the guard); file: URLs only where yt-dlp's enable_file_urls asks for them."""

    def __init__(self, *, guard: NetGuard, **kwargs):
        super().__init__(**kwargs)
        self._SUPPORTED_URL_SCHEMES = tuple(s for s in self._SUPPORTED_URL_SCHEMES if s != "ftp")
        self.guard = guard
        self.trusted = frozenset(urllib.parse.urlsplit(u).hostname for k, u in self.proxies.items() if u and k != "no")

    def _make_sslcontext(self, legacy_ssl_support=None):
        context = super()._make_sslcontext(legacy_ssl_support)
        context.sslsocket_class = self.guard.ssl_socket_class
        return context

    def _create_instance(self, proxies, cookiejar, legacy_ssl_support=None):
        opener = urllib.request.OpenerDirector()
        for handler in (
            ProxyHandler(proxies),
            _GuardedHTTPHandler(self.guard, self.trusted, debuglevel=int(bool(self.verbose)),
                                context=self._make_sslcontext(legacy_ssl_support=legacy_ssl_support),
                                source_address=self.source_address),
            urllib.request.HTTPCookieProcessor(cookiejar), urllib.request.DataHandler(),
            urllib.request.UnknownHandler(), urllib.request.HTTPDefaultErrorHandler(),
            urllib.request.HTTPErrorProcessor(), _GuardedRedirectHandler(self.guard),
        ):
            opener.add_handler(handler)
        if self.enable_file_urls:
            opener.add_handler(urllib.request.FileHandler())
        opener.addheaders = []  # as yt-dlp: no urllib default User-Agent
        return opener

    def _send(self, request):
        self.guard.check_url(request.url)
        self.guard.await_host(request.url)
        try:
            response = super()._send(request)
        except HTTPError as e:
            self.guard.answered(request.url, e)
            raise
        return _cap_body(response, self.guard)


class _OwnDownloadersOnly(PostProcessor):
    """Runs before a download: refuses a format yt-dlp would hand to another program."""

    def __init__(self, downloader, guard: NetGuard):
        super().__init__(downloader)
        self.guard = guard

    def run(self, info):
        params = self._downloader.params
        checks = [(info, get_suitable_downloader(dict(info), params))]
        checks += [(f, get_suitable_downloader(dict(f), params)) for f in info.get("requested_formats") or ()]
        for fmt, fd in checks:
            if fd is None and fmt is info:  # formats merged after separate downloads: each checked next
                continue
            if fd not in _OWN_DOWNLOADERS:
                name = getattr(fd, "__name__", "ffmpeg")
                raise self.guard.refuse("ExternalDownloader", f"format {fmt.get('format_id')} ({fmt.get('protocol')}) "
                                                              f"would be downloaded by {name}, outside the download guard")
        return [], info


class _GuardedYoutubeDL(YoutubeDL):
    def __init__(self, params: dict, guard: NetGuard):
        self.guard = guard
        super().__init__(params)
        self.add_post_processor(_OwnDownloadersOnly(self, guard), when="before_dl")

    @functools.cached_property
    def _request_director(self):
        return self.build_request_director([functools.partial(GuardedRH, guard=self.guard)])

    def report_warning(self, message, *args, **kwargs):
        # hlsnative met a feature it lacks and is about to run ffmpeg on the stream: say so
        # here (ffmpeg could not fetch anything anyway, see _FFMPEG_OFFLINE)
        if "delegated to ffmpeg" in message:
            raise self.guard.refuse("ExternalDownloader", f"{message} (its requests would bypass the download guard)")
        super().report_warning(message, *args, **kwargs)


def guarded_ydl(params: dict, guard: NetGuard) -> YoutubeDL:
    """A YoutubeDL (use it as a context manager) under `guard`; `params` as for YoutubeDL.
    HLS is downloaded natively when yt-dlp could choose."""
    return _GuardedYoutubeDL({"hls_prefer_native": True, **params, "external_downloader_args": _FFMPEG_OFFLINE}, guard)
