"""The downloader against the corpus server with real yt-dlp: backoff on 429, caps, schemes
(job-wide politeness: tests/test_politeness.py)."""
import time

import pytest

from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.download import Downloader
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards.records import Candidate


def cand(url, vid="v1"):
    return Candidate(source="t", video_id=vid, url=url, title="x")


def local(**kw) -> DownloadConfig:
    """The corpus server listens on 127.0.0.1, which the download guard blocks by default."""
    return DownloadConfig(allow_private_networks=True, per_host_rate=100, **kw)


def test_flaky_429_is_retried_with_backoff(corpus_server, small_corpus, tmp_path):
    f = sorted((small_corpus / "videos").glob("*.mp4"))[0]
    url = f"{corpus_server.url}/flaky/2/videos/{f.name}?fresh={time.time()}"
    d = Downloader(local(retries=3, backoff_s=0.01), str(tmp_path))
    got = d.fetch(cand(url))
    assert got.attempts == 3 and got.temporary
    assert open(got.path, "rb").read() == f.read_bytes()  # byte-identical
    assert got.path.startswith(str(tmp_path))


def test_gives_up_after_retries_and_names_the_code(corpus_server, tmp_path):
    d = Downloader(local(retries=1, backoff_s=0.01), str(tmp_path))
    with pytest.raises(IngestError) as e:
        d.fetch(cand(f"{corpus_server.url}/status/500"))
    assert e.value.error_type == "HTTP500" and "after 2 attempt" in str(e.value)
    with pytest.raises(IngestError) as e:
        d.fetch(cand(f"{corpus_server.url}/status/404"))
    assert e.value.error_type == "HTTP404" and "after 1 attempt" in str(e.value)  # 404 is not retried


def test_size_cap_and_schemes(corpus_server, small_corpus, tmp_path):
    f = sorted((small_corpus / "videos").glob("*.mp4"))[0]
    d = Downloader(local(max_filesize_mb=0.001), str(tmp_path))
    with pytest.raises(IngestError) as e:
        d.fetch(cand(f"{corpus_server.url}/videos/{f.name}"))
    # a direct link has no size before the download: yt-dlp stops at Content-Length and
    # leaves no file (TooLarge needs a size the extractor knew in advance)
    assert (e.value.stage, e.value.error_type) == ("download", "NoFile")
    for url in ("file:///etc/passwd", "ftp://x/y.mp4", "javascript:alert(1)", "/relative.mp4"):
        with pytest.raises(IngestError) as e:
            d.fetch(cand(url))
        assert (e.value.stage, e.value.error_type) == ("download", "DisallowedScheme")
    assert not list(tmp_path.glob("*.mp4"))
