"""Run logging: console progress, `metrics.csv`, TensorBoard scalars, PNG/GIF samples.

`metrics.csv` is long-format (`wall_time,phase,step,name,value`) so both phases, whose
metrics differ, share one file; `pandas.read_csv(...).pivot_table(index=["phase", "step"],
columns="name", values="value")` gives the wide table. On resume the rows past the resumed
step are dropped first, so the file reads like one uninterrupted run.
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .config import PHASES

CSV_FIELDS = ["wall_time", "phase", "step", "name", "value"]


def truncate_metrics(path: str | os.PathLike, phase: str, step: int) -> None:
    """Drop rows of `phase` after `step` and rows of later phases (before resuming at `step`)."""
    path = Path(path)
    if not path.exists():
        return
    later = set(PHASES[PHASES.index(phase) + 1 :]) if phase in PHASES else set()
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f)
                if not ((r["phase"] == phase and int(r["step"]) > step) or r["phase"] in later)]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike, name: str = "loss", phase: str | None = None) -> list[tuple[str, int, float]]:
    """(phase, step, value) of one metric, in file order."""
    with open(path, newline="") as f:
        return [(r["phase"], int(r["step"]), float(r["value"])) for r in csv.DictReader(f)
                if r["name"] == name and (phase is None or r["phase"] == phase)]


def _clock(seconds: float) -> str:
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


class MetricsLogger:
    """Writes only on rank 0 (`enabled=False` elsewhere)."""

    def __init__(self, out_dir: str | os.PathLike, phase: str, total_steps: int, enabled: bool = True,
                 resume_step: int | None = None, tensorboard: bool = True, stream=None):
        self.out_dir = Path(out_dir)
        self.phase = phase
        self.total = total_steps
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.t0 = time.time()
        self.first_step: int | None = None  # the first step logged, with its time: the rate is measured from it
        self.resume_step = resume_step
        self.tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.out_dir / "metrics.csv"
        if resume_step is not None:
            truncate_metrics(self.csv_path, phase, resume_step)
        new = not self.csv_path.exists()
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, CSV_FIELDS)
        if new:
            self._csv.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"),
                                        purge_step=(resume_step + 1) if resume_step is not None else None)
            except Exception as e:  # tensorboard missing or broken: csv and console still work
                print(f"[train] TensorBoard disabled: {e}", file=sys.stderr)

    def log(self, step: int, values: Mapping[str, float], console: bool = True) -> None:
        if not self.enabled:
            return
        now = time.time()
        for k, v in values.items():
            v = float(v)
            self._csv.writerow({"wall_time": f"{now:.3f}", "phase": self.phase, "step": step, "name": k, "value": repr(v)})
            if self.tb is not None and math.isfinite(v):
                self.tb.add_scalar(f"{self.phase}/{k}", v, step)
        self._csv_file.flush()
        if console:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items() if k in CONSOLE_KEYS)
            print(f"[train {self.phase}] step {step}/{self.total} {shown}{self._rate(step, now)}",
                  file=self.stream, flush=True)

    def _rate(self, step: int, now: float) -> str:
        """` 2.1 steps/s, eta 00:45` from the steps since the first line (its step's cost,
        start-up included, is left out), once there are any."""
        if self.first_step is None:
            self.first_step, self.first_t = step, now
            return ""
        done = step - self.first_step
        if done <= 0 or now <= self.first_t:
            return ""
        rate = done / (now - self.first_t)
        left = max(0, self.total - step) / rate
        return f" {rate:.3g} steps/s, eta {_clock(left)}"

    def image(self, step: int, tag: str, grid_HWC: np.ndarray) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(f"{self.phase}/{tag}", grid_HWC, step, dataformats="HWC")

    def close(self) -> None:
        if not self.enabled:
            return
        self._csv_file.close()
        if self.tb is not None:
            self.tb.close()


CONSOLE_KEYS = ("loss", "psnr", "perplexity", "lam_loss", "lam_psnr", "lam_perplexity", "dyn_loss", "dyn_acc",
                "lr", "windows_per_s", "tokens_per_s")


def _fmt(v: float) -> str:
    v = float(v)
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
        return f"{v:.3g}"
    return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"


# ------------------------------------------------------------------------- samples
def to_uint8_frames(video_TCHW: torch.Tensor) -> np.ndarray:
    """float [0,1] (T, 3, H, W) → uint8 (T, H, W, 3)."""
    return (video_TCHW.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def video_rows_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Rows of videos (each (T, 3, H, W) float [0,1]) → one uint8 HWC image, frames left to right."""
    frames = [to_uint8_frames(r) for r in rows]
    T = max(f.shape[0] for f in frames)
    H = max(f.shape[1] for f in frames)
    W = max(f.shape[2] for f in frames)
    grid = np.full((len(rows) * (H + pad) + pad, T * (W + pad) + pad, 3), 255, np.uint8)
    for i, f in enumerate(frames):
        for t in range(f.shape[0]):
            y, x = pad + i * (H + pad), pad + t * (W + pad)
            grid[y : y + f.shape[1], x : x + f.shape[2]] = f[t]
    return grid


def video_side_by_side_frames(videos: Sequence[torch.Tensor], pad: int = 2, scale: int = 2) -> list[np.ndarray]:
    """Videos (T, 3, H, W) shown side by side, one image per frame (for a GIF)."""
    frames = [to_uint8_frames(v) for v in videos]
    T = max(f.shape[0] for f in frames)
    out = []
    for t in range(T):
        tiles = [f[min(t, f.shape[0] - 1)] for f in frames]
        H = max(x.shape[0] for x in tiles)
        row = np.full((H, sum(x.shape[1] + pad for x in tiles) - pad, 3), 255, np.uint8)
        x0 = 0
        for tile in tiles:
            row[: tile.shape[0], x0 : x0 + tile.shape[1]] = tile
            x0 += tile.shape[1] + pad
        if scale > 1:
            row = row.repeat(scale, 0).repeat(scale, 1)
        out.append(row)
    return out


def save_png(image_HWC: np.ndarray, path: str | os.PathLike) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_HWC).save(path)


def save_gif(frames_HWC: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 10) -> None:
    from PIL import Image

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames_HWC]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
