"""Learning-rate schedule (linear warmup, cosine decay) and AdamW parameter groups."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn


def lr_at(step: int, *, lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of optimizer update `step` (0-based): linear warmup to `lr` over
    `warmup_steps` updates, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / span))
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Decay matrices of Linear/conv layers; never biases, norms, embeddings or codebooks."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        for mod in module.modules():
            for name, p in mod.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen:
                    continue
                seen.add(id(p))
                if isinstance(mod, nn.Embedding) or p.ndim < 2 or name == "bias":
                    no_decay.append(p)
                else:
                    decay.append(p)
    groups = []
    for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
        # FSDP-sharded (DTensor) and replicated parameters in separate groups: the fused
        # per-group update cannot mix the two kinds
        for kind in (True, False):
            same = [p for p in params if _sharded(p) == kind]
            if same:
                groups.append({"params": same, "weight_decay": wd})
    return groups


def _sharded(p: torch.Tensor) -> bool:
    return hasattr(p, "device_mesh")


def make_optimizer(modules: Iterable[nn.Module], lr: float, weight_decay: float, betas=(0.9, 0.95)) -> torch.optim.AdamW:
    groups = param_groups(modules, weight_decay)
    fused = all(p.is_cuda for g in groups for p in g["params"]) and torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
