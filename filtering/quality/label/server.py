"""HTTP server of the labelling page (standard library only; connections are handled by
gate.py, which bounds threads, connections and the time a client may take).

Routes
    GET  /                     the page (static HTML; no data is ever templated into it)
    GET  /page.js, /page.css   its script and style (a strict CSP allows nothing else)
    GET  /api/state?labeller=  sample, the labeller's labels, progress counts
    POST /api/label            {"key", "label": good|bad|skip, "labeller"} -> saved, then answered
    POST /api/undo             {"labeller"} -> undoes that labeller's latest action from this browser
    GET  /clip/KEY.mp4         the clip (HTTP Range supported, so the video element can seek/loop)
    GET  /strip/KEY.png        K sampled frames side by side (fallback when a clip cannot play)

Security: bound to 127.0.0.1 unless told otherwise; any other address needs a token (sent
once as ?token=..., then kept in an HttpOnly SameSite=Strict cookie). Without a token the
Host header must name the loopback (a DNS-rebinding page cannot talk to the server). POSTs
need a JSON body and a custom header, which a cross-site form cannot send. Titles reach
the page only as JSON and are put in the DOM with textContent.

Sessions: loading the page (or /api/state) gives the browser a random session cookie; each
label records it, and an undo reaches only the labels its own session gave (403 for another
browser's), so naming someone in /api/undo does not undo their work. A POST without a
session is refused.

Limits: a POST body is a JSON object of at most MAX_BODY bytes announced by Content-Length;
no length, a negative, non-numeric or too large one, or chunked encoding is answered before
a byte of the body is read, and the connection closed. JSON nested past the recursion limit
is a 400. In folder mode a clip whose real path lies outside the folder (a symlink out of
it) is neither sampled nor served.
"""
from __future__ import annotations

import getpass
import hmac
import io
import ipaddress
import json
import logging
import re
import secrets
import sys
import threading
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.label.gate import GatedHTTPServer, RequestHandler
from genie_pipeline.filtering.quality.label.sample import stratified_sample
from genie_pipeline.filtering.quality.label.store import VALID, LabelStore
from genie_pipeline.shards.reader import ClipIndex

log = logging.getLogger(__name__)

COOKIE = "genie_label_token"
SESSION = "genie_label_session"
SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
MAX_BODY = 65536
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"/": ("page.html", "text/html; charset=utf-8"), "/index.html": ("page.html", "text/html; charset=utf-8"),
          "/page.js": ("page.js", "text/javascript; charset=utf-8"), "/page.css": ("page.css", "text/css; charset=utf-8")}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a Host header ("127.0.0.1:8765", "[::1]:8765", "localhost")."""
    h = header.strip()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class LabelApp:
    """State shared by the request handlers: the clips, the label store, the sample."""

    def __init__(self, index: ClipIndex, store: LabelStore, target: int, token: str | None = None,
                 labeller_default: str = "", strip_frames: int = 4):
        self.index, self.store, self.target = index, store, target
        self.token = token or None
        self.labeller_default = labeller_default
        self.strip_frames = strip_frames
        self.sample_keys: list[str] = []
        self.clips: list[dict[str, Any]] = []  # the sample as the page gets it
        self._root = Path(index.root).resolve()
        self._strip_cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def prepare_sample(self, seed: int = 0, resample: bool = False) -> list[str]:
        """The stored sample when it was drawn for this input and target, else a new one."""
        spec = json.dumps({"input": str(self._root), "target": self.target, "seed": seed})
        old = self.store.sample()
        if old and not resample and self.store.get_meta("sample_spec") == spec:
            rows = [r for r in old if self.servable(r["key"])]
            if rows:
                return self._use_sample(rows)
        picked = stratified_sample([c for c in self.index.clips.values() if self.servable(c.key)], self.target, seed)
        self.store.upsert_clips(picked)
        self.store.set_sample([c.key for c in picked])
        self.store.set_meta("sample_spec", spec)
        return self._use_sample(self.store.sample())

    def _use_sample(self, rows: list[dict[str, Any]]) -> list[str]:
        self.clips = [{k: r[k] for k in ("key", "title", "source", "video_id", "stratum")} for r in rows]
        self.sample_keys = [r["key"] for r in rows]
        return self.sample_keys

    def state(self, labeller: str) -> dict[str, Any]:
        return {"target": self.target, "labeller_default": self.labeller_default, "clips": self.clips,
                "mine": self.store.labels_of(labeller), "others": self.store.others(labeller),
                "counts": self.store.counts(labeller)}

    def _real_path(self, key: str) -> Path | None:
        """A file clip's real path when it lies inside the folder, else None."""
        real = Path(self.index[key].path).resolve()
        return real if real.is_relative_to(self._root) else None

    def servable(self, key: str) -> bool:
        """A clip that may be shown: any clip of a tar; a file only when its real path is in
        the folder (never a symlink out of it, to /etc/passwd or the like)."""
        if key not in self.index:
            return False
        return self.index[key].member is not None or self._real_path(key) is not None

    def read(self, key: str) -> bytes | None:
        """The clip's bytes, or None when it is not one to serve."""
        if key not in self.index:
            return None
        if self.index[key].member is not None:
            return self.index.read(key)
        real = self._real_path(key)  # read the checked path, not the link again
        return real.read_bytes() if real is not None else None

    def strip(self, key: str) -> bytes | None:
        with self._lock:
            if key in self._strip_cache:
                return self._strip_cache[key]
        clip = self.read(key)
        if clip is None:
            return None
        import numpy as np
        from PIL import Image

        from genie_pipeline.filtering.quality.frames import sample_frames

        frames = sample_frames(clip, self.strip_frames)
        buf = io.BytesIO()
        Image.fromarray(np.concatenate(list(frames), axis=1)).save(buf, format="PNG")
        data = buf.getvalue()
        with self._lock:
            if len(self._strip_cache) > 256:
                self._strip_cache.clear()
            self._strip_cache[key] = data
        return data


class Rejected(Exception):
    """A request answered with `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Handler(RequestHandler):
    server_version = "genie-label"
    app: LabelApp  # set on the subclass made by make_server
    session: str | None = None
    set_cookies: tuple[str, ...] | list[str] = ()

    def log_message(self, fmt, *args):  # quiet: requests go to the debug log
        log.debug("%s %s", self.address_string(), fmt % args)

    # ------------------------------------------------------------------------ plumbing
    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        for cookie in self.set_cookies:
            self.send_header("Set-Cookie", cookie)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def _error(self, status: int, msg: str) -> None:
        self._json({"error": msg}, status)

    def _cookies(self) -> dict[str, str]:
        out = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            out.setdefault(name, value)
        return out

    def _authorized(self, query: dict[str, list[str]], cookies: dict[str, str]) -> tuple[bool, bool]:
        """(allowed, token came in the query string: set the cookie)."""
        app = self.app
        if app.token is None:
            return is_loopback(host_name(self.headers.get("Host") or "")), False
        given = self.headers.get("X-Genie-Token") or cookies.get(COOKIE)
        if given and hmac.compare_digest(given.encode(), app.token.encode()):
            return True, False
        qt = (query.get("token") or [""])[0]
        if qt and hmac.compare_digest(qt.encode(), app.token.encode()):
            return True, True
        return False, False

    def _route(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        cookies = self._cookies()
        self.set_cookies = []
        session = cookies.get(SESSION, "")
        self.session = session if SESSION_RE.match(session) else None
        ok, set_cookie = self._authorized(query, cookies)
        if not ok:
            self._error(HTTPStatus.FORBIDDEN, "forbidden: a token is required (open the URL printed by the server)"
                        if self.app.token else "forbidden: unexpected Host header")
            return None
        if set_cookie:
            self.set_cookies.append(f"{COOKIE}={self.app.token}; HttpOnly; SameSite=Strict; Path=/")
        return url, query

    def _start_session(self) -> None:
        """Give a browser that has none its session (kept a year: undo works after a restart)."""
        if self.session is None:
            self.session = secrets.token_urlsafe(24)
            self.set_cookies.append(f"{SESSION}={self.session}; HttpOnly; SameSite=Strict; Path=/; "
                                    "Max-Age=31536000")

    # ------------------------------------------------------------------------ handlers
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        r = self._route()
        if r is None:
            return
        url, query = r
        path = url.path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                body = resources.files("genie_pipeline.filtering.quality.label").joinpath(name).read_bytes()
                if name == "page.html":
                    self._start_session()
                self._send(200, body, ctype, {"Cache-Control": "no-cache"})
            elif path == "/api/state":
                self._start_session()
                self._json(self.app.state((query.get("labeller") or [""])[0].strip()))
            elif path.startswith("/clip/") and path.endswith(".mp4"):
                self._clip(path[len("/clip/"):-4])
            elif path.startswith("/strip/") and path.endswith(".png"):
                key = path[len("/strip/"):-4]
                png = self.app.strip(key) if KEY_RE.match(key) else None
                if png is None:
                    return self._error(404, "no such clip")
                self._send(200, png, "image/png", {"Cache-Control": "max-age=3600"})
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif path == "/healthz":
                self._json({"ok": True})
            else:
                self._error(404, "not found")
        except Exception as e:  # noqa: BLE001
            log.exception("GET %s failed", path)
            self._error(500, f"{type(e).__name__}: {e}")

    def _clip(self, key: str) -> None:
        data = self.app.read(key) if KEY_RE.match(key) else None
        if data is None:
            return self._error(404, "no such clip")
        total = len(data)
        rng = self.headers.get("Range")
        m = re.match(r"^bytes=(\d*)-(\d*)$", rng.strip()) if rng else None
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "max-age=3600"}
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), total - 1) if m.group(2) else total - 1
            else:
                start, end = max(0, total - int(m.group(2))), total - 1
            if start >= total or start > end:
                return self._send(416, b"", "video/mp4", {"Content-Range": f"bytes */{total}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            return self._send(206, data[start:end + 1], "video/mp4", headers)
        self._send(200, data, "video/mp4", headers)

    def _read_json(self) -> dict[str, Any]:
        """The body: a JSON object read by its Content-Length. Rejected before a byte is read
        when the length is missing, malformed or over MAX_BODY."""
        if self.headers.get("Transfer-Encoding"):
            raise Rejected(411, "send the body with a Content-Length (Transfer-Encoding is not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise Rejected(411, "a Content-Length is required")
        length = length.strip()
        if not re.fullmatch(r"[0-9]+", length):
            raise Rejected(400, f"bad request: Content-Length {length[:40]!r} is not a byte count")
        if len(length) > 12 or int(length) > MAX_BODY:
            raise Rejected(413, f"request too large: at most {MAX_BODY} bytes")
        data = self.rfile.read(int(length))
        if len(data) < int(length):
            raise Rejected(400, "bad request: the body is shorter than its Content-Length")
        try:
            body = json.loads(data or b"{}")
        except RecursionError:
            raise Rejected(400, "bad request: JSON nested too deeply") from None
        except ValueError as e:  # not JSON, or not UTF-8
            raise Rejected(400, f"bad request: {e}") from None
        if not isinstance(body, dict):
            raise Rejected(400, "bad request: the body must be a JSON object")
        return body

    def do_POST(self):
        # until the whole body is read, an answer leaves some of it unread on the connection
        keep_alive, self.close_connection = not self.close_connection, True
        r = self._route()
        if r is None:
            return
        path = r[0].path
        try:
            if self.headers.get("X-Genie-Label") != "1" or not (self.headers.get("Content-Type") or "").startswith("application/json"):
                raise Rejected(403, "forbidden: POST needs Content-Type application/json and X-Genie-Label: 1")
            body = self._read_json()
            self.close_connection = not keep_alive
            if self.session is None:
                raise Rejected(403, "forbidden: no session (reload the page)")
            labeller = str(body.get("labeller") or "").strip()
            if not labeller or len(labeller) > 100:
                raise Rejected(400, "labeller name must be 1-100 characters")
            if path == "/api/label":
                self._label(body, labeller)
            elif path == "/api/undo":
                self._undo(labeller)
            else:
                self._error(404, "not found")
        except Rejected as e:
            self._error(e.status, str(e))
        except Exception as e:  # noqa: BLE001
            log.exception("POST %s failed", path)
            self._error(500, f"{type(e).__name__}: {e}")

    def _label(self, body: dict[str, Any], labeller: str) -> None:
        key, label = str(body.get("key") or ""), body.get("label")
        if key not in self.app.index:
            raise Rejected(404, f"no such clip: {key[:200]}")
        if label not in VALID:
            raise Rejected(400, f"label must be one of {', '.join(VALID)}")
        eid = self.app.store.add(key, label, labeller, session=self.session)
        self._json({"ok": True, "id": eid, "key": key, "label": label, "counts": self.app.store.counts(labeller)})

    def _undo(self, labeller: str) -> None:
        try:
            undone = self.app.store.undo(labeller, session=self.session)
        except PermissionError as e:
            raise Rejected(403, f"forbidden: {e}") from None
        current = self.app.store.label_of(undone["key"], labeller) if undone else None
        self._json({"ok": True, "undone": undone, "current": current, "counts": self.app.store.counts(labeller)})


def make_server(app: LabelApp, host: str = "127.0.0.1", port: int = 8765, *, timeout: float = 30.0,
                workers: int = 16, max_connections: int = 512) -> GatedHTTPServer:
    """The server for `app` (not yet serving). A client gets `timeout` seconds to send each
    whole request; `workers` threads answer; at most `max_connections` are open (gate.py)."""
    if not is_loopback(host) and not app.token:
        raise PermissionError(f"binding {host} exposes the page beyond this machine: give --token "
                              "(or set GENIE_LABEL_TOKEN)")
    handler = type("BoundHandler", (Handler,), {"app": app})
    return GatedHTTPServer((host, port), handler, timeout=timeout, workers=workers,
                           max_connections=max_connections, max_body=MAX_BODY)


def default_labeller() -> str:
    """The login name, shown on the page as the labeller until someone types another."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 — no login name (a container without a passwd entry)
        return ""


def serve_labels(index: ClipIndex, store: LabelStore, *, host: str, port: int, token: str | None, target: int,
                 seed: int, resample: bool, labeller: str) -> None:
    """Serve the labelling page for a sample of `index`'s clips until Ctrl-C. A host other
    than the loopback needs a token (QualityError naming --token otherwise); an address that
    cannot be bound is a QualityError naming --host/--port."""
    app = LabelApp(index, store, target=target, token=token, labeller_default=labeller)
    keys = app.prepare_sample(seed=seed, resample=resample)
    try:
        srv = make_server(app, host, port)
    except PermissionError as e:
        raise QualityError(f"--token: {e}") from None
    except OSError as e:  # address in use, or not an address of this machine
        raise QualityError(f"--host/--port: cannot listen on {host}:{port}: {e.strerror or e}") from None
    bound, bound_port = srv.server_address[:2]
    shown = f"[{bound}]" if ":" in bound else bound
    url = f"http://{shown}:{bound_port}/" + (f"?token={token}" if token else "")
    print(f"labelling {len(keys)} clips of {len(index)} from {index.root}; labels in {store.path}")
    print(f"open {url}  (Ctrl-C to stop)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        srv.server_close()
