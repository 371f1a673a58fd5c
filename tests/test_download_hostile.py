"""The downloader against hostile servers and URLs, with real yt-dlp and real sockets: internal
addresses (directly, encoded, behind a redirect, as an HLS fragment, through ffmpeg), remote
paths with schemes nobody allowed, servers that trickle, and a killed run's leftovers.

A blocked address is proved unreached with a listener on 127.0.0.2 (loopback, so forbidden
unless allowed) that counts the connections it accepts; the hostile server itself listens on
127.0.0.1, which the tests allow with `allowed_networks: ["127.0.0.1/32"]`.
"""
from __future__ import annotations

import http.server
import socket
import ssl
import threading
import urllib.parse

import pytest
from yt_dlp.downloader.external import FFmpegFD
from yt_dlp.utils import DownloadError

from genie_pipeline.config import ConfigError, parse_config
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.download import Downloader
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.netguard import AddressPolicy, NetGuard, guarded_ydl
from genie_pipeline.shards.records import Candidate

METADATA = "169.254.169.254"
LOOPBACK_ONLY = ["127.0.0.1/32"]


def cand(url=None, path=None, vid="v1"):
    return Candidate(source="t", video_id=vid, url=url, path=path, title="x")


def downloader(tmp_path, **kw) -> Downloader:
    kw = {"retries": 0, "timeout_s": 2, "per_host_rate": 100, **kw}
    return Downloader(DownloadConfig(**kw), str(tmp_path / "scratch"))


def failure(d: Downloader, c: Candidate) -> IngestError:
    with pytest.raises(IngestError) as e:
        d.fetch(c)
    assert e.value.stage == "download"
    return e.value


class Listener:
    """A TCP listener on 127.0.0.2 that counts connections and hangs up on them."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.2", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def url(self, path="/x.mp4", host="127.0.0.2"):
        return f"http://{host}:{self.port}{path}"


class Hostile(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    stop: threading.Event

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(parts.query))
        route = getattr(self, "route_" + parts.path.strip("/").replace(".", "_"), None)
        if route is None:
            self.send_error(404)
            return
        try:
            route(q)
        except OSError:  # the client gave up: what a hostile server wants to cause
            pass

    def route_redirect(self, q):
        self.send_response(302)
        self.send_header("Location", q["to"])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_trickle(self, q):
        """Headers at once, then the body one byte every 5 s."""
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.flush()
        while not self.stop.is_set():
            self.wfile.write(b"\0")
            self.wfile.flush()
            self.stop.wait(5)

    def route_endless_mp4(self, q):
        """A video body with no Content-Length that never ends, as fast as the client reads;
        `sent` counts what went out."""
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.end_headers()
        block = b"\0" * 65536
        while not self.stop.is_set():
            self.wfile.write(block)
            type(self).sent[0] += len(block)

    def route_slowheaders(self, q):
        """A status line, then a header that never ends, one byte every 0.2 s."""
        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Pad: ")
        while not self.stop.is_set():
            self.wfile.write(b"a")
            self.wfile.flush()
            self.stop.wait(0.2)

    def route_hls_m3u8(self, q):
        """A VOD media playlist with one segment at `seg`; `key=1` adds SAMPLE-AES, a feature
        hlsnative hands to ffmpeg."""
        key = '#EXT-X-KEY:METHOD=SAMPLE-AES,URI="data:text/plain;base64,AAAAAAAAAAAAAAAAAAAAAA=="\n' if q.get("key") else ""
        body = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n{key}"
                f"#EXTINF:10.0,\n{q['seg']}\n#EXT-X-ENDLIST\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.apple.mpegurl")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hostile():
    stop = threading.Event()
    handler = type("H", (Hostile,), {"stop": stop, "sent": [0]})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url, srv.sent = f"http://127.0.0.1:{srv.server_address[1]}", handler.sent
    yield srv
    stop.set()
    srv.shutdown()
    srv.server_close()


def self_signed(tmp_path) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    pem = tmp_path / "tls.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pem)
    return ctx


@pytest.fixture
def hostile_tls(tmp_path, small_corpus):
    """The hostile routes over HTTPS, plus /video.mp4 (a real corpus video)."""
    stop = threading.Event()
    video = sorted((small_corpus / "videos").glob("*.mp4"))[0].read_bytes()

    def route_video_mp4(self, q):
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(video)))
        self.end_headers()
        self.wfile.write(video)

    handler = type("H", (Hostile,), {"stop": stop, "route_video_mp4": route_video_mp4})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    srv.socket = self_signed(tmp_path).wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url, srv.video = f"https://127.0.0.1:{srv.server_address[1]}", video
    yield srv
    stop.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.sock.close()


# ------------------------------------------------------------------------------ where
def test_address_policy():
    default, loop = AddressPolicy(), AddressPolicy(networks=LOOPBACK_ONLY)
    for ok in ("8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"):
        assert default.allows(ok), ok
    for bad in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", METADATA, "0.0.0.0", "100.64.0.1",
                "224.0.0.1", "239.1.2.3", "240.0.0.1", "255.255.255.255", "::", "::1", "fe80::1%lo", "fc00::1",
                "ff02::1", f"::ffff:{METADATA}", "::ffff:10.0.0.1", "2002:a9fe:a9fe::1", "64:ff9b::a9fe:a9fe"):
        assert not default.allows(bad), bad
    assert loop.allows("127.0.0.1") and loop.allows("::ffff:127.0.0.1")
    assert not loop.allows("127.0.0.2") and not loop.allows(METADATA)
    assert AddressPolicy(allow_private=True).allows(METADATA)


@pytest.mark.parametrize("url", [f"http://{METADATA}/latest/meta-data/", "http://2852039166/latest/meta-data/",
                                 "http://0xa9fea9fe/", f"http://[::ffff:{METADATA}]/latest/", f"https://{METADATA}/",
                                 f"http://{METADATA}:8080/x.mp4"])
def test_cloud_metadata_address_is_blocked_in_any_spelling(url, tmp_path):
    e = failure(downloader(tmp_path), cand(url))
    assert e.error_type == "BlockedAddress" and METADATA in str(e), str(e)
    assert "after" not in str(e)  # refused, not retried


def test_loopback_is_blocked_by_default_and_never_connected(listener, tmp_path):
    d = downloader(tmp_path)
    for host in ("127.0.0.2", "2130706434", "localhost", "[::1]"):  # 2130706434 is 127.0.0.2
        e = failure(d, cand(f"http://{host}:{listener.port}/x.mp4"))
        assert e.error_type == "BlockedAddress" and host.strip("[]") in str(e), str(e)
    assert listener.accepted == 0


def test_redirect_from_an_allowed_server_to_a_blocked_one_is_refused(hostile, listener, corpus_server, small_corpus,
                                                                      tmp_path):
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY)
    for target in (listener.url(), f"http://{METADATA}/latest/meta-data/iam/"):
        url = f"{hostile.url}/redirect?to={urllib.parse.quote(target, safe='')}"
        e = failure(d, cand(url))
        assert e.error_type == "BlockedAddress", str(e)
        assert urllib.parse.urlsplit(target).hostname in str(e)
    assert listener.accepted == 0  # refused before connecting
    # the same redirect to an allowed address downloads
    f = sorted((small_corpus / "videos").glob("*.mp4"))[0]
    url = f"{hostile.url}/redirect?to={urllib.parse.quote(f'{corpus_server.url}/videos/{f.name}', safe='')}"
    assert open(d.fetch(cand(url)).path, "rb").read() == f.read_bytes()


def test_hls_fragment_on_a_blocked_address_is_not_fetched(hostile, listener, tmp_path):
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY)
    url = f"{hostile.url}/hls.m3u8?seg={urllib.parse.quote(listener.url('/seg0.ts'), safe='')}"
    e = failure(d, cand(url))
    assert e.error_type == "BlockedAddress" and "127.0.0.2" in str(e), str(e)
    assert listener.accepted == 0


def test_ffmpeg_cannot_fetch_around_the_guard(hostile, listener, tmp_path):
    seg = urllib.parse.quote(listener.url("/seg0.ts"), safe="")
    # an external downloader asked for in the config is refused before it starts
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, ytdlp_options={"external_downloader": "ffmpeg"})
    e = failure(d, cand(f"{hostile.url}/hls.m3u8?seg={seg}"))
    assert e.error_type == "ExternalDownloader" and "ffmpeg" in str(e).lower(), str(e)
    # hlsnative would hand a SAMPLE-AES stream to ffmpeg at run time
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY)
    e = failure(d, cand(f"{hostile.url}/hls.m3u8?key=1&seg={seg}", vid="v2"))
    assert e.error_type == "ExternalDownloader", str(e)
    # and should ffmpeg run as a downloader anyway, it reaches no network
    with guarded_ydl({"quiet": True}, NetGuard(AddressPolicy(), 60, 0, 30)) as ydl:
        info = {"id": "x", "ext": "mp4", "protocol": "m3u8", "url": listener.url("/x.m3u8"), "http_headers": {}}
        with pytest.raises(DownloadError, match="ffmpeg exited"):
            FFmpegFD(ydl, ydl.params).download(str(tmp_path / "x.mp4"), info)
    assert listener.accepted == 0


def test_remote_paths_need_an_allowed_scheme(tmp_path):
    d = downloader(tmp_path)
    # issue 24: a catalog's file:// path read the local file whatever allowed_schemes said
    for path in ("s3://bucket/videos/a.mp4", "gs://bucket/a.mp4", "hdfs://nn/a.mp4", "file:///etc/passwd"):
        e = failure(d, cand(path=path))
        assert e.error_type == "DisallowedScheme" and path.split(":")[0] in str(e), str(e)
    # an http(s) path is fetched as a URL: through the guard
    e = failure(d, cand(path=f"http://{METADATA}/latest/meta-data/"))
    assert e.error_type == "BlockedAddress"


def test_allowed_networks_must_be_networks():
    with pytest.raises(ConfigError, match=r"download\.allowed_networks.*'not-a-network' is not a network"):
        parse_config({"sources": [{"type": "urls", "name": "u", "urls": ["https://a/b.mp4"]}],
                      "download": {"allowed_networks": ["127.0.0.0/8", "not-a-network"]}})


# ------------------------------------------------------------------------------ how slow, how long
@pytest.mark.timeout(60)
def test_trickling_body_is_too_slow(hostile, tmp_path):
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, timeout_s=30, min_rate_bytes_s=100, rate_window_s=1)
    e = failure(d, cand(f"{hostile.url}/trickle"))
    assert e.error_type == "TooSlow" and "min_rate_bytes_s" in str(e), str(e)
    assert not list((tmp_path / "scratch").glob("t_v1.*"))  # no .part left behind


@pytest.mark.timeout(60)
@pytest.mark.parametrize("route", ["trickle", "slowheaders"])
def test_deadline_stops_a_download_that_never_ends(route, hostile, tmp_path):
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, timeout_s=30, min_rate_bytes_s=0, deadline_s=2, retries=3)
    e = failure(d, cand(f"{hostile.url}/{route}"))
    assert e.error_type == "Deadline" and "deadline_s" in str(e), str(e)


@pytest.mark.timeout(60)
def test_a_body_without_content_length_is_counted_on_the_wire_and_stopped_at_the_cap(hostile, tmp_path):
    """Issue 24: with max_filesize_mb 5 a server that omitted Content-Length got 314 MB onto
    scratch in 0.3 s; yt-dlp checks only the declared size. Now the body is counted as it is
    read and the download stops at the cap, leaving nothing in scratch."""
    d = downloader(tmp_path, max_filesize_mb=1, allowed_networks=LOOPBACK_ONLY, deadline_s=60)
    e = failure(d, cand(hostile.url + "/endless.mp4"))
    assert e.error_type == "TooLarge", e
    assert "download.max_filesize_mb" in str(e)
    # what left the server: the cap plus what loopback socket buffers hold (~10 MB), where it
    # used to be everything the server could send until the deadline
    assert hostile.sent[0] < 32 * 1024 * 1024, hostile.sent[0]
    assert not list((tmp_path / "scratch").glob("t_v1*"))


def test_scratch_full_is_the_machines_error_not_the_videos(hostile_tls, tmp_path):
    """Issue 24: ENOSPC while yt-dlp writes the video reaches the caller as the OSError it is
    (the ingest stops, as for a full output), not as a failure of the video."""
    import errno

    from tests.conftest import small_tmpfs

    with small_tmpfs(tmp_path / "scratch", "16k") as scratch:
        assert len(hostile_tls.video) > 64 * 1024
        d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, ytdlp_options={"nocheckcertificate": True})
        with pytest.raises(OSError) as e:
            d.fetch(cand(f"{hostile_tls.url}/video.mp4"))
        from genie_pipeline.shards import fs
        assert fs.environment_error(e.value).errno == errno.ENOSPC, repr(e.value)
        assert not isinstance(e.value, IngestError)
        assert not list(scratch.iterdir())  # the partial file is cleared


def test_slow_headers_are_too_slow(hostile, tmp_path):
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, timeout_s=30, min_rate_bytes_s=100, rate_window_s=1)
    assert failure(d, cand(f"{hostile.url}/slowheaders")).error_type == "TooSlow"


@pytest.mark.timeout(60)
def test_https_is_guarded_too(hostile_tls, tmp_path):
    """The TLS socket is the guard's as well: a download works, a trickle is cut, and a
    server that never finishes the TLS handshake meets the deadline."""
    tls = {"nocheckcertificate": True}
    d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, timeout_s=30, min_rate_bytes_s=100, rate_window_s=1,
                   ytdlp_options=tls)
    assert open(d.fetch(cand(f"{hostile_tls.url}/video.mp4")).path, "rb").read() == hostile_tls.video
    assert failure(d, cand(f"{hostile_tls.url}/trickle", vid="v2")).error_type == "TooSlow"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never speaks TLS
    try:
        d = downloader(tmp_path, allowed_networks=LOOPBACK_ONLY, timeout_s=30, deadline_s=2, ytdlp_options=tls)
        e = failure(d, cand(f"https://127.0.0.1:{silent.getsockname()[1]}/x.mp4", vid="v3"))
        assert e.error_type == "Deadline", str(e)
    finally:
        silent.close()


# ------------------------------------------------------------------------------ leftovers
def test_a_killed_runs_leftovers_are_cleared_and_never_taken_for_a_download(corpus_server, small_corpus, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    c = cand(f"{corpus_server.url}/status/404")
    vkey = c.video_key
    leftovers = [f"{vkey}.mp4.part", f"{vkey}.mp4", f"{vkey}.f18.mp4.part", f"{vkey}.mp4.part-Frag3.part",
                 f"{vkey}.mp4.ytdl", f"{vkey}.temp.mp4"]
    others = ["t_v10.mp4.part", f"{vkey}_2.mp4", "t_v.mp4"]
    for name in leftovers + others:
        (scratch / name).write_bytes(b"half a video from a killed run")
    d = downloader(tmp_path, allow_private_networks=True)
    assert failure(d, c).error_type == "HTTP404"  # the stale t_v1.mp4 is not taken as the download
    assert sorted(p.name for p in scratch.iterdir() if not p.name.startswith(".")) == sorted(others)
    # leftovers again, then a real download of the same video: only the real file remains
    for name in leftovers:
        (scratch / name).write_bytes(b"half a video from a killed run")
    f = sorted((small_corpus / "videos").glob("*.mp4"))[0]
    got = d.fetch(cand(f"{corpus_server.url}/videos/{f.name}"))
    assert open(got.path, "rb").read() == f.read_bytes()
    assert sorted(p.name for p in scratch.glob(f"{vkey}.*")) == [f"{vkey}.mp4"]
