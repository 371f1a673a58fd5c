"""The download tier against a site that walls per client address, through the real ingest.

    python benchmarks/walls.py [--pool-videos 32] [--one-videos 6] [--runs one,pool,pool_paced,one_deferring]

Site: the sample-corpus server behind walls (genie_pipeline/corpus/wallsite.py): an address
that makes more than `--limit` requests within `--window` seconds meets a 403 bot-check page
("Sign in to confirm you're not a bot") for `--cooldown` seconds. Identities: local forward
proxies (corpus/wallsite.LoopbackProxy), each leaving from its own 127.0.0.x, listed in a
`download.proxies` file; "1 identity" is one proxy. Videos: one 16 s 160×90 h264 file under
distinct URLs (`?n=i`), a `urls` source, `genie-pipeline ingest`'s run_ingest on FnApiRunner
with 2 worker processes (multi_processing), the default clips section.

Runs, each into a fresh output:
- one identity, no pacing (`identity_rate` unset): it runs into the wall, rests
  (identity_rest_s, doubling), goes on; a video still walled after identity_attempts is
  `deferred` and a second run (no --retry-failed) takes it up;
- a pool of 8, no pacing: walls met, the walled identity rests, its work moves on;
- a pool of 8 paced at 90 % of the site's allowed rate per address (`identity_rate`);
- one identity with one attempt a video (`identity_attempts: 1`): walled videos are deferred
  (the failure table says retry next_run) and the second run, without --retry-failed, takes
  them up.

Recorded per run: videos done, videos/min over the download window (first to last request
the site let through) and over the whole run (Beam start-up included), walls the site
raised and wall answers it gave, identity switches (the `identity_walls` counter), videos
deferred by the first run and recovered by the second, videos lost (failed for good after
both; a video still deferred is not lost: the next run takes it up). The site's allowed
rate: identities × limit / window requests per second, divided by the requests a video
takes (counted: requests the site let through / videos).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genie_pipeline.corpus.wallsite import LoopbackProxy, WallRules, WallSite  # noqa: E402


def make_video(path: Path) -> None:
    from genie_pipeline.ingest.download import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=10",
                    "-t", "16.5", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "ultrafast", str(path)],
                   check=True)


def ingest(site: WallSite, proxies_file: Path, out: Path, n: int, download: dict) -> dict:
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import run_ingest

    cfg = parse_config({
        "sources": [{"type": "urls", "name": "wall", "urls": [f"{site.url}/v.mp4?n={i}" for i in range(n)]}],
        "download": {"allowed_networks": ["127.0.0.0/8"], "proxies": str(proxies_file), "per_host_rate": 100.0,
                     "per_host_concurrency": 16, "timeout_s": 10, "deadline_s": 900, **download},
        "runner": {"running_mode": "multi_processing", "direct_num_workers": 2},
        "filters": {"dedupe": {"enabled": False}},
        "output": {"dir": str(out)},
    })
    t0 = time.monotonic()
    stats = run_ingest(cfg)
    return {"wall_s": time.monotonic() - t0, "stats": stats}


def failure_table(out: Path) -> list[dict]:
    """The failure rows of the output (error type and retry), counted."""
    from collections import Counter

    from genie_pipeline.shards.reader import iter_rows

    rows = Counter((r["stage"], r["error_type"], r.get("retry")) for r in iter_rows(str(out), "failures"))
    return [{"stage": s, "error_type": e, "retry": r, "videos": n} for (s, e, r), n in sorted(rows.items())]


def one_run(name: str, corpus: Path, work: Path, n_identities: int, n: int, rules: WallRules,
            download: dict) -> dict:
    proxies = [LoopbackProxy(f"127.0.0.{10 + k}").start() for k in range(n_identities)]
    pfile = work / f"{name}-proxies.txt"
    pfile.write_text("\n".join(p.url() for p in proxies) + "\n")
    out = work / f"{name}-out"
    try:
        with WallSite(corpus, rules) as site:
            first = ingest(site, pfile, out, n, download)
            log1 = list(site.log)
            failures = failure_table(out)
            deferred = first["stats"].get("videos_deferred", 0)
            second = ingest(site, pfile, out, n, download) if deferred else None
            served = [t for t, _, path, walled in log1 if not walled and path == "/v.mp4"]
            walls_raised, wall_answers = sum(site.walls_raised.values()), sum(site.walls_hit.values())
    finally:
        for p in proxies:
            p.stop()
    final = (second or first)["stats"]
    c1 = first["stats"]["last_run"].get("counters", {})
    done1 = first["stats"]["videos_done"]
    window_s = (max(served) - min(served)) if len(served) > 1 else float("nan")
    per_video = len(served) / done1 if done1 else 2.0  # none done: the 2 requests a video takes here
    allowed = n_identities * rules.limit / rules.window_s / per_video * 60
    rate = (done1 - 1) / window_s * 60 if done1 > 1 else 0.0  # n videos span n-1 gaps
    return {
        "run": name, "identities": n_identities, "videos": n, "download": download,
        "videos_done_first_run": done1, "videos_deferred_first_run": deferred,
        "videos_done_after_second_run": final["videos_done"],
        # lost: failed for good; a video still deferred is taken up by the next run
        "videos_lost": final.get("videos_failed", 0), "videos_still_deferred": final.get("videos_deferred", 0),
        "videos_per_min_download_window": round(rate, 2),
        "videos_per_min_whole_run": round(done1 / first["wall_s"] * 60, 2),
        "site_allowed_videos_per_min": round(allowed, 2),
        "share_of_allowed_rate": round(rate / allowed, 3) if allowed else None,
        "requests_per_video": round(per_video, 2),
        "walls_raised": walls_raised, "wall_answers": wall_answers,
        "identity_switches": c1.get("identity_walls", 0), "out_of_identities": c1.get("identity_gave_up", 0),
        "failures_first_run": failures,
        "run_wall_s": round(first["wall_s"], 1),
        "second_run_wall_s": round(second["wall_s"], 1) if second else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool-videos", type=int, default=32)
    ap.add_argument("--one-videos", type=int, default=6)
    ap.add_argument("--limit", type=int, default=2)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--cooldown", type=float, default=30.0)
    ap.add_argument("--runs", default="one,pool,pool_paced,one_deferring")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "walls.json"))
    args = ap.parse_args()
    rules = WallRules(limit=args.limit, window_s=args.window, cooldown_s=args.cooldown)
    rest = {"identity_rest_s": args.cooldown / 2, "identity_rest_max_s": args.cooldown * 4}
    per_identity = args.limit / args.window / 2  # video starts per second an address may make (2 requests each)
    plans = {"one": (1, args.one_videos, rest),
             # one attempt a video: what a wall leaves is deferred, and the second run takes it up
             "one_deferring": (1, args.one_videos, {**rest, "identity_attempts": 1}),
             "pool": (8, args.pool_videos, rest),
             "pool_paced": (8, args.pool_videos, {**rest, "identity_rate": round(0.9 * per_identity, 4)})}
    results = []
    with tempfile.TemporaryDirectory(prefix="walls-") as tmp:
        work = Path(tmp)
        corpus = work / "site"
        corpus.mkdir()
        make_video(corpus / "v.mp4")
        for name in args.runs.split(","):
            n_id, n, download = plans[name]
            r = one_run(name, corpus, work, n_id, n, rules, download)
            print(json.dumps(r), flush=True)
            results.append(r)
            shutil.rmtree(work / f"{name}-out", ignore_errors=True)
    doc = {"site": {"limit_requests": args.limit, "window_s": args.window, "cooldown_s": args.cooldown,
                    "wall": "403 bot-check page per client address"},
           "runner": "FnApiRunner, multi_processing, 2 workers", "runs": results,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
