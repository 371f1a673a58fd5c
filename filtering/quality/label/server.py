"""HTTP server of the labelling page (standard library only: ThreadingHTTPServer).

Routes
    GET  /                     the page (static HTML; no data is ever templated into it)
    GET  /page.js, /page.css   its script and style (a strict CSP allows nothing else)
    GET  /api/state?labeller=  sample, the labeller's labels, progress counts
    POST /api/label            {"key", "label": good|bad|skip, "labeller"} -> saved, then answered
    POST /api/undo             {"labeller"} -> undoes that labeller's latest action
    GET  /clip/KEY.mp4         the clip (HTTP Range supported, so the video element can seek/loop)
    GET  /strip/KEY.png        K sampled frames side by side (fallback when a clip cannot play)

Security: bound to 127.0.0.1 unless told otherwise; any other address needs a token (sent
once as ?token=..., then kept in an HttpOnly SameSite=Strict cookie). Without a token the
Host header must name the loopback (a DNS-rebinding page cannot talk to the server). POSTs
need a JSON body and a custom header, which a cross-site form cannot send. Titles reach
the page only as JSON and are put in the DOM with textContent.
"""
from __future__ import annotations

import getpass
import hmac
import io
import ipaddress
import json
import logging
import re
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.label.sample import stratified_sample
from genie_pipeline.filtering.quality.label.store import VALID, LabelStore
from genie_pipeline.filtering.quality.labels import label_counts
from genie_pipeline.shards.reader import ClipIndex

log = logging.getLogger(__name__)

COOKIE = "genie_label_token"
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
        self._strip_cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def prepare_sample(self, seed: int = 0, resample: bool = False) -> list[str]:
        """The stored sample when it was drawn for this input and target, else a new one."""
        spec = json.dumps({"input": str(Path(self.index.root).resolve()), "target": self.target, "seed": seed})
        old = self.store.sample()
        if old and not resample and self.store.get_meta("sample_spec") == spec:
            keys = [r["key"] for r in old if r["key"] in self.index]
            if keys:
                self.sample_keys = keys
                return keys
        picked = stratified_sample(list(self.index.clips.values()), self.target, seed)
        self.store.upsert_clips(picked)
        self.store.set_sample([c.key for c in picked])
        self.store.set_meta("sample_spec", spec)
        self.sample_keys = [c.key for c in picked]
        return self.sample_keys

    def state(self, labeller: str) -> dict[str, Any]:
        sample = self.store.sample()
        cur = self.store.current_labels()
        mine = {e["key"]: e["label"] for e in cur if e["labeller"] == labeller}
        others = sorted({e["key"] for e in cur if e["labeller"] != labeller and e["label"] != "skip"})
        return {"target": self.target, "labeller_default": self.labeller_default,
                "clips": [{k: r[k] for k in ("key", "title", "source", "video_id", "stratum")} for r in sample],
                "mine": mine, "others": others, "counts": self.counts(labeller)}

    def counts(self, labeller: str) -> dict[str, Any]:
        return label_counts(self.store.current_labels(), labeller)

    def strip(self, key: str) -> bytes:
        with self._lock:
            if key in self._strip_cache:
                return self._strip_cache[key]
        import numpy as np
        from PIL import Image

        from genie_pipeline.filtering.quality.frames import sample_frames

        frames = sample_frames(self.index.read(key), self.strip_frames)
        buf = io.BytesIO()
        Image.fromarray(np.concatenate(list(frames), axis=1)).save(buf, format="PNG")
        data = buf.getvalue()
        with self._lock:
            if len(self._strip_cache) > 256:
                self._strip_cache.clear()
            self._strip_cache[key] = data
        return data


class Handler(BaseHTTPRequestHandler):
    server_version = "genie-label"
    protocol_version = "HTTP/1.1"
    app: LabelApp  # set on the subclass made by make_server

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
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json",
                   {"Cache-Control": "no-store", **(headers or {})})

    def _error(self, status: int, msg: str) -> None:
        self._json({"error": msg}, status)

    def _authorized(self, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """(allowed, token came in the query string: set the cookie)."""
        app = self.app
        if app.token is None:
            return is_loopback(host_name(self.headers.get("Host") or "")), False
        given = self.headers.get("X-Genie-Token")
        if not given:
            for part in (self.headers.get("Cookie") or "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    given = value
        if given and hmac.compare_digest(given.encode(), app.token.encode()):
            return True, False
        qt = (query.get("token") or [""])[0]
        if qt and hmac.compare_digest(qt.encode(), app.token.encode()):
            return True, True
        return False, False

    def _route(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        ok, set_cookie = self._authorized(query)
        if not ok:
            self._error(HTTPStatus.FORBIDDEN, "forbidden: a token is required (open the URL printed by the server)"
                        if self.app.token else "forbidden: unexpected Host header")
            return None
        return url, query, set_cookie

    # ------------------------------------------------------------------------ handlers
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        r = self._route()
        if r is None:
            return
        url, query, set_cookie = r
        path = url.path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                body = resources.files("genie_pipeline.filtering.quality.label").joinpath(name).read_bytes()
                headers = {"Cache-Control": "no-cache"}
                if set_cookie:
                    headers["Set-Cookie"] = f"{COOKIE}={self.app.token}; HttpOnly; SameSite=Strict; Path=/"
                self._send(200, body, ctype, headers)
            elif path == "/api/state":
                labeller = (query.get("labeller") or [""])[0].strip()
                self._json(self.app.state(labeller))
            elif path.startswith("/clip/") and path.endswith(".mp4"):
                self._clip(path[len("/clip/"):-4])
            elif path.startswith("/strip/") and path.endswith(".png"):
                key = path[len("/strip/"):-4]
                if not KEY_RE.match(key) or key not in self.app.index:
                    return self._error(404, "no such clip")
                self._send(200, self.app.strip(key), "image/png", {"Cache-Control": "max-age=3600"})
            elif path == "/favicon.ico":
                self._send(204, b"", "image/x-icon")
            elif path == "/healthz":
                self._json({"ok": True})
            else:
                self._error(404, "not found")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001
            log.exception("GET %s failed", path)
            self._error(500, f"{type(e).__name__}: {e}")

    def _clip(self, key: str) -> None:
        if not KEY_RE.match(key) or key not in self.app.index:
            return self._error(404, "no such clip")
        data = self.app.index.read(key)
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

    def do_POST(self):
        r = self._route()
        if r is None:
            return
        url, _, _ = r
        if self.headers.get("X-Genie-Label") != "1" or not (self.headers.get("Content-Type") or "").startswith("application/json"):
            return self._error(403, "forbidden: POST needs Content-Type application/json and X-Genie-Label: 1")
        try:
            n = int(self.headers.get("Content-Length") or 0)
            if n > 65536:
                return self._error(413, "request too large")
            body = json.loads(self.rfile.read(n) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
        except (ValueError, json.JSONDecodeError) as e:
            return self._error(400, f"bad request: {e}")
        labeller = str(body.get("labeller") or "").strip()
        if not labeller or len(labeller) > 100:
            return self._error(400, "labeller name must be 1-100 characters")
        try:
            if url.path == "/api/label":
                key, label = str(body.get("key") or ""), body.get("label")
                if key not in self.app.index:
                    return self._error(404, f"no such clip: {key[:200]}")
                if label not in VALID:
                    return self._error(400, f"label must be one of {', '.join(VALID)}")
                eid = self.app.store.add(key, label, labeller)
                self._json({"ok": True, "id": eid, "key": key, "label": label,
                            "counts": self.app.counts(labeller)})
            elif url.path == "/api/undo":
                undone = self.app.store.undo(labeller)
                current = None
                if undone:
                    mine = [e for e in self.app.store.current_labels(labeller) if e["key"] == undone["key"]]
                    current = mine[0]["label"] if mine else None
                self._json({"ok": True, "undone": undone, "current": current,
                            "counts": self.app.counts(labeller)})
            else:
                self._error(404, "not found")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001
            log.exception("POST %s failed", url.path)
            self._error(500, f"{type(e).__name__}: {e}")


def make_server(app: LabelApp, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    if not is_loopback(host) and not app.token:
        raise PermissionError(f"binding {host} exposes the page beyond this machine: give --token "
                              "(or set GENIE_LABEL_TOKEN)")
    handler = type("BoundHandler", (Handler,), {"app": app})
    srv = ThreadingHTTPServer((host, port), handler)
    srv.daemon_threads = True
    return srv


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
