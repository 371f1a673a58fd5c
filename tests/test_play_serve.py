"""`play --serve`: the play page in real headless chromium against the real CLI server, and
the server's HTTP contract (token, upload limits, sessions, the busy answer) over real sockets.

The model is a tiny random-weight Genie whose action embedding is scaled up, so that, as
after training, different actions give different frames; sampling is greedy, so the same
state and action give the same frame.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.gate_attack import attack
from genie_pipeline.cli import main
from genie_pipeline.models import Genie, get_config
from genie_pipeline.models.config import config_to_dict
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.training import checkpoint as ckpt_lib
from genie_pipeline.training.bundle import load_genie
from genie_pipeline.training.serve import MAX_UPLOAD, PlayApp, make_play_server
from tests.fixtures.output import write_sprite_output
from tests.test_label_browser import playwright_browser  # noqa: F401 (a fixture: the system chromium)

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = "<img src=x onerror=\"window.__pwned=1\"> jump"
NAMES = [HOSTILE, "right", "left", "up", "down", "fire", "noop", "duck"]
TOKEN = "s3cret-token-123"

torch.set_num_threads(1)  # the shared test machine is oversubscribed; threads spin


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """An export bundle of a tiny Genie with named actions, the first one hostile."""
    torch.manual_seed(0)
    genie = Genie(get_config("tiny", {"image_height": 32, "image_width": 48, "frames": 4})).eval()
    with torch.no_grad():
        genie.dynamics.action_embed.weight.mul_(20)
    path = tmp_path_factory.mktemp("model") / "bundle.pt"
    ckpt_lib.save_atomic({"format": ckpt_lib.FORMAT, "kind": "bundle", "model_config": config_to_dict(genie.cfg),
                          "tokenizer": genie.tokenizer.state_dict(), "lam": genie.lam.state_dict(),
                          "dynamics": genie.dynamics.state_dict(), "action_names": NAMES}, path)
    return path


def _png(width: int, height: int, seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels and holds a thousand bytes of them."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


def _mp4_frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as c:
        return sum(1 for _ in c.decode(video=0))


# ----------------------------------------------------------------------- in the browser
class CliServer:
    """`genie-pipeline play --serve` in a subprocess, on a free port."""

    def __init__(self, *args: str):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "genie_pipeline.cli", "play", "--serve", "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        lines = []
        for line in self.proc.stdout:
            lines.append(line)
            m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if m:
                self.url = m.group(1)
                return
        self.proc.kill()
        raise AssertionError("play server did not start:\n" + "".join(lines))

    def stop(self):
        self.proc.kill()
        self.proc.wait(timeout=30)


def _frame_bytes(page) -> str:
    """The pixels of the frame on screen (RGBA values, comma-separated)."""
    return page.evaluate("() => { const img = document.getElementById('frame'), c = document.createElement('canvas');"
                         " c.width = img.naturalWidth; c.height = img.naturalHeight; const g = c.getContext('2d');"
                         " g.drawImage(img, 0, 0); return g.getImageData(0, 0, c.width, c.height).data.join(','); }")


def _press(page, key: str, frames: int) -> str:
    page.keyboard.press(key)
    page.wait_for_selector(f"body[data-pending='0'][data-frames='{frames}']", timeout=20000)
    return _frame_bytes(page)


def test_play_page_in_chromium(tmp_path, bundle, playwright_browser):  # noqa: F811
    data = tmp_path / "out"
    write_sprite_output(data, n_train_shards=1, clips_per_shard=2, n_val_shards=1,
                        clips=ClipsConfig(fps=8, seconds=2, width=64, height=48))
    srv = CliServer("--checkpoint", str(bundle), "--data", str(data), "--greedy", "--steps", "2")
    context = playwright_browser.new_context(accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(srv.url)
        page.wait_for_selector("body[data-ready='1']", timeout=30000)
        # the hostile action name is shown as text and never runs
        assert page.inner_text("#actions button[data-action='0']") == "1" + HOSTILE
        assert page.evaluate("() => window.__pwned") is None
        # validation clips are offered as thumbnails that load
        assert page.locator("#prompts button").count() == 2
        page.wait_for_function("() => [...document.querySelectorAll('#prompts img')].every(i => i.naturalWidth === 48)")

        # upload a picture: the prompt frame arrives
        picture = tmp_path / "start.png"
        picture.write_bytes(_png(80, 60))
        page.set_input_files("#upload", str(picture))
        page.wait_for_selector("body[data-pending='0'][data-frames='1']", timeout=20000)
        prompt = _frame_bytes(page)

        # two different actions from the same state give different frames; undo goes back
        after_1 = _press(page, "1", 2)
        assert _press(page, "u", 1) == prompt
        after_2 = _press(page, "2", 2)
        assert after_2 != after_1
        assert _press(page, "Backspace", 1) == prompt
        assert _press(page, "1", 2) == after_1  # greedy: the same state and action, the same frame
        _press(page, "ArrowLeft", 3)  # the action named "left"
        assert page.inner_text("#status") == "action 3: left"
        _press(page, "8", 4)
        assert re.fullmatch(r"[0-9]+\.[0-9]", page.inner_text("#fps"))
        assert page.inner_text("#frame-index") == "3"

        # the episode downloads as an MP4: prompt + 3 steps
        with page.expect_download(timeout=20000) as dl:
            page.click("#download")
        assert _mp4_frames(Path(dl.value.path()).read_bytes()) == 4

        # reset: back to the prompt; a thumbnail starts a new episode
        assert _press(page, "r", 1) == prompt
        page.click("#prompts button[data-prompt='1']")
        page.wait_for_selector("body[data-pending='0'][data-frames='1']", timeout=20000)
        assert _frame_bytes(page) != prompt
        assert errors == []
    finally:
        context.close()
        srv.stop()


# ------------------------------------------------------------------------ over HTTP
class Client:
    """One browser's worth of HTTP: keeps its cookies, sends the page's POST header."""

    def __init__(self, port: int, token: str | None = None):
        self.port, self.token, self.cookies = port, token, {}

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        h = {"X-Genie-Play": "1"} if method == "POST" else {}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.token:
            h["X-Genie-Token"] = self.token
        h.update(headers or {})
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        for cookie in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            self.cookies[name] = rest.split(";")[0]
        conn.close()
        return resp, data


@pytest.fixture()
def served(bundle):
    """Start an in-process server for a PlayApp built with the given keywords."""
    servers = []

    def start(**kw):
        app = PlayApp(load_genie(bundle), greedy=True, steps=1, **kw)
        srv = make_play_server(app, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return app, srv.server_address[1]

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def test_a_token_is_required_on_every_request(served):
    _, port = served(token=TOKEN)
    for token in (None, "wrong-token-0000"):
        resp, body = Client(port, token).request("GET", "/api/info")
        assert resp.status == 403 and b"token is required" in body
    resp, _ = Client(port).request("POST", "/api/start?prompt=0")
    assert resp.status == 403
    browser = Client(port)  # the printed URL carries the token once; the cookie carries it on
    resp, _ = browser.request("GET", f"/?token={TOKEN}")
    assert resp.status == 200 and "genie_play_token" in browser.cookies
    resp, _ = browser.request("POST", "/api/start", _png(40, 30), {"Content-Type": "image/png"})
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"


def test_a_host_beyond_the_loopback_needs_a_token(bundle, served, capsys):
    app, _ = served()
    with pytest.raises(PermissionError, match="--token"):
        make_play_server(app, "0.0.0.0", 0)
    assert main(["play", "--checkpoint", str(bundle), "--serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["play", "--checkpoint", str(bundle), "--serve", "--token", "a b"]) == 2
    assert "--token must be" in capsys.readouterr().err


def test_uploads_over_the_size_or_pixel_limit_are_refused(served):
    _, port = served(max_pixels=10_000)
    c = Client(port)
    c.request("GET", "/api/info")  # the session
    # over the byte limit: refused from the Content-Length, before the body is sent
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/api/start")
    for k, v in {"X-Genie-Play": "1", "Content-Type": "image/png", "Content-Length": str(MAX_UPLOAD + 1),
                 "Cookie": "; ".join(f"{k}={v}" for k, v in c.cookies.items())}.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and f"at most {MAX_UPLOAD} bytes" in json.loads(resp.read())["error"]
    conn.close()
    # over the pixel limit: PNGs whose headers claim huge sizes over a few bytes of pixels,
    # refused from the header (decoding them would fail, or take 30 GB)
    for (w, h), says in {(5000, 4000): "5000x4000 is 20000000 pixels, at most 10000",
                         (100_000, 100_000): "at most 10000 pixels"}.items():
        resp, body = c.request("POST", "/api/start", _png_header(w, h), {"Content-Type": "image/png"})
        assert resp.status == 413 and says in json.loads(body)["error"]
    resp, body = c.request("POST", "/api/start", _png(101, 100), {"Content-Type": "image/png"})
    assert resp.status == 413 and "101x100 is 10100 pixels, at most 10000" in json.loads(body)["error"]
    resp, body = c.request("POST", "/api/start", b"<svg onload=alert(1)>", {"Content-Type": "image/svg+xml"})
    assert resp.status == 400 and "not a readable image" in json.loads(body)["error"]
    resp, _ = c.request("POST", "/api/start", _png(100, 100), {"Content-Type": "image/png"})
    assert resp.status == 200


def test_names_reach_the_page_only_as_json(served):
    _, port = served()
    c = Client(port)
    resp, page = c.request("GET", "/")
    assert resp.status == 200 and b"onerror" not in page
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    resp, body = c.request("GET", "/api/info")
    assert resp.headers["Content-Type"] == "application/json" and resp.headers["X-Content-Type-Options"] == "nosniff"
    assert json.loads(body)["actions"] == NAMES


def test_each_session_has_its_own_episode_and_a_busy_model_answers_429(served):
    app, port = served()
    a, b = Client(port), Client(port)
    for c in (a, b):
        c.request("GET", "/api/info")
    assert a.cookies["genie_play_session"] != b.cookies["genie_play_session"]
    resp, body = a.request("POST", "/api/step?action=1")
    assert resp.status == 409 and "no episode" in json.loads(body)["error"]
    assert a.request("POST", "/api/start", _png(40, 30, 1), {"Content-Type": "image/png"})[0].status == 200
    assert b.request("POST", "/api/start", _png(40, 30, 2), {"Content-Type": "image/png"})[0].status == 200
    for i in range(3):  # interleaved, and two at once: each lands in its own episode
        threads = [threading.Thread(target=c.request, args=("POST", f"/api/step?action={i}")) for c in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    a.request("POST", "/api/undo")
    resp, _ = a.request("POST", "/api/step?action=5")
    assert resp.headers["X-Frames"] == "4"
    assert _mp4_frames(a.request("GET", "/api/episode.mp4")[1]) == 4
    assert _mp4_frames(b.request("GET", "/api/episode.mp4")[1]) == 4
    resp, body = a.request("POST", "/api/step?action=8")
    assert resp.status == 400 and "[0, 8)" in json.loads(body)["error"]
    resp, _ = a.request("POST", "/api/step?action=1", headers={"X-Genie-Play": ""})
    assert resp.status == 403
    app.busy_wait = 0.2
    with app.model_lock:  # another request is generating
        resp, body = b.request("POST", "/api/step?action=1")
    assert resp.status == 429 and resp.headers["Retry-After"] == "1" and b"busy" in body
    assert b.request("POST", "/api/step?action=1")[1][:8] == b"\x89PNG\r\n\x1a\n"


def test_readers_that_never_read_cost_the_play_server_only_their_own_connection(bundle):
    """Issue 24: 20 connections x 40 pipelined GETs never read stalled the play server (a normal
    request took 55.7 s): its workers blocked in sendall. It shares the label server's gate
    (shards/httpgate.py), so a slow reader now costs its own connection only."""
    srv = make_play_server(PlayApp(load_genie(bundle), greedy=True, steps=1), "127.0.0.1", 0, timeout=5.0,
                           workers=4)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    attackers = attack(port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1000, conns=20)
    took = []
    try:
        end = time.monotonic() + 10
        while time.monotonic() < end:
            t0 = time.monotonic()
            resp, body = Client(port).request("GET", "/api/info")
            took.append(time.monotonic() - t0)
            assert resp.status == 200 and json.loads(body)
            time.sleep(0.5)
    finally:
        for s in attackers:
            s.close()
        srv.shutdown()
        srv.server_close()
    assert max(took) < 1.0, f"a normal GET took up to {max(took):.1f} s during the attack"
