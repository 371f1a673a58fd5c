"""DDP on CPU (gloo): 2 processes with half batches each match 1 process with the whole batch."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from genie_pipeline.training import checkpoint as ckpt_lib
from genie_pipeline.training import distributed as dist_lib
from genie_pipeline.training.config import TrainConfig
from genie_pipeline.training.loader import WindowLoader
from genie_pipeline.shards.reader import resolve_inputs
from tests.fixtures.output import write_sprite_output
from genie_pipeline.training.run import build_model_config
from genie_pipeline.training.trainer import PhaseTrainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]

CFG = dict(model="tiny", frames=8, resolution=[48, 80], batch_size=4, num_workers=0, lr=2e-3, warmup_steps=1,
           threads=1, seed=3)
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str, cfg_json: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    tmp = Path(tmp)
    info = dist_lib.setup("cpu")
    try:
        cfg = TrainConfig.model_validate_json(cfg_json)
        mcfg = build_model_config(cfg)
        batches = torch.load(tmp / "batches.pt", weights_only=True)
        per = cfg.batch_size // world
        tr = PhaseTrainer("tokenizer", cfg, mcfg, tmp / f"ddp{rank}", info)
        for b in batches:
            tr.step_on(b[rank * per : (rank + 1) * per])
        if rank == 0:
            torch.save(tr.model.state_dict(), tmp / "ddp_tokenizer.pt")
        # phase 2 (random masks differ per rank): replicas must stay identical
        cfg2 = cfg.model_copy(update={"tokenizer_checkpoint": str(tmp / "single" / "checkpoints" / "tokenizer" / "latest.pt")})
        tr2 = PhaseTrainer("dynamics", cfg2, mcfg, tmp / f"ddp{rank}", info)
        for b in batches[:2]:
            tr2.step_on(b[rank * per : (rank + 1) * per])
        flat = torch.cat([p.detach().flatten() for p in tr2.model.parameters()])
        gathered = dist_lib.all_gather_objects(flat)
        if rank == 0:
            same = all(torch.equal(gathered[0], g) for g in gathered[1:])
            (tmp / "phase2_replicas_equal.json").write_text(json.dumps(same))
        del tr, tr2  # the DDP wrappers must go before the group (see dist_lib.teardown)
    finally:
        dist_lib.teardown(info)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    write_sprite_output(out, n_train_shards=2, clips_per_shard=3, n_val_shards=0, seed=4)
    return out


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, shards):
    torch.set_num_threads(1)
    cfg = TrainConfig(**CFG, tokenizer_steps=STEPS, dynamics_steps=2)
    mcfg = build_model_config(cfg)
    loader = WindowLoader(resolve_inputs([str(shards)]).shards, cfg.batch_size, cfg.frames, windows_per_clip=2,
                          clips_per_group=2, shuffle_buffer=4, resolution=(48, 80))
    batches = [next(loader)["video"] for _ in range(STEPS)]
    torch.save(batches, tmp_path / "batches.pt")

    single = PhaseTrainer("tokenizer", cfg, mcfg, tmp_path / "single", dist_lib.DistInfo())
    losses = [float(single.step_on(b)["loss"]) for b in batches]
    single.save_checkpoint(None)
    ref = single.model.state_dict()

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), cfg.model_dump_json()), nprocs=2, join=True)

    got = torch.load(tmp_path / "ddp_tokenizer.pt", weights_only=True)
    assert set(got) == set(ref)
    init = PhaseTrainer("tokenizer", cfg, mcfg, tmp_path / "init", dist_lib.DistInfo()).model.state_dict()
    moved = 0
    for k, v in ref.items():
        if v.is_floating_point():
            assert torch.allclose(got[k], v, rtol=1e-4, atol=2e-5), (k, (got[k] - v).abs().max())
            moved += int(not torch.equal(v, init[k]))
    assert moved > 10  # the parameters did train
    assert losses[-1] < losses[0]
    assert json.loads((tmp_path / "phase2_replicas_equal.json").read_text()) is True


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_processes_end_to_end(tmp_path, shards, strategy):
    """The real entry point under torchrun: both phases, checkpoint with both ranks' states."""
    y = tmp_path / "train.yaml"
    y.write_text(json.dumps({"train": {**CFG, "num_workers": 1, "windows_per_clip": 2, "clips_per_group": 2,
                                       "tokenizer_steps": 2, "dynamics_steps": 2, "log_every": 1,
                                       "checkpoint_every": 1, "sample_every": 2, "strategy": strategy}}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "genie_pipeline.cli", "train", "-c", str(y), "--set", f"train.out_dir={run}", str(shards)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for phase in ("tokenizer", "dynamics"):
        ck = ckpt_lib.load(ckpt_lib.latest_path(run, phase))
        assert ck["step"] == 2 and ck["world_size"] == 2 and len(ck["ranks"]) == 2
        streams = [set(r["loader"]["positions"]) for r in ck["ranks"]]
        assert streams == [{0}, {1}]  # rank r reads stream r (1 worker each)
        assert all(r["loader"]["positions"][s]["windows"] == 4 for r, s in zip(ck["ranks"], (0, 1)))
    meta = json.loads((run / "run.json").read_text())
    assert meta["world_size"] == 2 and (run / "genie.pt").exists()
    assert (run / "samples" / "dynamics-step00000002.gif").exists()
    from genie_pipeline.training.play import load_genie

    assert load_genie(run / "genie.pt").cfg.frames == 8


class _Quantize(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from genie_pipeline.models.vq import VectorQuantizer

        self.inp = torch.nn.Linear(8, 8)
        self.vq = VectorQuantizer(codebook_size=16, code_dim=4, input_dim=8, dead_code_threshold=1)

    def forward(self, x):
        quantized, _, loss, _ = self.vq(self.inp(x))
        return quantized.square().mean() + loss


def _fsdp_restart_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = dist_lib.setup("cpu")
    try:
        torch.manual_seed(0)  # same initial weights on both ranks, as a real run loads them
        model = dist_lib.wrap(_Quantize(), "fsdp", info)
        torch.manual_seed(1 + rank)  # different data per rank
        model(torch.randn(6, 8)).backward()  # step 1: codes nobody chose become dead
        before = model.vq.codebook.weight.detach().clone()
        dead = model.vq.steps_unused >= 1
        model.zero_grad()
        model(torch.randn(6, 8)).backward()  # step 2 restarts them in place
        after = model.vq.codebook.weight
        after = (after.full_tensor() if hasattr(after, "full_tensor") else after).detach()
        grads = dist_lib.all_gather_objects(model.vq.codebook.weight.grad.clone())
        dist_lib.average_replicated_grads(model)
        averaged = dist_lib.all_gather_objects(model.vq.codebook.weight.grad.clone())
        codebooks = dist_lib.all_gather_objects(after)
        if rank == 0:
            result = {"dead": int(dead.sum()), "restarted_rows_changed": bool((after[dead] != before[dead]).any(-1).all()),
                      "replicas_equal": torch.equal(codebooks[0], codebooks[1]),
                      "grads_differed": not torch.equal(grads[0], grads[1]),
                      "grads_averaged": torch.allclose(averaged[0], (grads[0] + grads[1]) / 2)
                      and torch.equal(averaged[0], averaged[1])}
            (Path(tmp) / "fsdp_restart.json").write_text(json.dumps(result))
        del model
    finally:
        dist_lib.teardown(info)


@pytest.mark.slow
def test_fsdp_keeps_restarted_codes(tmp_path):
    """Under FSDP a dead-code restart survives the forward pass (it used to be written into a
    gathered copy of a sharded codebook and dropped), and the replicated codebook stays
    identical on every rank with averaged gradients."""
    mp.spawn(_fsdp_restart_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    result = json.loads((tmp_path / "fsdp_restart.json").read_text())
    assert result["dead"] > 0
    assert result == {**result, "restarted_rows_changed": True, "replicas_equal": True,
                      "grads_differed": True, "grads_averaged": True}
