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
    from tqdm import tqdm

    return tqdm(disable=not progress, file=sys.stderr, dynamic_ncols=True, mininterval=1.0, **kw)


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
