"""A local "video site" over a corpus directory, for offline tests and demos.

Routes (GET and HEAD):

    /search?q=QUERY&n=N       JSON {"results": [{"id","title","description","duration","url"}]}:
                              catalog rows matching any query word (title or description),
                              ranked by the number of distinct words matched; a video with
                              an actions sidecar adds "actions_url", where it is served
    /status/<code>            always answers that status (400-599)
    /flaky/<n>/<path>         429 (Retry-After: 0) for the first n requests of this exact
                              path and query string, then the file at <path> (add a
                              throwaway query, `?fresh=…`, to start a fresh count)
    /hang/<path>              waits `hang_s` (30 s) before answering: for timeout tests
    /<path>                   any file under the corpus dir (e.g. /videos/gc0001.mp4,
                              /catalog.jsonl), with HTTP Range; anything outside it is 404

`CorpusServer.requests` counts requests per path (query string excluded), `.targets` per
path+query; `hits(path)` reads either.
"""
from __future__ import annotations

import hmac
import json
import mimetypes
import re
import threading
import time
from collections import Counter
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from genie_pipeline.shards.httpgate import is_loopback

_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "of", "and", "or", "in", "on", "to", "with", "for", "my", "is"}
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
MIME = {".mp4": "video/mp4", ".jsonl": "application/x-ndjson", ".json": "application/json",
        ".parquet": "application/vnd.apache.parquet", ".txt": "text/plain; charset=utf-8"}


def words(text: str) -> set[str]:
    return {w for w in _WORD.findall(str(text).lower()) if len(w) > 1 and w not in _STOP}


def search_catalog(rows: list[dict], query: str, n: int = 20) -> list[dict]:
    """Rows that contain any query word in title or description, most matched words first."""
    q = words(query)
    if not q:
        return []
    scored = []
    for i, r in enumerate(rows):
        hit = len(q & words(f"{r.get('title', '')} {r.get('description', '')}"))
        if hit:
            scored.append((-hit, i, r))
    scored.sort(key=lambda x: (x[0], x[1]))
    return [r for _, _, r in scored[: max(0, n)]]


class _Handler(BaseHTTPRequestHandler):
    server_version = "GenieCorpus/1.0"
    protocol_version = "HTTP/1.1"

    # the owning CorpusServer is attached to the http server as `.corpus`
    @property
    def corpus(self) -> "CorpusServer":
        return self.server.corpus  # type: ignore[attr-defined]

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.corpus.verbose:
            super().log_message(fmt, *args)

    def do_HEAD(self):
        self._route(head=True)

    def do_GET(self):
        self._route(head=False)

    # ------------------------------------------------------------------ helpers
    def _send_bytes(self, code: int, body: bytes, ctype: str, head: bool, extra: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, code: int, head: bool, extra: dict | None = None):
        msg = f"{code} {HTTPStatus(code).phrase if code in HTTPStatus._value2member_map_ else ''}\n".encode()
        self._send_bytes(code, msg, "text/plain; charset=utf-8", head, extra)

    def _route(self, head: bool):
        parts = urlsplit(self.path)
        path = parts.path
        token = self.corpus.token
        if token:  # every URL the server hands out starts with /TOKEN, so yt-dlp needs nothing else
            first, _, rest = path.lstrip("/").partition("/")
            if not hmac.compare_digest(first.encode(), token.encode()):
                return self._error(403, head)
            path = "/" + rest
        target = path + ("?" + parts.query if parts.query else "")
        self.corpus._count(path, target)
        try:
            if not self.corpus.admit(self, path, parse_qs(parts.query), head):
                return  # answered already (corpus/wallsite.py: a wall, a missing token)
            if path == "/search":
                return self._search(parse_qs(parts.query), head)
            m = re.match(r"^/status/(\d{3})/?$", path)
            if m:
                code = int(m.group(1))
                return self._error(code if 400 <= code <= 599 else 400, head)
            m = re.match(r"^/flaky/(\d+)/(.+)$", path)
            if m:
                if self.corpus.targets[target] <= int(m.group(1)):
                    return self._error(429, head, {"Retry-After": "0"})
                return self._file(m.group(2), head)
            m = re.match(r"^/hang/(.+)$", path)
            if m:
                if self.corpus.resolve(m.group(1)) is None:
                    return self._error(404, head)
                self.corpus._stopping.wait(self.corpus.hang_s)
                return self._file(m.group(1), head)
            return self._file(path, head)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _search(self, qs: dict, head: bool):
        q = (qs.get("q") or [""])[0]
        try:
            n = int((qs.get("n") or ["20"])[0])
        except ValueError:
            return self._error(400, head)
        base = self.corpus.base_url(self.headers.get("Host"))
        out = []
        for r in search_catalog(self.corpus.catalog, q, max(0, min(n, 1000))):
            url = r.get("url")
            if url:
                url = url if re.match(r"^https?://", url) else base + "/" + url.lstrip("/")
            elif r.get("file"):
                url = base + "/" + str(r["file"]).lstrip("/")
            else:
                continue
            hit = {"id": r["id"], "title": r.get("title", ""), "description": r.get("description", ""),
                   "duration": r.get("duration"), "url": url}
            if r.get("actions"):
                hit["actions_url"] = base + "/" + str(r["actions"]).lstrip("/")
            out.append(hit)
        body = json.dumps({"query": q, "results": out}).encode()
        self._send_bytes(200, body, "application/json", head)

    def _file(self, rel: str, head: bool):
        target = self.corpus.resolve(rel)
        if target is None:
            return self._error(404, head)
        size = target.stat().st_size
        ctype = MIME.get(target.suffix.lower()) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):  # one range; several are answered with the whole file
                a, b = m.group(1), m.group(2)
                if a == "":  # suffix: the last b bytes
                    start, end = max(0, size - int(b)), size - 1
                else:
                    start = int(a)
                    end = min(int(b), size - 1) if b else size - 1
                if start >= size or start > end:
                    return self._error(416, head, {"Content-Range": f"bytes */{size}"})
                code = 206
        length = end - start + 1 if size else 0
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(target.stat().st_mtime)))
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head or length == 0:
            return
        with open(target, "rb") as f:
            f.seek(start)
            left = length
            while left > 0:
                chunk = f.read(min(left, 1 << 16))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # clients hanging up are not errors
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class CorpusServer:
    """Serve a corpus directory over HTTP from a daemon thread.

        with CorpusServer(corpus_dir) as srv:
            requests.get(srv.url + "/search?q=pitfall")
    """

    def __init__(self, corpus_dir, host: str = "127.0.0.1", port: int = 0, *, hang_s: float = 30.0,
                 verbose: bool = False, token: str | None = None):
        self.root = Path(corpus_dir).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"no corpus directory {corpus_dir}")
        if not is_loopback(host) and not token:
            raise ValueError(f"serving on {host!r} (beyond this machine) needs a token")
        if token and not re.fullmatch(r"[A-Za-z0-9_-]{8,128}", token):
            raise ValueError("the token must be 8-128 characters of [A-Za-z0-9_-] (it is part of every URL)")
        self.token = token or None
        self.host, self.port = host, int(port)
        self.hang_s = hang_s
        self.verbose = verbose
        self.requests: Counter[str] = Counter()  # per path
        self.targets: Counter[str] = Counter()  # per path?query
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.catalog: list[dict] = []
        self.reload()

    # ------------------------------------------------------------------ state
    def reload(self) -> None:
        """(Re)read catalog.jsonl (an empty catalog if there is none)."""
        cat = self.root / "catalog.jsonl"
        rows = []
        if cat.exists():
            with open(cat, encoding="utf-8") as f:
                rows = [json.loads(line) for line in f if line.strip()]
        self.catalog = rows

    def _count(self, path: str, target: str) -> None:
        with self._lock:
            self.requests[path] += 1
            self.targets[target] += 1

    def admit(self, handler: "_Handler", path: str, query: dict, head: bool) -> bool:
        """Whether to serve the request; a subclass that refuses answers it first (here: all)."""
        return True

    def hits(self, path: str) -> int:
        """Requests so far for `path` (e.g. "/videos/gc0001.mp4"); with a query string
        ("/flaky/2/videos/gc0002.mp4?fresh=1") for exactly that target."""
        with self._lock:
            return self.targets[path] if "?" in path else self.requests[path]

    def resolve(self, rel: str) -> Path | None:
        """The file under the corpus dir that `rel` (a URL path) names, or None."""
        rel = unquote(rel)
        if "\x00" in rel or "\\" in rel:
            return None
        segs = [s for s in rel.split("/") if s not in ("", ".")]
        if not segs or any(s == ".." for s in segs):
            return None
        try:
            p = self.root.joinpath(*segs).resolve()
        except (OSError, ValueError):
            return None
        if not p.is_relative_to(self.root) or not p.is_file():
            return None
        return p

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}{self._prefix}"

    @property
    def _prefix(self) -> str:
        return f"/{self.token}" if self.token else ""

    def base_url(self, host_header: str | None = None) -> str:
        if self.host in ("", "0.0.0.0", "::") and host_header and re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host_header):
            return f"http://{host_header}{self._prefix}"
        return self.url

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "CorpusServer":
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.corpus = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self.port = httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True,
                                        name=f"corpus-server-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # wake /hang handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "CorpusServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(corpus_dir, host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> None:
    """Serve until interrupted (the CLI's `serve-corpus`); ValueError for a non-loopback
    host without a token."""
    srv = CorpusServer(corpus_dir, host, port, verbose=True, token=token).start()
    print(f"serving {srv.root} at {srv.url}  (search: {srv.url}/search?q=pitfall+speedrun)", flush=True)
    print(f"yt-dlp: --extractor-args \"geniecorpus:server={srv.url}\" \"gcsearch10:pitfall speedrun\"", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()


if __name__ == "__main__":  # python -m genie_pipeline.corpus.serve DIR [PORT]
    import sys

    serve_forever(sys.argv[1], port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
