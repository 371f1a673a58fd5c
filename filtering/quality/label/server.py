"""HTTP server of the labelling page (standard library only; connections, tokens and bodies
are handled by shards/httpgate.py, which bounds threads, connections and the time a client
may take).

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
import io
import json
import logging
import re
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.label.sample import active_sample, stratified_sample
from genie_pipeline.filtering.quality.label.store import VALID, LabelStore
from genie_pipeline.shards.httpgate import GatedHTTPServer, Rejected, RequestHandler, check_exposure
from genie_pipeline.shards.reader import ClipIndex

log = logging.getLogger(__name__)

COOKIE = "genie_label_token"
SESSION = "genie_label_session"
MAX_BODY = 65536
KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"/": ("page.html", "text/html; charset=utf-8"), "/index.html": ("page.html", "text/html; charset=utf-8"),
          "/page.js": ("page.js", "text/javascript; charset=utf-8"), "/page.css": ("page.css", "text/css; charset=utf-8")}


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

    def prepare_sample(self, seed: int = 0, resample: bool = False, active: dict[str, Any] | None = None) -> list[str]:
        """The stored sample when it was drawn for this input and target, else a new one.
        `active` ({"margin": {key: |score - threshold|}, "share": s, "model": path}): a share
        of the new sample are the clips the model is least sure of (sample.active_sample)."""
        spec = json.dumps({"input": str(self._root), "target": self.target, "seed": seed,
                           **({"active": active["model"]} if active else {})})
        old = self.store.sample()
        if old and not resample and self.store.get_meta("sample_spec") == spec:
            rows = [r for r in old if self.servable(r["key"])]
            if rows:
                return self._use_sample(rows)
        servable = [c for c in self.index.clips.values() if self.servable(c.key)]
        if active:
            picked = active_sample(servable, self.target, active["margin"], active["share"], seed)
        else:
            picked = stratified_sample(servable, self.target, seed)
        self.store.upsert_clips(picked)
        self.store.set_sample([c.key for c in picked])
        self.store.set_meta("sample_spec", spec)
        return self._use_sample(self.store.sample())

    def _use_sample(self, rows: list[dict[str, Any]]) -> list[str]:
        self.clips = [{k: r[k] for k in ("key", "title", "source", "video_id", "stratum")} for r in rows]
        self.sample_keys = [r["key"] for r in rows]
        return self.sample_keys

    def state(self, labeller: str) -> dict[str, Any]:
        # a target above the clips there are could never be reached: the page's target is the sample
        target = min(self.target, len(self.clips)) if self.clips else self.target
        return {"target": target, "labeller_default": self.labeller_default, "clips": self.clips,
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


class Handler(RequestHandler):
    server_version = "genie-label"
    csp = CSP
    token_cookie, session_cookie = COOKIE, SESSION
    session_max_age = 31536000  # a year: undo works after a restart
    app: LabelApp  # set on the subclass made by make_server

    # ------------------------------------------------------------------------ handlers
    def do_GET(self):
        r = self.begin(self.app.token)
        if r is None:
            return
        url, query = r
        path = url.path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                body = resources.files("genie_pipeline.filtering.quality.label").joinpath(name).read_bytes()
                if name == "page.html":
                    self.start_session()
                self.reply(200, body, ctype, {"Cache-Control": "no-cache"})
            elif path == "/api/state":
                self.start_session()
                self.reply_json(self.app.state((query.get("labeller") or [""])[0].strip()))
            elif path.startswith("/clip/") and path.endswith(".mp4"):
                self._clip(path[len("/clip/"):-4])
            elif path.startswith("/strip/") and path.endswith(".png"):
                key = path[len("/strip/"):-4]
                png = self.app.strip(key) if KEY_RE.match(key) else None
                if png is None:
                    return self.reply_error(404, "no such clip")
                self.reply(200, png, "image/png", {"Cache-Control": "max-age=3600"})
            elif path == "/favicon.ico":
                self.reply(204, b"", "image/x-icon")
            elif path == "/healthz":
                self.reply_json({"ok": True})
            else:
                self.reply_error(404, "not found")
        except Exception as e:  # noqa: BLE001
            log.exception("GET %s failed", path)
            self.reply_error(500, f"{type(e).__name__}: {e}")

    def _clip(self, key: str) -> None:
        data = self.app.read(key) if KEY_RE.match(key) else None
        if data is None:
            return self.reply_error(404, "no such clip")
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
                return self.reply(416, b"", "video/mp4", {"Content-Range": f"bytes */{total}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{total}"
            return self.reply(206, data[start:end + 1], "video/mp4", headers)
        self.reply(200, data, "video/mp4", headers)

    def _read_json(self) -> dict[str, Any]:
        """The body: a JSON object read by its Content-Length. Rejected before a byte is read
        when the length is missing, malformed or over MAX_BODY."""
        data = self.read_body(MAX_BODY)
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
        r = self.begin(self.app.token)
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
                self.reply_error(404, "not found")
        except Rejected as e:
            self.reply_error(e.status, str(e))
        except Exception as e:  # noqa: BLE001
            log.exception("POST %s failed", path)
            self.reply_error(500, f"{type(e).__name__}: {e}")

    def _label(self, body: dict[str, Any], labeller: str) -> None:
        key, label = str(body.get("key") or ""), body.get("label")
        if key not in self.app.index:
            raise Rejected(404, f"no such clip: {key[:200]}")
        if label not in VALID:
            raise Rejected(400, f"label must be one of {', '.join(VALID)}")
        eid = self.app.store.add(key, label, labeller, session=self.session)
        self.reply_json({"ok": True, "id": eid, "key": key, "label": label, "counts": self.app.store.counts(labeller)})

    def _undo(self, labeller: str) -> None:
        try:
            undone = self.app.store.undo(labeller, session=self.session)
        except PermissionError as e:
            raise Rejected(403, f"forbidden: {e}") from None
        current = self.app.store.label_of(undone["key"], labeller) if undone else None
        self.reply_json({"ok": True, "undone": undone, "current": current, "counts": self.app.store.counts(labeller)})


def make_server(app: LabelApp, host: str = "127.0.0.1", port: int = 8765, *, timeout: float = 30.0,
                workers: int = 16, max_connections: int = 512) -> GatedHTTPServer:
    """The server for `app` (not yet serving). A client gets `timeout` seconds to send each
    whole request; `workers` threads answer; at most `max_connections` are open (shards/httpgate.py)."""
    check_exposure(host, app.token, "--token (or set GENIE_LABEL_TOKEN)")
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
                 seed: int, resample: bool, labeller: str, active: dict[str, Any] | None = None) -> None:
    """Serve the labelling page for a sample of `index`'s clips until Ctrl-C. A host other
    than the loopback needs a token (QualityError naming --token otherwise); an address that
    cannot be bound is a QualityError naming --host/--port."""
    app = LabelApp(index, store, target=target, token=token, labeller_default=labeller)
    keys = app.prepare_sample(seed=seed, resample=resample, active=active)
    try:
        srv = make_server(app, host, port)
    except PermissionError as e:
        raise QualityError(f"--token: {e}") from None
    except OSError as e:  # address in use, or not an address of this machine
        raise QualityError(f"--host/--port: cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"labelling {len(keys)} clips of {len(index)} from {index.root}; labels in {store.path}")
    print(f"open {srv.url(token)}  (Ctrl-C to stop)", flush=True)
    srv.serve_until_interrupted()
