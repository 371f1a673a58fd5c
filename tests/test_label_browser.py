"""The labelling page in a real headless browser (Debian chromium driven by Playwright).

Label ten clips with real key presses, undo one, SIGKILL the server, start it again, reload:
the nine labels are there. Also: the clip plays, a title holding <script> shows as text.
Without a browser the test is skipped locally and FAILS in CI (CI=true).
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genie_pipeline.filtering.quality.label.store import LabelStore  # noqa: E402
from genie_pipeline.shards.reader import ClipIndex  # noqa: E402
from tests.fixtures.output import write_quality_output  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GENIE_CHROMIUM", "/usr/bin/chromium")  # Debian's chromium
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCRIPT_TITLE = "<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned=2\"> Kangaroo"


def _need(what: str):
    msg = f"{what} is required for the labelling page test (apt-get install chromium; pip install playwright)"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="module")
def playwright_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright python package")
    if not os.path.exists(CHROMIUM):
        _need(CHROMIUM)
    with sync_playwright() as p:
        # never `playwright install` (no download here): the system browser
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


class Server:
    def __init__(self, out: Path, db: Path):
        self.out, self.db, self.proc, self.url = out, db, None, None

    def start(self):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "genie_pipeline.cli", "label", str(self.out),
             "--set", f"filters.quality.labels_db={self.db}", "--port", "0",
             "--target", "12", "--labeller", ""],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        deadline = time.time() + 60
        lines = []
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            if m:
                self.url = m.group(1)
                return self
        self.proc.kill()
        raise AssertionError("label server did not start:\n" + "".join(lines))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_label_page_in_chromium(tmp_path, playwright_browser):
    out = tmp_path / "out"
    write_quality_output(out, n_good=3, n_bad=3, clips_per_video=2, seed=7, titles={0: SCRIPT_TITLE})
    db = tmp_path / "labels.sqlite"
    srv = Server(out, db).start()
    page = playwright_browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(srv.url + "?labeller=tester")
        page.wait_for_selector("body[data-ready='1']", timeout=30000)
        assert page.input_value("#labeller") == "tester"
        assert page.inner_text("#progress-text").startswith("0 / 12")

        # the clip plays in the page (h264 160x90 from the clip store)
        page.wait_for_selector("#video:not([hidden])", timeout=5000)
        video = page.evaluate("() => { const v = document.getElementById('video');"
                              " return {w: v.videoWidth, loop: v.loop, err: v.error && v.error.code} }")
        deadline = time.time() + 20
        while video["w"] == 0 and video["err"] is None and time.time() < deadline:
            time.sleep(0.2)
            video = page.evaluate("() => { const v = document.getElementById('video');"
                                  " return {w: v.videoWidth, loop: v.loop, err: v.error && v.error.code} }")
        assert video == {"w": 160, "loop": True, "err": None}

        # ten labels with real key presses; never the same video twice in a row
        labelled, videos = [], []
        for i in range(10):
            key = page.get_attribute("body", "data-key")
            videos.append(page.inner_text("#video-id"))
            assert key not in labelled
            labelled.append((key, "good" if i % 3 else "bad"))
            page.keyboard.press("g" if i % 3 else "b")
            page.wait_for_selector(f"body:not([data-key='{key}'])", timeout=10000)
        assert all(a != b for a, b in zip(videos, videos[1:]))
        page.keyboard.press("u")  # undo the tenth
        page.wait_for_selector("body[data-pending='0']", timeout=20000)
        page.wait_for_selector(f"body[data-key='{labelled[-1][0]}']", timeout=10000)
        assert page.inner_text("#current") == "none"
        assert page.inner_text("#progress-text").startswith("9 / 12")
        assert int(page.inner_text("#n-good")) + int(page.inner_text("#n-bad")) == 9

        # the server dies without warning; a new one serves the same database; reload
        srv.kill()
        srv.start()
        page.goto(srv.url + "?labeller=tester")
        page.wait_for_selector("body[data-ready='1']", timeout=30000)
        assert page.inner_text("#progress-text").startswith("9 / 12")
        want = dict(labelled[:9])
        with LabelStore(db, readonly=True) as st:
            got = {e["key"]: e["label"] for e in st.current_labels() if e["labeller"] == "tester"}
            assert all(isinstance(e["ts"], float) and e["ts"] > 1e9 for e in st.current_labels())
        assert got == want
        # the page resumes at the first clip this labeller has not labelled
        assert page.get_attribute("body", "data-key") not in want

        # arrows move; the hostile title is shown as text and never runs
        script_keys = {c.key for c in ClipIndex.open(out).clips.values() if c.title == SCRIPT_TITLE}
        for _ in range(12):
            page.keyboard.press("ArrowLeft")
        assert page.inner_text("#pos") == "1 / 12"
        for _ in range(12):
            if page.get_attribute("body", "data-key") in script_keys:
                break
            page.keyboard.press("ArrowRight")
        script_key = page.get_attribute("body", "data-key")
        assert script_key in script_keys
        assert page.inner_text("#title") == SCRIPT_TITLE
        assert page.locator("#title img, #title script").count() == 0
        assert page.evaluate("() => window.__pwned === undefined")
        page.keyboard.press("ArrowLeft")
        assert page.get_attribute("body", "data-key") != script_key
        # the buttons do what the keys do
        page.click("#btn-next")
        page.click("#btn-good")
        page.wait_for_selector("body[data-pending='0']", timeout=20000)
        assert page.inner_text("#progress-text").startswith(("10 / 12", "9 / 12"))
        assert not errors, errors
    finally:
        page.close()
        if srv.proc.poll() is None:
            srv.proc.terminate()
            srv.proc.wait(timeout=30)
