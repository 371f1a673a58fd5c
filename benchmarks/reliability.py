"""Two attacks of issue 24 against a checkout of the code, before and after its fixes.

    python benchmarks/reliability.py --before DIR [--wire-before DIR]

- `wire`: a server sends a video body without Content-Length as fast as it is read, with
  download.max_filesize_mb 5 (deadline 20 s): bytes that left the server, the scratch folder's
  peak size, seconds, the outcome.
- `rows_manifest`, `rows_videos`: a real output of two videos (one kept clip, one clip
  rejected as black), every part of one table truncated (it no longer opens), ingest run twice
  more: the two videos' rows in manifest and videos before, after each run, and verify's
  problems.

Each probe runs in its own process with the checkout first on PYTHONPATH (its cwd), so DIR can
be `git archive <commit> | tar -x -C DIR`: --before for the rows (the commit before the
restoring one), --wire-before for the wire (the commit before the size was counted on the
wire; default --before). Writes benchmarks/results/reliability.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def probe_wire() -> dict:
    import http.server
    import resource

    from genie_pipeline.ingest.config import DownloadConfig
    from genie_pipeline.ingest.download import Downloader
    from genie_pipeline.shards.records import Candidate

    sent, stop = [0], threading.Event()

    class Endless(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            try:
                while not stop.is_set():
                    self.wfile.write(b"\0" * 65536)
                    sent[0] += 65536
            except OSError:
                pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    scratch, peak = tempfile.mkdtemp(), [0]

    def size() -> int:
        return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(scratch) for f in files
                   if os.path.exists(os.path.join(r, f)))

    def watch():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], size())
            except OSError:
                pass
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    d = Downloader(DownloadConfig(max_filesize_mb=5, retries=0, timeout_s=5, allowed_networks=["127.0.0.1/32"],
                                  deadline_s=20, min_rate_bytes_s=0), scratch)
    t0 = time.monotonic()
    try:
        d.fetch(Candidate(source="t", video_id="v1", url=f"http://127.0.0.1:{srv.server_address[1]}/v.mp4", title="x"))
        outcome = "downloaded"
    except Exception as e:  # noqa: BLE001 — the outcome is what is measured
        outcome = f"{getattr(e, 'error_type', type(e).__name__)}: {str(e)[:100]}"
    seconds = time.monotonic() - t0
    time.sleep(0.05)
    stop.set()
    return {"outcome": outcome, "seconds": round(seconds, 2), "wire_mb": round(sent[0] / 2**20, 1),
            "scratch_peak_mb": round(peak[0] / 2**20, 1), "scratch_left_mb": round(size() / 2**20, 1),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def probe_rows(table: str) -> dict:
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import run_ingest
    from genie_pipeline.shards.reader import read_rows
    from genie_pipeline.shards.verify import verify
    from tests.conftest import make_video

    tmp = Path(tempfile.mkdtemp())
    rows = [{"id": "dark", "path": str(make_video(tmp / "dark.mp4", 17, src="color=black")), "title": "dark"}] + \
           [{"id": f"v{i}", "path": str(make_video(tmp / f"v{i}.mp4", s)), "title": f"video {i}"}
            for i, s in enumerate([17, 33])]
    out = str(tmp / "out")

    def ingest(rs) -> float:
        (tmp / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rs) + "\n")
        t0 = time.monotonic()
        run_ingest(parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp / "c.jsonl"),
                                              "keywords": "none"}],
                                 "runner": {"running_mode": "in_memory"}, "output": {"dir": out}}))
        return round(time.monotonic() - t0, 1)

    def count() -> dict:
        return {t: sum(r["video_id"] in ("dark", "v0") for r in read_rows(out, t)) for t in ("manifest", "videos")}

    ingest(rows[:2])
    result = {"rows_before": count()}
    parts = list((tmp / "out" / table).glob("part-*.parquet"))
    for part in parts:
        part.write_bytes(part.read_bytes()[:40])
    result["parts_truncated"] = len(parts)
    result["next_run_s"] = ingest(rows)
    result["rows_after_next_run"] = count()
    problems = verify(out)
    result["verify_problems"], result["first_problem"] = len(problems), problems[:1]
    ingest(rows)
    result["rows_after_the_run_after"] = count()
    result["verify_problems_then"] = len(verify(out))
    return result


def run_probe(tree: Path, name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", name], cwd=tree, env=env,
                       capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise SystemExit(f"{name} in {tree} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path)
    ap.add_argument("--wire-before", type=Path)
    ap.add_argument("--probe")
    a = ap.parse_args()
    if a.probe:
        print(json.dumps(probe_wire() if a.probe == "wire" else probe_rows(a.probe.removeprefix("rows_"))))
        return
    probes = ("wire", "rows_manifest", "rows_videos")
    res = {"after": {n: run_probe(ROOT, n) for n in probes}}
    if a.before:
        res["before"] = {n: run_probe(a.wire_before or a.before if n == "wire" else a.before, n) for n in probes}
    dest = ROOT / "benchmarks" / "results" / "reliability.json"
    dest.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
