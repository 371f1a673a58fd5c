"""Checkpoints: atomic writes, `weights_only=True` loading, RNG states as plain types.

A checkpoint is one file holding model and optimizer state dicts (full, unsharded), the
schedule position, every rank's RNG states and loader position, and the configs. It is
written to `NAME.tmp.PID` and moved into place with `os.replace`, so a crash never leaves a
half-written checkpoint under the real name. Only tensors, dicts, lists, strings and
numbers are stored, so `torch.load(..., weights_only=True)` reads it.
"""
from __future__ import annotations

import os
import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genie_pipeline.training.errors import TrainingError

FORMAT = 1
STEP_RE = re.compile(r"^step-(\d+)\.pt$")


# ------------------------------------------------------------------------ RNG states
def get_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) RNG states as tensors / plain types."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- files
def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint at `path`; TrainingError (key `checkpoint`) for a missing file, a file
    that is not a checkpoint, or one that needs more than weights-only unpickling."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise TrainingError("checkpoint", f"{path} does not exist") from None
    except IsADirectoryError:
        raise TrainingError("checkpoint", f"{path} is a directory, not a checkpoint file") from None
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # garbage rather than a payload
            raise TrainingError("checkpoint", f"{path} is not a checkpoint (not a torch.save file)") from None
        # torch's own message advises weights_only=False: never, for a file from elsewhere
        raise TrainingError("checkpoint", f"{path} holds Python objects beyond tensors and plain data "
                            "(a pickle payload that could run code); refused, it is not a genie-pipeline "
                            "checkpoint") from None
    except Exception as e:  # noqa: BLE001 — torch raises many types for a bad or hostile file
        raise TrainingError("checkpoint", f"{path} is not a readable weights-only checkpoint "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainingError("checkpoint", f"{path} is not a genie-pipeline training checkpoint (format {FORMAT})")
    return ckpt


def phase_dir(out_dir: str | os.PathLike, phase: str) -> Path:
    return Path(out_dir) / "checkpoints" / phase


def latest_path(out_dir: str | os.PathLike, phase: str) -> Path:
    return phase_dir(out_dir, phase) / "latest.pt"


def save_phase_checkpoint(ckpt: dict, out_dir: str | os.PathLike, phase: str, keep: int = 2) -> Path:
    """Write step-NNNNNNNN.pt and latest.pt (both atomically); keep the newest `keep` step files."""
    d = phase_dir(out_dir, phase)
    step_path = d / f"step-{int(ckpt['step']):08d}.pt"
    save_atomic(ckpt, step_path)
    tmp = d / f"latest.pt.tmp.{os.getpid()}"
    try:
        os.link(step_path, tmp)  # same bytes, no second write
    except OSError:
        save_atomic(ckpt, d / "latest.pt")
    else:
        os.replace(tmp, d / "latest.pt")
    steps = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := STEP_RE.match(p.name)))
    for _, p in steps[:-keep]:
        p.unlink(missing_ok=True)
    for p in d.glob("*.tmp.*"):  # leftovers of killed writers
        try:
            if p.stat().st_mtime < os.path.getmtime(step_path) - 60:
                p.unlink()
        except OSError:
            pass
    return step_path
