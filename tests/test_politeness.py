"""Politeness across workers (ingest/politeness.py): the job-wide per-host budget split among
worker processes, the job-wide back-off in the output, yt-dlp retrying only the failing
request, and secrets (cookie and proxy files) read from any filesystem path. Real servers on
127.0.0.1, real yt-dlp, real worker processes."""
from __future__ import annotations

import http.server
import json
import multiprocessing
import os
import stat
import threading
import time

import pytest

from genie_pipeline.corpus.serve import CorpusServer
from genie_pipeline.ingest.config import DownloadConfig, PreflightError, RunnerConfig
from genie_pipeline.ingest.download import Downloader, check_secret_files
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.politeness import (HostBackoff, HostLimiter, job_worker_processes, retry_after_s,
                                              worker_share)
from genie_pipeline.shards.records import Candidate
from tests.conftest import make_video, serving

DATAFLOW = ["--runner=DataflowRunner", "--project=p", "--region=r", "--temp_location=gs://b/t"]


def cand(url: str, vid: str = "v1") -> Candidate:
    return Candidate(source="t", video_id=vid, url=url, title="x")


def local(**kw) -> DownloadConfig:
    """The test servers listen on 127.0.0.1, which the download guard blocks by default."""
    return DownloadConfig(**{"allowed_networks": ["127.0.0.0/8"], "timeout_s": 10, **kw})


class LoggingServer(CorpusServer):
    """The corpus server, with the arrival time of every request (path?query, time.time())."""

    def __init__(self, root):
        super().__init__(root)
        self.log: list[tuple[str, float]] = []

    def _count(self, path: str, target: str) -> None:
        super()._count(path, target)
        with self._lock:
            self.log.append((target, time.time()))


@pytest.fixture
def site(tmp_path):
    """A small site: /v.mp4 (a real 1 s h264 video) and /page.html, a page whose one
    <video> is /flaky/2/v.mp4 (429 twice, Retry-After: 0, then the video)."""
    root = tmp_path / "site"
    make_video(root / "v.mp4", 1, size="160x90", fps=10)
    (root / "page.html").write_text('<html><head><title>clip</title></head><body>'
                                    '<video src="/flaky/2/v.mp4" type="video/mp4"></video></body></html>')
    with LoggingServer(root) as srv:
        yield srv


# ------------------------------------------------------------------------------ the share
def test_worker_processes_from_runner_options():
    assert job_worker_processes(RunnerConfig(direct_num_workers=3), []) == 3
    assert job_worker_processes(RunnerConfig(direct_num_workers=3, running_mode="multi_threading"), []) == 1
    assert job_worker_processes(RunnerConfig(), ["--runner=DirectRunner", "--direct_num_workers=4",
                                                 "--direct_running_mode=multi_processing"]) == 4
    # Dataflow: VMs x one SDK process per vCPU; harness threads share their process's limiter
    df = RunnerConfig(options=DATAFLOW)
    assert job_worker_processes(df, ["--max_num_workers=50", "--machine_type=n2-standard-8",
                                     "--number_of_worker_harness_threads=12"]) == 400
    assert job_worker_processes(df, ["--max_num_workers=10", "--worker_machine_type=custom-6-30720"]) == 60
    assert job_worker_processes(df, ["--max_num_workers=10", "--machine_type=e2-medium"]) == 20
    assert job_worker_processes(df, ["--num_workers=5", "--autoscaling_algorithm=NONE",
                                     "--machine_type=c3-standard-4-lssd"]) == 20
    assert job_worker_processes(df, ["--max_num_workers=50", "--experiments=no_use_multiple_sdk_containers"]) == 50
    assert job_worker_processes(df, [], override=7) == 7  # download.job_workers wins
    for args, key in [([], "--max_num_workers"), (["--num_workers=5"], "--max_num_workers"),
                      (["--max_num_workers=5"], "--machine_type"),
                      (["--max_num_workers=5", "--machine_type=a2-highgpu-1g"], "--machine_type")]:
        with pytest.raises(PreflightError) as e:
            job_worker_processes(df, args)
        assert e.value.key == key and "download.job_workers" in str(e.value)
    with pytest.raises(PreflightError) as e:
        job_worker_processes(RunnerConfig(name="FlinkRunner"), [])
    assert e.value.key == "download.job_workers"


def test_each_process_takes_its_share():
    cfg = DownloadConfig(per_host_rate=2.0, per_host_concurrency=2)
    assert worker_share(cfg, 1) == worker_share(cfg, 0)
    assert (worker_share(cfg, 1).rate, worker_share(cfg, 1).concurrency) == (2.0, 2)
    big = worker_share(cfg, 50)
    assert big.rate == pytest.approx(0.04) and big.concurrency == 1  # rounded up: every process can work
    assert worker_share(DownloadConfig(per_host_concurrency=5), 3).concurrency == 2


def test_limiter_schedule():
    now = [100.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = HostLimiter(concurrency=2, rate=2.0, clock=lambda: now[0], sleep=sleep)
    assert [lim.reserve("a") for _ in range(3)] == [100.0, 100.5, 101.0]
    assert lim.reserve("b") == 100.0  # hosts are independent
    now[0] = 200.0
    assert lim.reserve("a") == 200.0  # an idle host starts at once
    lim.pace("a")
    assert slept == [0.5] and now[0] == 200.5
    # concurrency: at most two slots of a host at once, across threads
    lim = HostLimiter(concurrency=2, rate=1000.0)
    active, peak, lock = [0], [0], threading.Lock()

    def work():
        with lim.slot("h"):
            with lock:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
            time.sleep(0.05)
            with lock:
                active[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert peak[0] == 2


def _worker(conn, cfg: dict, scratch: str, hosts: str, workers: int, urls: list[str]) -> None:
    d = Downloader(DownloadConfig(**cfg), scratch, backoff_dir=hosts, job_workers=workers)
    conn.send("ready")
    conn.recv()  # go: the workers start together
    out = []
    for i, url in enumerate(urls):
        try:
            out.append(d.fetch(cand(url, f"v{i}")).attempts)
        except IngestError as e:
            out.append(e.error_type)
    conn.send(out)


def run_workers(jobs: list[tuple[dict, str, str, int, list[str]]], timeout: float = 120) -> list[list]:
    """Worker processes (forked: each with its own Downloader, as a Beam worker holds one)
    that start fetching together; what each fetch returned (attempts, or the error type)."""
    ctx = multiprocessing.get_context("fork")
    pipes, procs = [], []
    for job in jobs:
        mine, theirs = ctx.Pipe()
        procs.append(ctx.Process(target=_worker, args=(theirs, *job), daemon=True))
        procs[-1].start()
        pipes.append(mine)
    try:
        for pipe in pipes:
            assert pipe.poll(timeout) and pipe.recv() == "ready"
        for pipe in pipes:
            pipe.send("go")
        results = []
        for pipe in pipes:
            assert pipe.poll(timeout), "a worker process did not finish"
            results.append(pipe.recv())
        return results
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def max_in_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window_s) for t in times)


def test_two_worker_processes_keep_the_job_wide_rate(site, tmp_path):
    """Job-wide 1 start/s for 2 processes: each takes 0.5/s. Counted from the server's log:
    no closed 4 s window holds more than 4 + 2 of the 10 videos (a paced process can have a
    start at both ends of a window); the per-machine limit of before, 1/s in each process,
    lets 10 start within 4 s."""
    rate, window_s, per_worker = 1.0, 4.0, 5
    cfg = {"allowed_networks": ["127.0.0.0/8"], "per_host_rate": rate, "timeout_s": 10}
    jobs = [(cfg, str(tmp_path / f"scratch{w}"), str(tmp_path / "out" / "_hosts"), 2,
             [f"{site.url}/v.mp4?w={w}&i={i}" for i in range(per_worker)]) for w in range(2)]
    results = run_workers(jobs)
    assert results == [[1] * per_worker] * 2
    first: dict[str, float] = {}  # a video's first request (the page) is its start
    for target, t in site.log:
        first.setdefault(target, t)
    assert len(first) == 2 * per_worker
    starts = sorted(first.values())
    assert max_in_window(starts, window_s) <= rate * window_s + 2, [round(t - starts[0], 3) for t in starts]


def test_backoff_record_stops_other_workers_until_it_ends(site, tmp_path):
    hosts = str(tmp_path / "out" / "_hosts")
    # worker 1 meets a 429: its identity (this machine's address) rests at the host for the
    # whole job (backoff_s 3: until now + 3 s); with one attempt, the video is deferred
    [[err]] = run_workers([({"allowed_networks": ["127.0.0.0/8"], "retries": 0, "backoff_s": 3.0,
                             "identity_attempts": 1},
                            str(tmp_path / "s1"), hosts, 2, [f"{site.url}/status/429"])])
    assert err == "HTTP429"
    [record_file] = os.listdir(hosts)
    assert "127" not in record_file and len(record_file) == len("0123456789abcdef.json")  # no raw host as a path
    record = json.loads(open(os.path.join(hosts, record_file)).read())
    assert record["host"].startswith("127.0.0.1 via own-") and record["reason"] == "HTTP 429"
    assert record["strikes"] == 1
    until = record["until"]
    assert until > time.time()
    # worker 2 (this process) with less time than the back-off: fails at once, the host untouched
    seen = len(site.log)
    d = Downloader(local(deadline_s=0.5), str(tmp_path / "s2"), backoff_dir=hosts)
    with pytest.raises(IngestError) as e:
        d.fetch(cand(f"{site.url}/v.mp4?late=1"))
    assert e.value.error_type == "HostBackoff" and "HTTP 429" in str(e.value)
    assert len(site.log) == seen
    # with time enough it waits: its first request arrives after `until`
    d = Downloader(local(), str(tmp_path / "s3"), backoff_dir=hosts)
    d.fetch(cand(f"{site.url}/v.mp4?after=1"))
    assert min(t for target, t in site.log if target == "/v.mp4?after=1") >= until


def test_backoff_doubles_honours_retry_after_and_caches(tmp_path):
    now = [1000.0]
    b = HostBackoff(str(tmp_path), base_s=1.0, max_s=8.0, cache_s=5.0, clock=lambda: now[0], sleep=lambda s: None)
    assert b.strike("h.example", "HTTP 429") == 1001.0
    now[0] = 1000.5  # an answer to a request already in flight: no new strike
    assert b.strike("h.example", "HTTP 429") == 1001.0
    now[0] = 1002.0  # 429 again after the back-off ended: twice as long
    assert b.strike("h.example", "HTTP 429") == 1004.0
    now[0] = 1005.0
    assert b.strike("h.example", "HTTP 429") == 1009.0
    now[0] = 1010.0
    assert b.strike("h.example", "HTTP 429") == 1018.0  # capped at max_s
    now[0] = 1020.0
    assert b.strike("h.example", "HTTP 429", retry_after_s=30) == 1050.0  # Retry-After wins
    now[0] = 2000.0  # long after: a fresh start
    assert b.strike("h.example", "HTTP 429") == 2001.0
    # another worker reads the record, from its cache for cache_s
    other = HostBackoff(str(tmp_path), 1.0, 8.0, cache_s=5.0, clock=lambda: now[0], sleep=lambda s: None)
    assert other.current("h.example")["until"] == 2001.0
    now[0] = 2000.5
    b.strike("h.example", "HTTP 429", retry_after_s=100)
    assert other.current("h.example")["until"] == 2001.0  # cached
    now[0] = 2006.0
    assert other.current("h.example")["until"] == 2100.5
    assert retry_after_s("120") == 120.0 and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_media_429_is_retried_without_fetching_the_page_again(site, tmp_path):
    d = Downloader(local(retries=3, backoff_s=0.05), str(tmp_path / "scratch"), backoff_dir=str(tmp_path / "hosts"))
    got = d.fetch(cand(f"{site.url}/page.html"))
    assert open(got.path, "rb").read() == (site.root / "v.mp4").read_bytes()
    assert site.hits("/page.html") == 1  # extracted once
    assert site.hits("/flaky/2/v.mp4") == 3  # 429, 429, 200
    assert got.attempts == 3


def test_bot_wall_page_rests_the_identity_and_defers_the_video(tmp_path):
    """A 403 whose HTML page is a captcha: a strike for (host, identity), and yt-dlp still gets
    the page; out of identity attempts, the video fails BotWall, which a later run retries."""

    class Wall(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b"<html><body>Please solve this CAPTCHA to continue</body></html>"
            self.send_response(403)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Retry-After", "3")
            self.end_headers()
            self.wfile.write(body)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Wall)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        hosts = tmp_path / "hosts"
        d = Downloader(local(retries=0, identity_attempts=1), str(tmp_path / "s"), backoff_dir=str(hosts))
        with pytest.raises(IngestError) as e:
            d.fetch(cand(f"http://127.0.0.1:{srv.server_address[1]}/watch"))
        assert e.value.error_type == "BotWall" and "HTTP Error 403" in str(e.value)
        assert e.value.failure(cand("x")).retry == "next_run"
        [record] = [json.loads(p.read_text()) for p in hosts.iterdir()]
        assert record["reason"] == "bot wall (HTTP 403 page)" and record["until"] >= time.time() + 1
    finally:
        srv.shutdown()
        srv.server_close()


# ------------------------------------------------------------------------------ secrets
class CookieEcho(http.server.BaseHTTPRequestHandler):
    """Serves `video` and records each request's Cookie header."""

    video: bytes
    cookies: list

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.cookies.append(self.headers.get("Cookie"))
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(self.video)))
        self.end_headers()
        self.wfile.write(self.video)


@pytest.fixture
def cookie_echo(tmp_path):
    handler = type("H", (CookieEcho,), {"video": make_video(tmp_path / "c.mp4", 1, "160x90", 10).read_bytes(),
                                        "cookies": []})
    with serving(handler) as srv:
        srv.cookies = handler.cookies
        yield srv


COOKIES = "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tsecret-42\n"


def test_cookiefile_from_a_bucket_reaches_ytdlp_as_a_private_copy(cookie_echo, tmp_path):
    from tests.emulators import s3_emulator

    from genie_pipeline.shards import fs

    with s3_emulator() as emu:
        remote = fs.join(emu.bucket(), "secrets", "cookies.txt")
        fs.write_bytes(remote, COOKIES.encode())
        d = Downloader(local(cookiefile=remote), str(tmp_path / "s"))
        assert stat.S_IMODE(os.stat(d.cookiefile).st_mode) == 0o600
        assert open(d.cookiefile).read() == COOKIES
        d.fetch(cand(f"{cookie_echo.url}/v.mp4"))
    assert cookie_echo.cookies and all(c == "session=secret-42" for c in cookie_echo.cookies)
    copy = d.cookiefile
    del d
    assert not os.path.exists(copy)  # the worker's copy goes with it


def test_proxy_file_and_its_credentials(tmp_path):
    with pytest.raises(ValueError) as e:
        DownloadConfig(proxy="http://p:1", proxy_file="gs://b/proxy.txt")
    assert "download.proxy and download.proxy_file" in str(e.value)
    secret = tmp_path / "proxy.txt"
    secret.write_text("http://user:hunter2@127.0.0.1:9\n")  # nothing listens on port 9
    d = Downloader(local(proxy_file=f"file://{secret}", retries=0, allow_private_networks=True), str(tmp_path / "s"))
    assert d.proxy == "http://user:hunter2@127.0.0.1:9"
    with pytest.raises(IngestError) as e:
        d.fetch(cand("http://127.0.0.1:9/v.mp4"))
    assert "hunter2" not in str(e.value) and "user:" not in str(e.value)
    secret.write_text("not a url")
    with pytest.raises(IngestError) as e:
        Downloader(local(proxy_file=str(secret)), str(tmp_path / "s"))
    assert e.value.error_type == "ProxyFile" and "not a url" not in str(e.value)
    missing = str(tmp_path / "missing.txt")
    with pytest.raises(IngestError) as e:
        Downloader(local(cookiefile=missing), str(tmp_path / "s"))
    assert e.value.error_type == "CookieFile"
    # before any work starts
    check_secret_files(local(proxy_file=str(secret)))
    for kw, key in (({"cookiefile": missing}, "download.cookiefile"), ({"proxy_file": missing}, "download.proxy_file")):
        with pytest.raises(PreflightError) as e:
            check_secret_files(local(**kw))
        assert e.value.key == key and "does not exist" in str(e.value)
