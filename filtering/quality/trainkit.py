"""Pieces that training (train.py) and self-supervised pretraining (pretrain.py) share."""
from __future__ import annotations

import math
import sys

import numpy as np
import torch

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.frames import FRAME_H, FRAME_W, sample_frames
from genie_pipeline.filtering.quality.model import QualityNet, load_backbone_weights
from genie_pipeline.shards.reader import ClipIndex


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _bar(progress: bool, **kw):
    """A tqdm bar on a terminal; into a file or pipe (a redirected log, CI) `\r` redraws would
    pile up, so there it is one line per 10 %."""
    from tqdm import tqdm

    if progress and not sys.stderr.isatty():
        return _Lines(**kw)
    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=1.0, **kw)


class _Lines:
    """The part of tqdm's interface used here, printing `desc: 30% (9/30 unit) k=v` lines."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", step_pct: int = 10):
        self.iterable, self.desc, self.unit, self.step_pct = iterable, desc, unit, step_pct
        self.total = total if total is not None else (len(iterable) if iterable is not None else None)
        self.n, self.shown, self.postfix = 0, -1, ""

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)

    def set_postfix(self, **kw) -> None:
        self.postfix = " " + " ".join(f"{k}={v}" for k, v in kw.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if not self.total:
            return
        pct = min(100, self.n * 100 // self.total) // self.step_pct * self.step_pct
        if pct > self.shown:
            self.shown = pct
            print(f"{self.desc}: {pct}% ({self.n}/{self.total} {self.unit}){self.postfix}", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _frames_for(index: ClipIndex, keys: list[str], k: int, progress: bool) -> np.ndarray:
    out = np.empty((len(keys), k, FRAME_H, FRAME_W, 3), np.uint8)
    for i, key in enumerate(_bar(progress, iterable=keys, desc="sampling frames", unit="clip")):
        try:
            out[i] = sample_frames(index.read(key), k)
        except QualityError as e:
            raise QualityError(f"clip {key} ({index[key].path}): {e}") from None
    return out


def _new_model(qcfg: QualityConfig) -> QualityNet:
    model = QualityNet(qcfg.arch, qcfg.frames_per_clip, "mean_prob" if qcfg.pooling == "auto" else qcfg.pooling,
                       channels_last=qcfg.channels_last)
    if qcfg.weights:
        info = load_backbone_weights(model, qcfg.weights)
        _log(f"backbone initialised from {qcfg.weights}: {info}")
    return model


def _one_cycle(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first 10% of the planned steps, then cosine decay to 5%."""
    warm = max(1, total // 10)

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
