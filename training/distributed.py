"""Process-group setup for `torchrun` (DDP / FSDP) and small collective helpers.

Under `torchrun --nproc_per_node N` the env vars RANK, WORLD_SIZE, LOCAL_RANK are set; the
process group uses nccl on CUDA and gloo on CPU. Without them everything is single-process.
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("device: cuda asked for but torch sees no CUDA device")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def setup(device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    info = DistInfo(rank, world, local, dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kw = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kw)
        info.initialized_here = True
    elif dist.is_initialized():
        info.rank, info.world_size = dist.get_rank(), dist.get_world_size()
    return info


def teardown(info: DistInfo) -> None:
    """Destroy the group while the interpreter is fully alive. Unreferenced DDP reducers still hold
    Gloo work objects; freed later, during interpreter finalisation, they abort the process
    ("terminate called without an active exception", seen in about 1 run in 3 on 2 cores), so
    collect them first, and let every rank finish its last collective before any rank closes."""
    if info.initialized_here and dist.is_initialized():
        import gc

        gc.collect()
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
        gc.collect()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj):
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def mean_scalars(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over ranks (one all_reduce)."""
    if not (dist.is_available() and dist.is_initialized()) or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def wrap(model: nn.Module, strategy: str, info: DistInfo) -> nn.Module:
    """DDP or FSDP2 (`fully_shard` per ST block, then the root) when distributed."""
    if not info.distributed or strategy == "none":
        return model
    if strategy in ("auto", "ddp"):
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids, broadcast_buffers=False)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from genie_pipeline.models.st_transformer import STBlock
        from genie_pipeline.models.vq import VectorQuantizer

        for m in model.modules():
            if isinstance(m, STBlock):
                fully_shard(m)
        # codebooks stay whole on every rank: a dead-code restart writes rows in place during
        # forward, which a sharded parameter would drop with its gathered copy. They are
        # small; their gradients are averaged by average_replicated_grads, like DDP would.
        codebooks = {m.codebook.weight for m in model.modules() if isinstance(m, VectorQuantizer)}
        fully_shard(model, ignored_params=codebooks)
        model.replicated_params = sorted(codebooks, key=id)
        return model
    raise ValueError(f"unknown strategy {strategy!r}")


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Total gradient norm over every parameter, sharded (DTensor) or not, and the gradients
    scaled to at most `max_norm` (inf: measure only). torch's clip_grad_norm_ refuses a mix
    of the two kinds, which FSDP with replicated codebooks has."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total_sq = torch.zeros((), dtype=torch.float64)
    for kind in (True, False):
        group = [g for g in grads if hasattr(g, "device_mesh") == kind]
        if group:
            norm = torch.nn.utils.get_total_norm(group)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            total_sq = total_sq + norm.double().cpu() ** 2
    total = total_sq.sqrt().float()
    if math.isfinite(max_norm) and float(total) > max_norm:
        scale = max_norm / (float(total) + 1e-6)
        for g in grads:
            g.mul_(scale)
    return total


def average_replicated_grads(model: nn.Module) -> None:
    """Average over ranks the gradients of the parameters FSDP leaves whole (see `wrap`)."""
    for p in getattr(model, "replicated_params", ()):
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


@contextlib.contextmanager
def full_params(model: nn.Module):
    """Inside: FSDP2-sharded parameters are gathered, so methods other than `forward` (e.g.
    `lam.infer_actions`, `dynamics.rollout`) work. Collective: every rank must enter."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        FSDPModule = ()
    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)] if FSDPModule else []
    for m in sharded:
        m.unshard()
    try:
        yield model
    finally:
        for m in sharded:
            m.reshard()
