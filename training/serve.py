"""The play page: a person plays a trained Genie in the browser (`genie-pipeline play --serve`).

Routes
    GET  /, /play.js, /play.css   the page (static: no data is ever templated into it)
    GET  /api/info                 action names, frame size, sampler settings, prompt thumbnails
    GET  /prompt/I.png             thumbnail I: the first frame of a validation clip, at model size
    POST /api/start                a new episode from the uploaded image (the body, PNG/JPEG/WebP),
                                   or from thumbnail ?prompt=I (empty body) -> the prompt frame
    POST /api/step?action=A        one generated frame under action A (0-based) -> that frame
    POST /api/undo                 drop the latest frame -> the frame now last
    POST /api/reset                back to the prompt -> the prompt frame
    GET  /api/episode.mp4          the episode so far as an MP4 (prompt + one frame per step)

Each frame answers its own request as a PNG (headers X-Frame: its index, X-Frames: how many
the episode holds), so the page shows every frame the moment it is generated.

One model on one device serves one request at a time: a request waits up to `busy_wait`
seconds for the model, then gets 429 with Retry-After. Each browser has its own episode
(keyed by a random session cookie); at most MAX_SESSIONS are kept, the least recently used
goes first.

Security (shards/httpgate.py): bound to 127.0.0.1 unless told otherwise, and any other address
needs a token, which every request must then carry. POSTs need the X-Genie-Play header, which a
cross-site form cannot send. An upload is refused over MAX_UPLOAD bytes (413, before it is
read) and over MAX_PIXELS pixels (413, from the image header, before it is decoded). Action
and clip names reach the page only as JSON and are put in the DOM as text. Nothing from a
request becomes a file path: prompts are picked by index.
"""
from __future__ import annotations

import io
import logging
import os
import re
import threading
from collections import OrderedDict
from contextlib import contextmanager
from importlib import resources
from typing import Any, Iterator, Sequence

import torch

from genie_pipeline.models.genie import Genie
from genie_pipeline.shards.clip import ClipFormatError, ClipSpec, encode_clip
from genie_pipeline.shards.httpgate import GatedHTTPServer, Rejected, RequestHandler, check_exposure
from genie_pipeline.shards.reader import iter_tar_clips, resolve_inputs

from .bundle import load_genie
from .decoders import DecodeError, PyAVDecoder
from .errors import TrainingError
from .metrics import to_uint8_frames
from .play import load_image

log = logging.getLogger(__name__)

MAX_UPLOAD = 8 * 1024 * 1024  # bytes of an uploaded prompt image
MAX_PIXELS = 7680 * 4320  # pixels of an uploaded prompt image, checked before decoding (download.max_pixels)
MAX_SESSIONS = 16
MAX_FRAMES = 1000  # frames per episode: the MP4 and the frame list stay bounded
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{8,128}$")  # it travels in a URL and a cookie
COOKIE = "genie_play_token"
SESSION = "genie_play_session"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
STATIC = {"/": ("play_page.html", "text/html; charset=utf-8"),
          "/play.js": ("play_page.js", "text/javascript; charset=utf-8"),
          "/play.css": ("play_page.css", "text/css; charset=utf-8")}


class Busy(Exception):
    """The model is generating for another request."""


# ------------------------------------------------------------------------------ prompts
def validation_prompts(data: str, n: int, height: int, width: int) -> list[tuple[str, torch.Tensor]]:
    """(clip key, first frame as float (3, height, width) in [0, 1]) of up to `n` validation
    clips behind `data` (an ingest output, a shard dir, a tar or a glob). DataError from
    shards.reader when there are no val shards; a clip that does not decode is skipped."""
    stats = {"bad_shards": 0, "bad_samples": 0}
    decoder = PyAVDecoder()
    out: list[tuple[str, torch.Tensor]] = []
    for shard in resolve_inputs([data], split="val").shards:
        for clip in iter_tar_clips(shard, stats):
            try:
                first_CHW = decoder.decode(clip.data, [0])[0]
            except DecodeError as e:
                log.warning("prompt %s skipped: %s", clip.key, e)
                continue
            out.append((clip.key, load_image(first_CHW, height, width)))
            if len(out) >= n:
                return out
    return out


def png(frame_CHW: torch.Tensor) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_frames(frame_CHW[None])[0]).save(buf, format="PNG")
    return buf.getvalue()


def decode_upload(data: bytes, height: int, width: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """An uploaded image as float (3, height, width) in [0, 1]. Rejected (413) over `max_pixels`,
    judged from the header before any pixel is decoded; (400) when it is not a readable
    PNG, JPEG or WebP."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:  # PIL's own limit, checked on the header
        raise Rejected(413, f"image too large: at most {max_pixels} pixels ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise Rejected(400, f"the upload is not a readable image ({', '.join(UPLOAD_FORMATS)})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise Rejected(413, f"image too large: {w}x{h} is {w * h} pixels, at most {max_pixels}")
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt data
        raise Rejected(400, f"the image cannot be decoded: {e}") from None
    try:
        return load_image(img, height, width)
    except TrainingError as e:
        raise Rejected(400, e.message) from None


# ------------------------------------------------------------------------------ the app
class PlayApp:
    """The model, the prompts and one episode per session; every model call holds `model_lock`."""

    def __init__(self, genie: Genie, *, token: str | None = None, steps: int | None = None,
                 temperature: float | None = None, greedy: bool = False, seed: int = 0,
                 prompts: Sequence[tuple[str, torch.Tensor]] = (), max_pixels: int = MAX_PIXELS,
                 busy_wait: float = 10.0, fps: int = 10, prompt_detail: bool | None = None,
                 keep_bias: float | None = None):
        self.genie, self.token = genie, token or None
        self.sampler = {"steps": steps, "temperature": temperature, "greedy": greedy, "prompt_detail": prompt_detail,
                        "keep_bias": keep_bias}
        self.seed, self.max_pixels, self.busy_wait, self.fps = seed, max_pixels, busy_wait, fps
        self.prompts = list(prompts)
        cfg = genie.cfg
        self.num_actions = cfg.lam.num_actions
        names = getattr(genie, "action_names", None) or []
        self.action_names = [str(names[i]) if i < len(names) and names[i] else f"action {i}"
                             for i in range(self.num_actions)]
        self.model_lock = threading.Lock()
        self._episodes: OrderedDict[str, tuple[torch.Tensor, Any]] = OrderedDict()  # session -> (prompt, Episode)
        self._thumbs = [png(p) for _, p in self.prompts]

    def info(self) -> dict[str, Any]:
        cfg = self.genie.cfg
        return {"actions": self.action_names, "height": cfg.image_height, "width": cfg.image_width,
                "prompts": [{"id": i, "name": key} for i, (key, _) in enumerate(self.prompts)],
                "max_upload": MAX_UPLOAD, "max_pixels": self.max_pixels, "max_frames": MAX_FRAMES, **self.sampler}

    def thumbnail(self, i: int) -> bytes | None:
        return self._thumbs[i] if 0 <= i < len(self._thumbs) else None

    def prompt(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self.prompts):
            raise Rejected(404, f"no prompt {i} (there are {len(self.prompts)})")
        return self.prompts[i][1]

    @contextmanager
    def _model(self) -> Iterator[None]:
        """Hold the model: wait up to `busy_wait` seconds for it, then Busy."""
        if not self.model_lock.acquire(timeout=self.busy_wait):
            raise Busy()
        try:
            yield
        finally:
            self.model_lock.release()

    def _session(self, session: str) -> tuple[torch.Tensor, Any]:
        """(prompt, Episode) of `session`, now the most recently used."""
        if session not in self._episodes:
            raise Rejected(409, "no episode yet: upload or pick a prompt first")
        self._episodes.move_to_end(session)
        return self._episodes[session]

    def start(self, session: str, prompt_CHW: torch.Tensor) -> tuple[torch.Tensor, int]:
        """A new episode for `session` from `prompt_CHW`: (its first frame, 1)."""
        device = next(self.genie.parameters()).device
        with self._model():
            ep = self.genie.start(prompt_CHW[None].to(device), seed=self.seed, **self.sampler)
            self._episodes[session] = (prompt_CHW, ep)
            self._episodes.move_to_end(session)
            while len(self._episodes) > MAX_SESSIONS:
                self._episodes.popitem(last=False)
            return ep.frames[-1][0], len(ep.frames)

    def step(self, session: str, action: int) -> tuple[torch.Tensor, int]:
        if not 0 <= action < self.num_actions:
            raise Rejected(400, f"action must be an id in [0, {self.num_actions}), got {action}")
        with self._model():
            _, ep = self._session(session)
            if len(ep.frames) >= MAX_FRAMES:
                raise Rejected(409, f"the episode is at its limit of {MAX_FRAMES} frames: reset or undo")
            return ep.step(action)[0], len(ep.frames)

    def undo(self, session: str) -> tuple[torch.Tensor, int]:
        with self._model():
            _, ep = self._session(session)
            if len(ep.frames) > 1:
                ep.undo()
            return ep.frames[-1][0], len(ep.frames)

    def reset(self, session: str) -> tuple[torch.Tensor, int]:
        with self._model():
            prompt_CHW, _ = self._session(session)
        return self.start(session, prompt_CHW)

    def video(self, session: str) -> bytes:
        """The session's episode as an MP4, one video frame per episode frame."""
        with self._model():
            frames = list(self._session(session)[1].frames)
        frames_THWC = to_uint8_frames(torch.cat(frames).cpu())
        t, h, w, _ = frames_THWC.shape
        return encode_clip(frames_THWC, ClipSpec(fps=self.fps, width=w, height=h, frames=t,
                                                 keyframe_interval=self.fps, crf=18))


# ---------------------------------------------------------------------------- requests
class Handler(RequestHandler):
    server_version = "genie-play"
    csp = CSP
    token_cookie, session_cookie = COOKIE, SESSION
    app: PlayApp  # set on the subclass made by make_play_server

    def _frame(self, frame_CHW: torch.Tensor, n: int) -> None:
        self.reply(200, png(frame_CHW), "image/png",
                   {"Cache-Control": "no-store", "X-Frame": str(n - 1), "X-Frames": str(n)})

    def do_GET(self):
        r = self.begin(self.app.token)
        if r is None:
            return
        path = r[0].path
        try:
            if path in STATIC:
                name, ctype = STATIC[path]
                if name.endswith(".html"):
                    self.start_session()
                body = resources.files("genie_pipeline.training").joinpath(name).read_bytes()
                self.reply(200, body, ctype, {"Cache-Control": "no-cache"})
            elif path == "/api/info":
                self.start_session()
                self.reply_json(self.app.info())
            elif m := re.fullmatch(r"/prompt/([0-9]{1,6})\.png", path):
                thumb = self.app.thumbnail(int(m.group(1)))
                if thumb is None:
                    raise Rejected(404, "no such prompt")
                self.reply(200, thumb, "image/png", {"Cache-Control": "max-age=3600"})
            elif path == "/api/episode.mp4":
                if self.session is None:
                    raise Rejected(403, "forbidden: no session (reload the page)")
                self.reply(200, self.app.video(self.session), "video/mp4",
                           {"Cache-Control": "no-store", "Content-Disposition": 'attachment; filename="episode.mp4"'})
            elif path == "/favicon.ico":
                self.reply(204, b"", "image/x-icon")
            else:
                raise Rejected(404, "not found")
        except Exception as e:  # noqa: BLE001 — answered, never a dead worker
            self._fail(path, e)

    def do_POST(self):
        # until the whole body is read, an answer leaves some of it unread on the connection
        keep_alive, self.close_connection = not self.close_connection, True
        r = self.begin(self.app.token)
        if r is None:
            return
        path, query = r[0].path, r[1]
        try:
            if self.headers.get("X-Genie-Play") != "1":
                raise Rejected(403, "forbidden: POST needs the header X-Genie-Play: 1")
            body = self.read_body(MAX_UPLOAD if path == "/api/start" else 0)
            self.close_connection = not keep_alive
            if self.session is None:
                raise Rejected(403, "forbidden: no session (reload the page)")
            self._post(path, query, body)
        except Exception as e:  # noqa: BLE001
            self._fail(path, e)

    def _post(self, path: str, query: dict[str, list[str]], body: bytes) -> None:
        app, session = self.app, self.session
        if path == "/api/start":
            cfg = app.genie.cfg
            prompt_CHW = (decode_upload(body, cfg.image_height, cfg.image_width, app.max_pixels) if body
                          else app.prompt(_int_arg(query, "prompt")))
            self._frame(*app.start(session, prompt_CHW))
        elif path == "/api/step":
            self._frame(*app.step(session, _int_arg(query, "action")))
        elif path == "/api/undo":
            self._frame(*app.undo(session))
        elif path == "/api/reset":
            self._frame(*app.reset(session))
        else:
            raise Rejected(404, "not found")

    def _fail(self, path: str, e: Exception) -> None:
        if isinstance(e, Rejected):
            self.reply_error(e.status, str(e))
        elif isinstance(e, Busy):
            self.reply(429, b'{"error": "busy: the model is generating for someone else, try again"}',
                       "application/json", {"Retry-After": "1", "Cache-Control": "no-store"})
        elif isinstance(e, ClipFormatError):
            self.reply_error(500, f"cannot encode the episode as MP4: {e}")
        else:
            log.exception("%s %s failed", self.command, path)
            self.reply_error(500, f"{type(e).__name__}: {e}")


def _int_arg(query: dict[str, list[str]], name: str) -> int:
    value = (query.get(name) or [""])[0]
    if not re.fullmatch(r"[0-9]{1,6}", value):
        raise Rejected(400, f"?{name}= must be a whole number, got {value[:40]!r}")
    return int(value)


# ------------------------------------------------------------------------------ serving
def make_play_server(app: PlayApp, host: str = "127.0.0.1", port: int = 8766, *, timeout: float = 60.0,
                     workers: int = 4, max_connections: int = 64) -> GatedHTTPServer:
    """The server for `app` (not yet serving). PermissionError for a host beyond the
    loopback without a token; OSError when the address cannot be bound."""
    check_exposure(host, app.token)
    handler = type("BoundPlayHandler", (Handler,), {"app": app})
    return GatedHTTPServer((host, port), handler, timeout=timeout, workers=workers,
                           max_connections=max_connections, max_body=MAX_UPLOAD)


def serve_play(checkpoint: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8766,
               token: str | None = None, data: str | None = None, steps: int | None = None,
               temperature: float | None = None, greedy: bool = False, seed: int = 0,
               device: str = "cpu", n_prompts: int = 8, max_pixels: int = MAX_PIXELS,
               prompt_detail: bool | None = None, keep_bias: float | None = None) -> None:
    """Serve the play page for the Genie at `checkpoint` until Ctrl-C, offering the first
    frames of up to `n_prompts` validation clips of `data` as prompts (upload only without).
    TrainingError (exit 2) for a host beyond the loopback without a token, a malformed token
    or an address that cannot be bound; DataError when `data` holds no val shards."""
    if token is not None and not TOKEN_RE.match(token):
        raise TrainingError("play.token", "--token must be 8-128 characters of [A-Za-z0-9_-] "
                            "(it travels in the URL and a cookie)")
    try:
        check_exposure(host, token)
    except PermissionError as e:
        raise TrainingError("play.token", str(e)) from None
    genie = load_genie(checkpoint, device)
    cfg = genie.cfg
    prompts = validation_prompts(data, n_prompts, cfg.image_height, cfg.image_width) if data else []
    app = PlayApp(genie, token=token, steps=steps, temperature=temperature, greedy=greedy, seed=seed,
                  prompts=prompts, max_pixels=max_pixels, prompt_detail=prompt_detail, keep_bias=keep_bias)
    try:
        srv = make_play_server(app, host, port)
    except OSError as e:  # address in use, or not an address of this machine
        raise TrainingError("play.port", f"--host/--port: cannot listen on {host}:{port}: {e.strerror or e}") from None
    print(f"playing {checkpoint} ({cfg.image_width}x{cfg.image_height}, {app.num_actions} actions, "
          f"{len(prompts)} prompts)")
    print(f"open {srv.url(token)}  (Ctrl-C to stop)", flush=True)
    srv.serve_until_interrupted()
