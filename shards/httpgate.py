"""An HTTP/1.1 server whose threads only ever run complete requests, and what every page
server of the project needs on top of it (the labelling page, the play page).

ThreadingHTTPServer gives each connection a thread that blocks reading it, so a thousand
clients that send half a request, or just hold a keep-alive connection open, hold a thousand
threads. Here one thread (the gate, in `serve_forever`) watches every open connection with a
selector and buffers what arrives; a connection goes to the pool of `workers` threads only
once its request head and its body (per Content-Length, up to `max_body`) are in, and comes
back to the gate after the response if it is kept alive. So, whatever clients do:

- there are `workers` threads plus the gate;
- a connection that has not delivered a whole request `timeout` seconds after it started
  waiting for one (an idle keep-alive connection, a head or body sent a byte at a time) is
  closed: the deadline is for the whole request, not for each read;
- at most `max_connections` are open: a new one closes the one that has waited longest;
- a request head over 64 KiB is answered 431 and closed. A request whose Content-Length is
  over `max_body`, or that has no usable one, goes to a worker at once: its handler must
  refuse it without reading the body (`RequestHandler.read_body` does), or it would wait for bytes
  the gate did not. A client that sends `Expect: 100-continue` gets its 100 once the body
  is in: it may send the body unasked (RFC 9110 10.1.1), and no worker waits for it;
- TCP_NODELAY is set and a response leaves in one send, so keep-alive requests do not wait
  out Nagle's algorithm against the client's delayed ACK;
- a worker never waits for a client to read: it sends what the socket takes at once and
  hands the rest back to the gate, which sends it as the client reads. The connection's next
  (pipelined) request is read only once its response is out, so a client that pipelines
  requests and never reads gets answers made only until its send buffer (SEND_BUFFER) is
  full, then holds one response (at most `max_output` bytes: a larger one closes the
  connection) and its own connection, never a worker; a response not read within `timeout`
  closes the connection.

`RequestHandler` adds the shared request plumbing: responses with the security headers (the
subclass's `csp`), cookies, the token check and a random session cookie per browser
(`begin`, `start_session`), and reading a body by its Content-Length (`Rejected` before a
byte is read when the length is missing, malformed or over a limit).

Tokens: a server bound beyond the loopback must have one (`check_exposure`). A browser sends
it once as `?token=...` (the URL the server prints), then in an HttpOnly SameSite=Strict
cookie; a script may send it as `X-Genie-Token`. Without a token the Host header must name the
loopback, so a DNS-rebinding page cannot talk to the server.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import queue
import re
import secrets
import selectors
import socket
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import ParseResult, parse_qs, urlparse

log = logging.getLogger(__name__)

MAX_HEAD = 65536
SEND_BUFFER = 256 * 1024  # bytes a client may leave unread before its connection waits (the kernel doubles it)
SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([0-9]{1,12})[ \t]*\r?$", re.I | re.M)
_TRANSFER_ENCODING = re.compile(rb"^transfer-encoding[ \t]*:", re.I | re.M)
_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


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


MIN_TOKEN = 16  # characters: a token one could guess in a few requests is no gate


def check_exposure(host: str, token: str | None, flag: str = "--token") -> None:
    """PermissionError when binding `host` would expose a page beyond this machine without a
    token, or when a token is given that is too short to keep anyone out."""
    if token is not None and len(token) < MIN_TOKEN:
        raise PermissionError(f"{flag} must be at least {MIN_TOKEN} characters (e.g. python -c "
                              f"'import secrets; print(secrets.token_urlsafe())')")
    if not is_loopback(host) and not token:
        raise PermissionError(f"binding {host} exposes the page beyond this machine: give {flag}")


class Rejected(Exception):
    """A request answered with `status` and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _head_end(buf: bytearray, start: int = 0) -> int:
    """Index just past the blank line ending the request head, or -1 (CRLF or bare LF);
    `start`: where the last search stopped (a head trickled in byte by byte is scanned once)."""
    start = max(0, start - 3)
    ends = [i + n for i, n in ((buf.find(b"\r\n\r\n", start), 4), (buf.find(b"\n\n", start), 2)) if i >= 0]
    return min(ends) if ends else -1


class Connection:
    """A client connection: what it sent and nobody has read yet (the handler's rfile), and
    the response being written (its wfile, sent on flush)."""

    def __init__(self, sock: socket.socket, addr):
        self.sock, self.addr = sock, addr
        self.buf = bytearray()
        self.out = bytearray()
        self.since = time.monotonic()  # when it started waiting for its current request
        self.deadline = 0.0  # reads in a worker must finish by then
        self.keep = False
        self._scanned = 0  # how far buf was searched for the end of the head
        self._need: int | None = None  # bytes of buf the request takes, once its head is in

    def ready(self, max_body: int) -> bool | None:
        """Whether `buf` holds a request a worker can answer without waiting for the client
        (its head, and its body when the Content-Length is one to wait for): None when the
        head is over MAX_HEAD (it never will)."""
        if self._need is None:
            end = _head_end(self.buf, self._scanned)
            if end < 0:
                self._scanned = len(self.buf)
                return None if len(self.buf) > MAX_HEAD else False
            head = bytes(self.buf[:end])
            m = _CONTENT_LENGTH.search(head)
            n = int(m.group(1)) if m and not _TRANSFER_ENCODING.search(head) else 0
            self._need = end + (n if n <= max_body else 0)
        return len(self.buf) >= self._need

    # ------------------------------------------------------------------------ rfile
    def readline(self, limit: int = -1) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0 and (limit < 0 or i < limit):
                return self._take(i + 1)
            if 0 <= limit <= len(self.buf) or not self._receive():
                return self._take(len(self.buf) if limit < 0 else min(limit, len(self.buf)))

    def read(self, n: int) -> bytes:
        if n < 0:
            raise ValueError("read() needs a length: bodies are read by their Content-Length")
        while len(self.buf) < n and self._receive():
            pass
        return self._take(min(n, len(self.buf)))

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[:n])
        del self.buf[:n]
        self._scanned, self._need = 0, None
        return out

    def _receive(self) -> bool:
        """More bytes from the client before the deadline (TimeoutError after it); False at EOF."""
        self._send_now()  # whatever the handler wrote before asking for more (a "100 Continue")
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send the whole request in time")
        self.sock.settimeout(left)
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    # ------------------------------------------------------------------------ wfile
    def write(self, data: bytes) -> int:
        self.out += data
        return len(data)

    def flush(self) -> None:
        """Nothing: the response leaves from the gate (`send_some`), so that no worker waits
        for a client to read (BaseHTTPRequestHandler flushes after every request)."""

    def _send_now(self) -> None:
        """Send everything written, waiting for the client until the request's deadline: only
        what the handler wrote before it asks for the body (a "100 Continue")."""
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the client did not read the answer in time")
            self.sock.settimeout(left)
            self.sock.sendall(data)

    def send_some(self) -> bool:
        """Send what the socket takes now, without waiting; True once everything is out."""
        self.sock.setblocking(False)  # with a timeout set, send() would first wait for room
        while self.out:
            try:
                n = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return False
            del self.out[:n]
        return True

    def close(self) -> None:
        """Close after sending what was written: FIN first, so the client reads the answer
        even when it sent more than was read (closing with unread input sends a reset)."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.setblocking(False)
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.sock.close()


class RequestHandler(BaseHTTPRequestHandler):
    """Answers the one request a `GatedHTTPServer` hands it (`request` is a Connection).
    Subclasses set `csp` (the Content-Security-Policy of every response) and the names of
    their token and session cookies; `set_cookies` are sent with the next response; `session`
    is the browser's session id (None until `start_session`)."""

    protocol_version = "HTTP/1.1"
    csp = "default-src 'none'"
    token_cookie = "genie_token"
    session_cookie = "genie_session"
    session_max_age: int | None = None  # seconds; None: the session ends with the browser
    set_cookies: tuple[str, ...] | list[str] = ()
    session: str | None = None

    def setup(self) -> None:
        self.connection = self.request.sock
        self.rfile = self.wfile = self.request

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        # the response goes out from the gate (GatedHTTPServer._send): a worker never waits on a reader
        if len(self.request.out) > self.server.max_output:
            self.request.out.clear()
            self.close_connection = True
            log.warning("response to %s over %d bytes: connection closed", self.address_string(), self.server.max_output)

    def log_message(self, fmt, *args):  # quiet: requests go to the debug log
        log.debug("%s %s", self.address_string(), fmt % args)

    def do_HEAD(self):  # reply() leaves the body out
        self.do_GET()

    # ------------------------------------------------------------------ responses
    def reply(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", self.csp)
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

    def reply_json(self, obj: Any, status: int = 200) -> None:
        self.reply(status, json.dumps(obj).encode(), "application/json", {"Cache-Control": "no-store"})

    def reply_error(self, status: int, msg: str) -> None:
        self.reply_json({"error": msg}, status)

    # ------------------------------------------------------------------- requests
    def cookies(self) -> dict[str, str]:
        out = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            out.setdefault(name, value)
        return out

    def authorized(self, token: str | None, cookie: str, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """(allowed, the token came in the query string: set the `cookie`). Without a token
        only a Host header naming the loopback is allowed."""
        if token is None:
            return is_loopback(host_name(self.headers.get("Host") or "")), False
        given = self.headers.get("X-Genie-Token") or self.cookies().get(cookie)
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return True, False
        qt = (query.get("token") or [""])[0]
        if qt and hmac.compare_digest(qt.encode(), token.encode()):
            return True, True
        return False, False

    def begin(self, token: str | None) -> tuple[ParseResult, dict[str, list[str]]] | None:
        """Start answering: (the parsed URL, its query) with `session` read from its cookie,
        or None when the token check refused the request (403 answered)."""
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.set_cookies = []
        session = self.cookies().get(self.session_cookie, "")
        self.session = session if SESSION_RE.match(session) else None
        ok, set_cookie = self.authorized(token, self.token_cookie, query)
        if not ok:
            self.reply_error(403, "forbidden: a token is required (open the URL printed by the server)"
                             if token else "forbidden: unexpected Host header")
            return None
        if set_cookie:
            self.set_cookies.append(f"{self.token_cookie}={token}; HttpOnly; SameSite=Strict; Path=/")
        return url, query

    def start_session(self) -> None:
        """Give a browser that has none its random session id (an HttpOnly cookie)."""
        if self.session is None:
            self.session = secrets.token_urlsafe(24)
            age = f"; Max-Age={self.session_max_age}" if self.session_max_age else ""
            self.set_cookies.append(f"{self.session_cookie}={self.session}; HttpOnly; SameSite=Strict; Path=/{age}")

    def read_body(self, limit: int) -> bytes:
        """The body, read by its Content-Length. Rejected before a byte is read when the
        length is missing, malformed or over `limit` bytes (413 names the limit)."""
        if self.headers.get("Transfer-Encoding"):
            raise Rejected(411, "send the body with a Content-Length (Transfer-Encoding is not supported)")
        length = self.headers.get("Content-Length")
        if length is None:
            raise Rejected(411, "a Content-Length is required")
        length = length.strip()
        if not re.fullmatch(r"[0-9]+", length):
            raise Rejected(400, f"bad request: Content-Length {length[:40]!r} is not a byte count")
        if len(length) > 12 or int(length) > limit:
            raise Rejected(413, f"request too large: at most {limit} bytes")
        data = self.rfile.read(int(length))
        if len(data) < int(length):
            raise Rejected(400, "bad request: the body is shorter than its Content-Length")
        return data


class GatedHTTPServer(HTTPServer):
    """HTTPServer with the gate described above; `serve_forever`, `shutdown` and
    `server_close` as in socketserver."""

    request_queue_size = 128  # the listen backlog (socketserver's default is 5)

    def __init__(self, address: tuple[str, int], handler: type[RequestHandler], *, timeout: float = 30.0,
                 workers: int = 16, max_connections: int = 512, max_body: int = 65536, max_output: int = 16 << 20):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.request_timeout, self.workers = timeout, workers
        self.max_connections, self.max_body, self.max_output = max_connections, max_body, max_output
        self._waiting: OrderedDict[socket.socket, Connection] = OrderedDict()  # oldest first
        self._sending: OrderedDict[socket.socket, Connection] = OrderedDict()  # answers the client has not read
        self._busy = 0  # connections a worker holds
        self._jobs: queue.SimpleQueue[Connection | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop, self._stopped = threading.Event(), threading.Event()
        self._stopped.set()
        super().__init__(address, handler)  # binds: the attributes above exist if it fails

    # ----------------------------------------------------------------------- the gate
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        threads = [threading.Thread(target=self._worker, name=f"http-worker-{i}", daemon=True)
                   for i in range(self.workers)]
        for t in threads:
            t.start()
        sel = selectors.DefaultSelector()
        self.socket.setblocking(False)
        sel.register(self.socket, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(self._wait(poll_interval)):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    elif key.fileobj is self._wake_r:
                        self._wake_r.recv(4096)
                    elif key.fileobj in self._sending:
                        self._send(sel, key.data)
                    else:
                        self._receive(sel, key.data)
                self._take_back(sel)
                self._expire(sel)
        finally:
            for _ in threads:
                self._jobs.put(None)
            for conn in list(self._waiting.values()) + list(self._sending.values()):
                self._drop(sel, conn)
            sel.close()
            self._stop.clear()
            self._stopped.set()

    def _wait(self, poll_interval: float) -> float:
        if not self._waiting:
            return poll_interval
        oldest = next(iter(self._waiting.values()))
        return max(0.0, min(poll_interval, oldest.since + self.request_timeout - time.monotonic()))

    def _accept(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, a client gone before accept
                log.warning("accept failed: %s", e)
                return
            if len(self._waiting) + len(self._sending) + self._busy >= self.max_connections:
                idle = self._waiting or self._sending
                if not idle:  # every connection is in a worker: refuse this one
                    sock.close()
                    continue
                self._drop(sel, next(iter(idle.values())))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # the output budget of a connection in the kernel: without it the send buffer grows
            # to megabytes, and a client that never reads has that many answers made for it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            self._park(sel, Connection(sock, addr))

    def _park(self, sel: selectors.BaseSelector, conn: Connection) -> None:
        """Wait for `conn`'s next request (or hand it over at once if it is already in)."""
        conn.sock.setblocking(False)
        conn.since = time.monotonic()
        if conn.ready(self.max_body):
            self._dispatch(conn)
            return
        self._waiting[conn.sock] = conn
        sel.register(conn.sock, selectors.EVENT_READ, conn)

    def _receive(self, sel: selectors.BaseSelector, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            return self._drop(sel, conn)
        conn.buf += data
        ready = conn.ready(self.max_body)
        if ready is None:
            conn.out += _TOO_LARGE
            self._drop(sel, conn)
        elif ready:
            sel.unregister(conn.sock)
            del self._waiting[conn.sock]
            self._dispatch(conn)

    def _dispatch(self, conn: Connection) -> None:
        self._busy += 1
        self._jobs.put(conn)

    def _take_back(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                conn = self._done.get_nowait()
            except queue.Empty:
                return
            self._busy -= 1
            if conn.send_some():
                self._answered(sel, conn)
            else:  # the client is not reading (yet): the gate sends the rest as it does
                conn.since = time.monotonic()
                self._sending[conn.sock] = conn
                sel.register(conn.sock, selectors.EVENT_WRITE, conn)

    def _send(self, sel: selectors.BaseSelector, conn: Connection) -> None:
        try:
            done = conn.send_some()
        except OSError:
            return self._drop(sel, conn)
        if done:
            sel.unregister(conn.sock)
            del self._sending[conn.sock]
            self._answered(sel, conn)

    def _answered(self, sel: selectors.BaseSelector, conn: Connection) -> None:
        """The response is out: wait for the next request, or close."""
        if conn.keep:
            self._park(sel, conn)
        else:
            conn.close()

    def _expire(self, sel: selectors.BaseSelector) -> None:
        limit = time.monotonic() - self.request_timeout
        for conns in (self._waiting, self._sending):
            while conns:
                oldest = next(iter(conns.values()))
                if oldest.since > limit:
                    break
                oldest.out.clear()  # not read in time: nothing more is sent
                self._drop(sel, oldest)

    def _drop(self, sel: selectors.BaseSelector, conn: Connection) -> None:
        if (self._waiting.pop(conn.sock, None) or self._sending.pop(conn.sock, None)) is not None:
            sel.unregister(conn.sock)
        try:
            conn.send_some()  # a 431 or what is left: as much as the socket takes, no waiting
        except OSError:
            pass
        conn.close()

    # ---------------------------------------------------------------------- workers
    def _worker(self) -> None:
        while (conn := self._jobs.get()) is not None:
            conn.deadline = conn.since + self.request_timeout
            conn.sock.setblocking(True)
            conn.sock.settimeout(self.request_timeout)  # bounds sending the response too
            conn.keep = False
            try:
                conn.keep = not self.RequestHandlerClass(conn, conn.addr, self).close_connection
            except OSError:  # the client went away mid-answer
                pass
            except Exception:  # noqa: BLE001 — one broken request must not take a worker down
                log.exception("request from %s failed", conn.addr)
            self._done.put(conn)
            try:
                self._wake_w.send(b"\0")
            except OSError:  # the server is closed: nobody will take it back
                conn.close()

    # --------------------------------------------------------------------- lifecycle
    def url(self, token: str | None = None) -> str:
        """The address to open: http://HOST:PORT/, with ?token=... when there is one."""
        bound, port = self.server_address[:2]
        shown = f"[{bound}]" if ":" in bound else bound
        return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")

    def serve_until_interrupted(self) -> None:
        """`serve_forever` until Ctrl-C, then close the socket."""
        try:
            self.serve_forever()
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
        finally:
            self.server_close()

    def shutdown(self) -> None:
        if not self._stopped.is_set():
            self._stop.set()
            self._wake_w.send(b"\0")
            self._stopped.wait()

    def server_close(self) -> None:
        super().server_close()
        self._wake_r.close()
        self._wake_w.close()
        while True:
            try:
                self._done.get_nowait().close()
            except queue.Empty:
                return
