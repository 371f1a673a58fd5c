"""Play speed: frames per second of an interactive rollout, cached against uncached.

    .venv/bin/python benchmarks/play.py [--threads 2] [--configs tiny small] [--budget-s 540] [--cell-s 20] [--out benchmarks/results/play.json]

Cells: tiny and small configs x 64x64 and 160x90 frames x MaskGIT steps 1/4/8/25 x the
cached sampler (dynamics and tokenizer decoder run only the new frame against their temporal
KV caches) and the uncached one (every MaskGIT step and every decode re-runs the window).
Both configs use a 16-frame window (`frames=16`; tiny's preset has 8). Random weights:
speed does not depend on training.

Each cell starts from the same 16-frame context (the episode has taken 15 steps, so the
window is full) and times steps from there, up to one whole window cycle (8 steps: the
window restarts once inside it, see models/episode.py) or until `--cell-s` seconds have
passed, at least one frame; then undoes them, so every cell sees the same context. The first
timed step is the restart, so a cell that times fewer than 8 frames charges the cached
sampler its worst step and the uncached one its cheapest (a 9-frame window): conservative. The
context is filled once per config and size with the cached sampler, which then times its
cells, and the uncached sampler takes the episode over (the two give the same frames,
tests/test_play.py). A cell whose estimated time for one frame (its
per-MaskGIT-step time measured at fewer steps, times its steps) would not fit in three
cells' time or in what is left of `--budget-s` is skipped and reported with that estimate.

Goals (issue 8): cached >= 3x uncached at a 16-frame context; >= 5 FPS at 64x64 tiny on
2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from genie_pipeline.models import Genie, count_params, get_config  # noqa: E402

CONFIGS = ("tiny", "small")
SIZES = {"64x64": (64, 64), "160x90": (90, 160)}
STEPS = (1, 4, 8, 25)
WINDOW = 16
CYCLE = WINDOW // 2  # steps between two window restarts


def context_episode(genie: Genie):
    """A cached episode whose window holds WINDOW frames."""
    h, w = genie.cfg.image_height, genie.cfg.image_width
    episode = genie.start(torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)), steps=1,
                          temperature=2.0, seed=0)
    for i in range(WINDOW - 1):
        episode.step(i % genie.cfg.lam.num_actions)
    return episode


def time_cell(episode, steps: int, cell_s: float) -> dict:
    episode.steps = steps
    n, start = 0, time.perf_counter()
    while n < CYCLE and (n == 0 or time.perf_counter() - start < cell_s):
        episode.step(n % episode.num_actions)
        n += 1
    elapsed = time.perf_counter() - start
    for _ in range(n):
        episode.undo()
    return {"frames": n, "seconds": round(elapsed, 3), "fps": round(n / elapsed, 3),
            "s_per_maskgit_step": elapsed / n / steps}


def run(args) -> dict:
    deadline = time.perf_counter() + args.budget_s
    cells = []
    for name in args.configs:
        for size, (h, w) in SIZES.items():
            torch.manual_seed(0)
            genie = Genie(get_config(name, {"image_height": h, "image_width": w, "frames": WINDOW})).eval()
            params = count_params(genie.cfg)
            # filling the window costs about 45 single-frame passes: not worth starting near the end
            episode = context_episode(genie) if deadline - time.perf_counter() > args.budget_s / 4 else None
            for cache in (True, False):  # cached first: the uncached path ignores the caches it leaves
                per_step_s = None
                for steps in STEPS:
                    cell = {"config": name, "size": size, "tokens_per_frame": genie.tokenizer.grid.num_tokens,
                            "dynamics_params": params["dynamics"], "steps": steps, "cached": cache}
                    left = deadline - time.perf_counter()
                    estimate = None if per_step_s is None else per_step_s * steps
                    if episode is None or left <= 0 or (estimate is not None and estimate > min(3 * args.cell_s, left)):
                        cell["skipped"] = ("budget spent" if episode is None or left <= 0 else
                                           f"estimated {estimate:.0f} s per frame (measured per-MaskGIT-step time "
                                           f"x {steps})")
                        cell["estimated_fps"] = None if estimate is None else round(1 / estimate, 4)
                    else:
                        episode.cache = cache  # the uncached path reads only the frames and actions
                        cell.update(time_cell(episode, steps, args.cell_s))
                        per_step_s = cell.pop("s_per_maskgit_step")
                    cells.append(cell)
                    print(json.dumps(cell), flush=True)
    return {"cells": cells, "speedup": speedups(cells)}


def speedups(cells: list[dict]) -> list[dict]:
    """Cached over uncached FPS for every cell measured both ways."""
    fps = {(c["config"], c["size"], c["steps"], c["cached"]): c.get("fps") for c in cells}
    out = []
    for (name, size, steps, cached), value in fps.items():
        other = fps.get((name, size, steps, False))
        if cached and value and other:
            out.append({"config": name, "size": size, "steps": steps, "cached_over_uncached": round(value / other, 2)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--budget-s", type=float, default=540.0, help="whole run")
    ap.add_argument("--cell-s", type=float, default=20.0, help="time one cell for about this long")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "play.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    started = time.perf_counter()
    with torch.no_grad():
        result = run(args)
    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": args.threads,
                    "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "window_frames": WINDOW,
        "note": "fps over up to one 8-step window cycle from a full 16-frame window; the first timed step "
                "restarts the window, so cells with frames < 8 understate the cached speed-up",
        "wall_s": round(time.perf_counter() - started, 1),
        **result,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["speedup"], indent=1))


if __name__ == "__main__":
    main()
