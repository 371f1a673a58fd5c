"""Shared fixtures: real videos made with ffmpeg, the small sample corpus, a corpus server."""
from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# yt-dlp looks for `ffmpeg` on PATH; the venv has the imageio-ffmpeg binary linked there
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
ROOT = Path(__file__).resolve().parent.parent


def ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def wait_for_file(path: Path, timeout_s: float = 120) -> Path:
    """`path` once it exists (an ingest's report is drawn by a process of its own after the
    run returns: output.report background)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.2)
    return path


def make_video(path: Path, seconds: float, size: str = "640x360", fps: int = 30, src: str = "testsrc2",
               extra: list[str] | None = None, pre: list[str] | None = None) -> Path:
    """A real h264 mp4 from an ffmpeg test source (testsrc2 moves; color=black is black)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [ffmpeg(), "-loglevel", "error", "-y", *(pre or []), "-f", "lavfi",
           "-i", f"{src}=size={size}:rate={fps}" if "=" not in src else src,
           "-t", str(seconds), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast",
           *(extra or []), str(path)]
    subprocess.run(cmd, check=True)
    return path


@pytest.fixture(scope="session")
def small_corpus() -> Path:
    """The embedded sample corpus (small size), rendered once and cached by seed and code
    version under .cache/ (or $GENIE_TEST_CACHE). Tests only read it."""
    from genie_pipeline.corpus.generate import cached_small_corpus

    cache = Path(os.environ.get("GENIE_TEST_CACHE", ROOT / ".cache" / "corpus"))
    return Path(cached_small_corpus(cache))


@pytest.fixture(scope="session")
def corpus_server(small_corpus):
    from genie_pipeline.corpus.serve import CorpusServer

    with CorpusServer(small_corpus) as srv:
        yield srv


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a 2-core machine shared with other work, two OpenMP threads
    spin-wait on each other and run 5-10x slower. Restored afterwards."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# The object-store emulators (tests/emulators.py), one per test module that asks for one
@pytest.fixture(scope="module")
def gcs():
    from tests.emulators import gcs_emulator

    with gcs_emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def s3():
    from tests.emulators import s3_emulator

    with s3_emulator() as emu:
        yield emu


@pytest.fixture(params=["s3", "gs"])
def bucket(request):
    """A fresh bucket on each store in turn."""
    return request.getfixturevalue("s3" if request.param == "s3" else "gcs").bucket()


@contextlib.contextmanager
def serving(handler):
    """`handler` (a BaseHTTPRequestHandler class) served on 127.0.0.1 from a thread; yields
    the server with its base URL as `.url`."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A real tmpfs of `size` (e.g. "100k") mounted at `path` (created) for the block: a disk
    that fills up. Skips the test where mounting is not allowed (not root)."""
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)])
