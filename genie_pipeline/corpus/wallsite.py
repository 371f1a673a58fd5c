"""A video site that blocks like the real ones, here: the sample-corpus server with walls per
client address, videos that need a token, a slow stream; and local forward proxies, each
leaving from its own loopback address, so that identities differ as they do across proxies.

    WallSite(corpus_dir, rules=WallRules(limit=6, window_s=10, cooldown_s=5))
    LoopbackProxy("127.0.0.7")        # forwards http:// requests, connecting from 127.0.0.7

Rules (`WallRules`), per client address (what the site sees: a proxy's source address):
- more than `limit` requests within `window_s` seconds put the address behind a wall for
  `cooldown_s`: every request answers `status` (403 or 429) with a bot-check page ("Sign in
  to confirm you're not a bot"), as YouTube does; requests made while walled do not count,
  and the wall lifts by itself after the cool-down;
- `token_paths`: videos served only with `?pot=TOKEN`, the token `/pot?path=PATH` gives
  (a stand-in for a proof-of-origin token provider); without it a plain 403;
- `/slow/<path>`: the file at `slow_bytes_s` bytes per second.

`walls_hit` counts wall answers per address, `served` requests let through per address;
`log` holds (monotonic time, address, path, walled) of every request.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import http.client
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from genie_pipeline.corpus.serve import CorpusServer, _HTTPServer

WALL_PAGE = ("<!DOCTYPE html><html><head><title>Before you continue</title></head><body>"
             "<h1>Sign in to confirm you're not a bot</h1><p>Our systems have detected unusual traffic "
             "from your network.</p></body></html>").encode()
_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade", "proxy-authenticate"}


@dataclass
class WallRules:
    limit: int = 30  # requests per window per client address
    window_s: float = 60.0
    cooldown_s: float = 60.0
    status: int = 403  # 403 (a bot-check page) or 429
    token_paths: frozenset = frozenset()  # URL paths, e.g. {"/videos/gc0003.mp4"}
    slow_bytes_s: int = 32 * 1024
    secret: bytes = field(default=b"wallsite", repr=False)


class WallSite(CorpusServer):
    """The corpus server (corpus/serve.py) behind `rules`; see the module doc."""

    def __init__(self, corpus_dir, rules: WallRules | None = None, **kw):
        super().__init__(corpus_dir, **kw)
        self.rules = rules or WallRules()
        self._seen: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._walled_until: dict[str, float] = {}
        self.walls_hit: collections.Counter = collections.Counter()
        self.walls_raised: collections.Counter = collections.Counter()
        self.served: collections.Counter = collections.Counter()
        self.log: list[tuple[float, str, str, bool]] = []
        self._wall_lock = threading.Lock()

    def pot_token(self, path: str) -> str:
        return hmac.new(self.rules.secret, path.encode(), hashlib.sha256).hexdigest()[:32]

    def walled(self, address: str, now: float | None = None) -> bool:
        """Count a request from `address`; whether it meets the wall."""
        r, now = self.rules, time.monotonic() if now is None else now
        with self._wall_lock:
            if self._walled_until.get(address, 0) > now:
                self.walls_hit[address] += 1
                return True
            seen = self._seen[address]
            seen.append(now)
            while seen and seen[0] <= now - r.window_s:
                seen.popleft()
            if len(seen) > r.limit:
                self._walled_until[address] = now + r.cooldown_s
                seen.clear()
                self.walls_hit[address] += 1
                self.walls_raised[address] += 1
                return True
            self.served[address] += 1
            return False

    def admit(self, handler, path: str, query: dict, head: bool) -> bool:
        walled = self.walled(handler.client_address[0])
        with self._wall_lock:
            self.log.append((time.monotonic(), handler.client_address[0], path, walled))
        if walled:
            handler._send_bytes(self.rules.status, WALL_PAGE, "text/html; charset=utf-8", head)
            return False
        if path == "/pot":
            asked = (query.get("path") or [""])[0]
            handler._send_bytes(200, self.pot_token(asked).encode(), "text/plain", head)
            return False
        if path in self.rules.token_paths and not hmac.compare_digest((query.get("pot") or [""])[0],
                                                                      self.pot_token(path)):
            handler._send_bytes(403, b"a proof-of-origin token is required\n", "text/plain", head)
            return False
        if path.startswith("/slow/"):
            self._slow(handler, path[len("/slow"):], head)
            return False
        return True

    def _slow(self, handler, rel: str, head: bool) -> None:
        target = self.resolve(rel)
        if target is None:
            return handler._error(404, head)
        data = target.read_bytes()
        handler.send_response(200)
        handler.send_header("Content-Type", "video/mp4")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if head:
            return
        step = max(1, self.rules.slow_bytes_s // 10)
        for i in range(0, len(data), step):
            if self._stopping.wait(0.1):
                return
            handler.wfile.write(data[i:i + step])


# ------------------------------------------------------------------------------ proxies
class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self._forward(head=False)

    def do_HEAD(self):
        self._forward(head=True)

    def _forward(self, head: bool) -> None:
        proxy: LoopbackProxy = self.server.proxy  # type: ignore[attr-defined]
        if proxy.credentials and self.headers.get("Proxy-Authorization") != proxy.expected_auth():
            return self._plain(407, b"proxy authentication required\n", {"Proxy-Authenticate": "Basic"})
        parts = urllib.parse.urlsplit(self.path)
        if parts.scheme != "http" or not parts.hostname:
            return self._plain(400, b"absolute http:// URLs only\n")
        with proxy.lock:
            proxy.requests += 1
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30,
                                          source_address=(proxy.source, 0))
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, parts.path + ("?" + parts.query if parts.query else ""), headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        except OSError as e:
            return self._plain(502, f"bad gateway: {type(e).__name__}\n".encode())
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _plain(self, code: int, body: bytes, extra: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class LoopbackProxy:
    """An HTTP forward proxy on 127.0.0.1 whose outgoing connections leave from `source`
    (any 127.0.0.x: the site sees that address). `credentials` ("user:password") makes it
    ask for Proxy-Authorization; `requests` counts forwarded requests."""

    def __init__(self, source: str, credentials: str | None = None):
        self.source, self.credentials = source, credentials
        self.requests = 0
        self.lock = threading.Lock()
        self._httpd = None

    def expected_auth(self) -> str:
        import base64

        return "Basic " + base64.b64encode((self.credentials or "").encode()).decode()

    def url(self) -> str:
        auth = f"{self.credentials}@" if self.credentials else ""
        return f"http://{auth}127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> "LoopbackProxy":
        self._httpd = _HTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self._httpd.proxy = self  # type: ignore[attr-defined]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LoopbackProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
