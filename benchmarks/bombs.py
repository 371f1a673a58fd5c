"""Pixel bombs against every place a video is opened: peak RSS, before and after the pixel cap.

    python benchmarks/bombs.py [--before DIR]

Each (entry, bomb) runs in its own fresh process under /usr/bin/time (tests/fixtures/bombs.py);
the entry's imports alone are measured too. --before DIR is a checkout of the code to compare
(e.g. `git archive <commit> | tar -x -C DIR`). Goal: every bomb refused under 200 MB peak RSS;
the training decoders import torch (~850 MB before any clip), so there: a refused bomb adds
under 60 MB to what the imports alone peak at.
Writes benchmarks/results/bombs.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import ffmpeg  # noqa: E402
from tests.fixtures.bombs import ENTRIES, peak_rss, write_bombs  # noqa: E402


def measure(root: Path, bombs: dict[str, Path]) -> dict:
    out = {}
    for entry in ENTRIES:
        base, _ = peak_rss(entry, [], root, call=False)
        row = {"imports_mb": round(base)}
        for name, path in bombs.items():
            peak, got = peak_rss(entry, [path], root)
            row[name] = {"peak_mb": round(peak), "outcome": next(iter(got.values()))[:160]}
        out[entry] = row
        print(entry, json.dumps(row), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, help="a checkout of the code before the change")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        bombs = write_bombs(Path(d), ffmpeg())
        sizes = {n: p.stat().st_size for n, p in bombs.items()}
        result = {"machine": platform.machine(), "bomb_bytes": sizes, "after": measure(ROOT, bombs)}
        if args.before:
            result["before"] = measure(args.before, bombs)
    (ROOT / "benchmarks" / "results" / "bombs.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
