"""Self-supervised pretraining of the quality classifier's ResNet18 on clips nobody labelled.

Every ingest leaves many more clips than anyone labels. `pretrain_backbone` trains the trunk
on them contrastively (SimCLR's NT-Xent): the two views of a clip are two of its frames taken
apart in time, each cropped, flipped and colour-jittered; the other clips of the batch are the
negatives. What stays the same across a clip's frames — how the picture is made (a facecam
corner, 8x8 blocks of mush, a black border round a small window, a chat column) — is what
the embedding has to keep; which pixels moved is what it learns to ignore. Fine-tuning on the
labels then starts from that trunk (`filters.quality.weights`, or `pretrain_steps` > 0 in
`train-quality`, which runs this first).

Output: a backbone state dict without the classifier layer (torch.load(weights_only=True),
what `load_backbone_weights` reads; an ImageNet file given as `weights` is the starting point
when present) and a JSON beside it (steps, clips, loss at start and end, seconds).
"""
from __future__ import annotations

import io
import json
import math
import os
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.model import metadata_path, resolve_device
from genie_pipeline.filtering.quality.trainkit import _bar, _frames_for, _new_model, _one_cycle
from genie_pipeline.shards import fs
from genie_pipeline.shards.reader import ClipIndex

FRAMES_PER_CLIP = 4  # frames decoded per clip; a view pair is two different ones
PROJ_DIM = 128


def pretrain_backbone(index: ClipIndex, out_path: str | os.PathLike, qcfg: QualityConfig, *,
                      keys: list[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Pretrain on up to `qcfg.pretrain_clips` clips of `index` (all of them, labelled or
    not, unless `keys`) for `qcfg.pretrain_steps` steps; write the trunk to `out_path` and
    its metadata beside it; returns the metadata."""
    t0 = time.time()
    keys = sorted(index.clips) if keys is None else list(keys)
    rng = np.random.default_rng(qcfg.seed)
    if len(keys) > qcfg.pretrain_clips:
        keys = sorted(rng.choice(keys, qcfg.pretrain_clips, replace=False).tolist())
    if len(keys) < 4:
        raise QualityError(f"self-supervised pretraining needs at least 4 clips, {index.root} has {len(keys)}")
    if qcfg.torch_threads:
        torch.set_num_threads(qcfg.torch_threads)
    torch.manual_seed(qcfg.seed)
    gen = torch.Generator().manual_seed(qcfg.seed)
    frames = _frames_for(index, keys, FRAMES_PER_CLIP, progress)  # (N, F, H, W, 3) uint8
    device = resolve_device(qcfg.device)  # a GPU where usable (filters.quality.device), else the CPU
    model = _new_model(qcfg).to(device)
    model.train()
    proj = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, PROJ_DIM)).to(device)
    params = list(model.backbone.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=qcfg.pretrain_learning_rate, weight_decay=qcfg.weight_decay)
    sched = _one_cycle(opt, qcfg.pretrain_steps)
    bs = min(qcfg.pretrain_batch_size, len(keys))
    losses = []
    bar = _bar(progress, total=qcfg.pretrain_steps, desc="pretraining", unit="step")
    for _ in range(qcfg.pretrain_steps):
        b = rng.choice(len(keys), bs, replace=False)
        i = rng.integers(0, FRAMES_PER_CLIP, bs)
        j = (i + rng.integers(1, FRAMES_PER_CLIP, bs)) % FRAMES_PER_CLIP  # another frame of the clip
        pair = torch.from_numpy(np.concatenate([frames[b, i], frames[b, j]]))  # (2B, H, W, 3)
        x = ssl_augment(model.normalize(pair.to(device)), gen)
        if qcfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = nt_xent(proj(model.features(x)), qcfg.pretrain_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    state = {n: t.cpu() for n, t in model.backbone.state_dict().items() if not n.startswith("fc.")}
    buf = io.BytesIO()
    torch.save(state, buf)
    fs.write_bytes(str(out_path), buf.getvalue())
    head = max(1, len(losses) // 10)
    meta = {"kind": "genie-quality-pretrained-backbone", "method": "simclr-temporal", "arch": qcfg.arch,
            "clips": len(keys), "steps": qcfg.pretrain_steps, "batch_size": bs,
            "temperature": qcfg.pretrain_temperature, "started_from": qcfg.weights,
            "loss_first": float(np.mean(losses[:head])), "loss_last": float(np.mean(losses[-head:])),
            "chance_loss": math.log(2 * bs - 1), "seconds": round(time.time() - t0, 1), "device": device,
            "input_dir": str(index.root)}
    fs.write_bytes(metadata_path(out_path), (json.dumps(meta, indent=1) + "\n").encode())
    return meta


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss for (2B, D) embeddings where rows i and i+B are two views of one clip."""
    z = F.normalize(z.float(), dim=1)
    n = z.shape[0] // 2
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def ssl_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Normalised (N, 3, H, W), one draw per image: a crop of 50-100% of each side resized
    back, horizontal flip, brightness/contrast +-30%, 20% greyscale. Milder than SimCLR's
    (no crops below a quarter of the frame): a small window in a black frame must stay one."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    s = 0.5 + 0.5 * torch.rand(n, 2, generator=gen)  # draws on the CPU generator, applied where x is
    for k in range(n):
        ch, cw = max(8, int(h * s[k, 0])), max(8, int(w * s[k, 1]))
        y0 = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        out[k] = F.interpolate(x[k:k + 1, :, y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear",
                               align_corners=False)[0]
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    out = torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)
    grey = (torch.rand(n, generator=gen) < 0.2).view(n, 1, 1, 1).to(x.device)
    out = torch.where(grey, out.mean(1, keepdim=True).expand_as(out), out)
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen).to(x.device) - 0.5) * 0.6
    b = (torch.rand(n, 1, 1, 1, generator=gen).to(x.device) - 0.5) * 0.6
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (out - mean) * c + mean + b
