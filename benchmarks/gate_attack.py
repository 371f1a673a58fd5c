"""The label server's HTTP gate under readers that never read: a normal GET's latency.

    python benchmarks/gate_attack.py [--root DIR] [--seconds 15]

A real output (tests/fixtures/output.py) served by the label server (default settings: 16
workers, 30 s timeout) in this process; 20 attacker connections each pipeline N requests at
once with a 4 KiB receive buffer and never read: clip GETs (9 KB answers), and wrong-Host GETs
(403s). Meanwhile a fresh connection GETs /healthz every 0.5 s. --root DIR measures another
checkout of the code (e.g. `git archive <commit> | tar -x -C DIR`). Goal (issue 24): every
normal GET under 200 ms during each attack. Writes benchmarks/results/gate_attack.json
(merged by --label: before/after).
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def attack(port: int, request: bytes, depth: int, conns: int = 20) -> list[socket.socket]:
    """`conns` connections each sending `request` `depth` times at once and never reading (a
    small receive buffer, so the server's sends fill it soon); the caller closes them."""
    socks = []
    for _ in range(conns):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request * depth)
        socks.append(s)
    return socks


def normal_gets(port: int, seconds: float) -> list[float]:
    took, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        t0 = time.monotonic()
        c.request("GET", "/healthz")
        c.getresponse().read()
        took.append(time.monotonic() - t0)
        c.close()
        time.sleep(0.5)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--label", default="after")
    ap.add_argument("--seconds", type=float, default=15)
    args = ap.parse_args()
    sys.path.insert(0, str(args.root))
    sys.path.insert(1, str(ROOT))
    from genie_pipeline.filtering.quality.label.server import LabelApp, make_server
    from genie_pipeline.filtering.quality.label.store import LabelStore
    from genie_pipeline.shards.reader import ClipIndex
    from tests.fixtures.output import write_quality_output

    d = Path(tempfile.mkdtemp())
    write_quality_output(d / "out", n_good=2, n_bad=2, clips_per_video=2, seed=11)
    app = LabelApp(ClipIndex.open(d / "out"), LabelStore(d / "l.sqlite"), target=8)
    app.prepare_sample()
    key = app.clips[0]["key"]
    attacks = {"pipelined clip GETs, never read (20 x 1000)": (f"GET /clip/{key}.mp4 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 1000),
               "pipelined wrong-Host 403s, never read (20 x 20000)": ("GET /clip/x.mp4 HTTP/1.1\r\nHost: evil.example\r\n\r\n", 20000)}
    result = {}
    for name, (req, depth) in attacks.items():
        srv = make_server(app, "127.0.0.1", 0)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        port = srv.server_address[1]
        socks = attack(port, req.encode(), depth)
        took = normal_gets(port, args.seconds)
        for s in socks:
            s.close()
        srv.shutdown()
        srv.server_close()
        result[name] = {"normal_get_ms_max": round(max(took) * 1000, 1),
                        "normal_get_ms_median": round(statistics.median(took) * 1000, 1), "gets": len(took)}
        print(args.label, name, result[name], flush=True)
    path = ROOT / "benchmarks" / "results" / "gate_attack.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    old[args.label] = {"seconds": args.seconds, "attacks": result}
    path.write_text(json.dumps(old, indent=1) + "\n")


if __name__ == "__main__":
    main()
