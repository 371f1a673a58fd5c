"""Egress identities (ingest/identity.py) against a site that walls per client address
(genie_pipeline/corpus/wallsite.py), reached through real local proxies, each leaving from its
own 127.0.0.x address; real yt-dlp, real video."""
from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from genie_pipeline.corpus.wallsite import LoopbackProxy, WallRules, WallSite
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.download import Downloader
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.ingest.pipeline import DONE, REDO, resume_markers
from genie_pipeline.shards.commit import commit_run
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.records import Candidate
from tests.conftest import make_video


def cand(url: str, vid: str) -> Candidate:
    return Candidate(source="t", video_id=vid, url=url, title="x")


def local(**kw) -> DownloadConfig:
    return DownloadConfig(**{"allowed_networks": ["127.0.0.0/8"], "timeout_s": 10, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wallsite")
    for i in range(3):
        make_video(root / f"v{i}.mp4", 1, size="160x90", fps=10)
    return root


@pytest.fixture
def proxies():
    started = [LoopbackProxy(f"127.0.0.{k}", credentials="scout:hunter2" if k == 3 else None).start()
               for k in (2, 3, 4)]
    yield started
    for p in started:
        p.stop()


def get(url: str, proxy: str | None = None) -> tuple[int, bytes]:
    handlers = [urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_site_walls_an_address_not_a_proxy_behind_another_and_lifts_the_wall(corpus, proxies):
    rules = WallRules(limit=2, window_s=30, cooldown_s=1.5, token_paths=frozenset({"/v2.mp4"}),
                      slow_bytes_s=20_000)
    with WallSite(corpus, rules) as site:
        assert [get(f"{site.url}/v0.mp4")[0] for _ in range(3)] == [200, 200, 403]
        code, page = get(f"{site.url}/v0.mp4")
        assert code == 403 and b"confirm you're not a bot" in page
        # the same site from 127.0.0.2 (the proxy's source address): not walled
        assert get(f"{site.url}/v0.mp4", proxies[0].url())[0] == 200
        assert site.walls_raised == {"127.0.0.1": 1} and site.served["127.0.0.2"] == 1
        time.sleep(1.6)  # the cool-down passes
        assert get(f"{site.url}/v0.mp4")[0] == 200
        # a token video: refused without the token the provider endpoint gives, served with it
        assert get(f"{site.url}/v2.mp4", proxies[1].url())[0] == 403
        token = get(f"{site.url}/pot?path=/v2.mp4", proxies[2].url())[1].decode()
        code, body = get(f"{site.url}/v2.mp4?pot={token}", proxies[2].url())
        assert code == 200 and body == (corpus / "v2.mp4").read_bytes()
        # the slow stream keeps to its rate
        t0 = time.monotonic()
        code, body = get(f"{site.url}/slow/v1.mp4", proxies[0].url())
        assert code == 200 and len(body) / (time.monotonic() - t0) < 20_000 * 1.5
        # a proxy that wants credentials refuses a request without them
        assert get(f"{site.url}/v0.mp4", proxies[1].url().replace("scout:hunter2@", ""))[0] == 407


def test_a_pool_rotates_rests_walled_identities_and_loses_no_video(corpus, proxies, tmp_path, caplog):
    """Three proxies, a site that walls an address after 3 requests in 30 s for 2 s: eight
    videos all arrive, walls are met and each walled identity rests while the others go on."""
    pool = tmp_path / "proxies.txt"
    pool.write_text("# pool\n" + "\n".join(p.url() for p in proxies) + "\n")
    counts: dict[str, int] = {}
    hosts = tmp_path / "hosts"
    with caplog.at_level(logging.DEBUG), WallSite(corpus, WallRules(limit=3, window_s=30, cooldown_s=2)) as site:
        d = Downloader(local(proxies=str(pool), identity_rest_s=2.0), str(tmp_path / "s"), backoff_dir=str(hosts),
                       count=lambda name, n=1: counts.__setitem__(name, counts.get(name, 0) + n))
        got = [d.fetch(cand(f"{site.url}/v{i % 2}.mp4?n={i}", f"v{i}")) for i in range(8)]
    assert all(Path(g.path).stat().st_size == (corpus / "v0.mp4").stat().st_size for g in got[::2])
    assert sum(site.walls_hit.values()) >= 1 and counts["identity_walls"] >= 1
    assert set(site.served) == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}  # never the worker's own address
    assert all(p.requests > 0 for p in proxies)
    # the rest is per (site, identity): records named by hashed identity, never the proxy URL
    records = [p.read_text() for p in hosts.iterdir()]
    assert records and all("via proxy-" in r and "hunter2" not in r and "127.0.0.1:" not in r for r in records)
    assert "hunter2" not in caplog.text and all("hunter2" not in i.name for i in d.pool.identities)


def test_a_dead_proxy_is_retired_and_counted_and_the_video_goes_through_another(corpus, proxies, tmp_path):
    dead = LoopbackProxy("127.0.0.9").start()
    dead_url = dead.url()
    dead.stop()  # nothing listens there any more
    pool = tmp_path / "proxies.txt"
    pool.write_text(f"{dead_url}\n{proxies[0].url()}\n")
    counts: dict[str, int] = {}
    with WallSite(corpus, WallRules(limit=100)) as site:
        d = Downloader(local(proxies=str(pool), proxy_max_failures=1), str(tmp_path / "s"),
                       count=lambda name, n=1: counts.__setitem__(name, counts.get(name, 0) + n))
        d.fetch(cand(f"{site.url}/v0.mp4", "v0"))
    assert counts.get("proxies_retired") == 1 and d.pool.live() == 1
    assert site.served == {"127.0.0.2": site.served["127.0.0.2"]}


def test_a_walled_video_is_deferred_and_the_next_run_retries_it_unasked(corpus, tmp_path):
    """One identity, walled, one attempt: BotWall, retry next_run; in the output its video is
    `deferred`, which resume hands back (REDO) without --retry-failed; a 404 stays failed."""
    with WallSite(corpus, WallRules(limit=0, cooldown_s=60)) as site:
        d = Downloader(local(identity_attempts=1), str(tmp_path / "s"), backoff_dir=str(tmp_path / "hosts"))
        with pytest.raises(IngestError) as walled:
            d.fetch(cand(f"{site.url}/v0.mp4", "walled"))
    with WallSite(corpus, WallRules(limit=100)) as site:
        with pytest.raises(IngestError) as gone:
            Downloader(local(), str(tmp_path / "s2")).fetch(cand(f"{site.url}/nothing.mp4", "gone"))
    assert walled.value.error_type == "BotWall" and gone.value.error_type == "HTTP404"
    failures = [walled.value.failure(cand("u", "walled")), gone.value.failure(cand("u", "gone"))]
    assert [f.retry for f in failures] == ["next_run", "no"]
    out = str(tmp_path / "out")
    commit_run(out, candidates=[], failures=failures, videos=[], shard_records=[], stats={},
               spec=ClipsConfig().spec, cleanup=[])
    markers = dict(resume_markers(out, retry_failed=False))
    assert markers == {"t_walled": REDO, "t_gone": DONE}
    from genie_pipeline.shards.reader import iter_rows

    rows = {r["video_key"]: r for r in iter_rows(out, "failures")}
    assert rows["t_walled"]["retry"] == "next_run" and rows["t_gone"]["retry"] == "no"
    assert {r["video_key"]: r["status"] for r in iter_rows(out, "videos")} == {"t_walled": "deferred",
                                                                               "t_gone": "failed"}


def test_identity_rate_holds_across_downloaders_sharing_the_records(corpus, proxies, tmp_path):
    """Two downloaders (two worker processes' worth) share one proxy at identity_rate 0.5/s
    through the start records in the output: the site sees that address start a video every
    2 s (1.5 s allowing for the time yt-dlp takes from its turn to its request), although each downloader alone would start its next video at once."""
    import threading

    pool = tmp_path / "proxies.txt"
    pool.write_text(proxies[0].url() + "\n")
    hosts = str(tmp_path / "hosts")
    with WallSite(corpus, WallRules(limit=1000)) as site:
        ds = [Downloader(local(proxies=str(pool), identity_rate=0.5), str(tmp_path / f"s{w}"), backoff_dir=hosts,
                         job_workers=2) for w in range(2)]

        def work(w: int) -> None:
            for i in range(3):
                ds[w].fetch(cand(f"{site.url}/v0.mp4?w={w}&i={i}", f"w{w}i{i}"))

        threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert {address for _, address, _, _ in site.log} == {"127.0.0.2"}
    # a video's requests (page, media) come together; its start is the first after a pause
    arrivals = sorted(t for t, _, _, _ in site.log)
    starts = [arrivals[0]] + [b for a, b in zip(arrivals, arrivals[1:]) if b - a > 1.0]
    assert len(starts) == 6 and min(b - a for a, b in zip(starts, starts[1:])) >= 1.5, \
        [round(t - arrivals[0], 2) for t in arrivals]
