"""benchmarks/world_model_gpu.py, the one-command GPU run: its smoke mode runs the whole script
on CPU (so a GPU lease is not lost to a typo), its FLOP count scales with the work, and the
motion directions of benchmarks/coinrun_motion.py read shifts the right way round."""
from __future__ import annotations

import json

import pytest
import torch

torch.set_num_threads(1)  # the shared test machine is oversubscribed; threads spin


def test_step_flops_count_both_phases_and_scale_with_the_batch():
    from benchmarks.world_model_gpu import SMOKE_RUN, step_flops

    one = step_flops({**SMOKE_RUN, "batch_size": 1}, "cpu")
    two = step_flops({**SMOKE_RUN, "batch_size": 2}, "cpu")
    assert set(one) == {"tokenizer", "dynamics"} and all(v > 0 for v in one.values())
    for phase in one:
        assert two[phase] == pytest.approx(2 * one[phase], rel=0.02)


def test_motion_directions_read_the_camera_against_the_agent():
    """The camera follows the agent: the picture moving left (dx < 0) is the agent going right."""
    from benchmarks.coinrun_motion import direction

    assert direction((0, -4)) == "right" and direction((0, 5)) == "left"
    assert direction((4, 0)) == "up" and direction((-3, 1)) == "down"
    assert direction((1, -1)) == "still" and direction((0, 0)) == "still"
    assert direction((6, -2)) == "up"  # mostly vertical


def test_an_actions_effect_is_its_motion_minus_none_from_the_same_state():
    """Falling, every action moves the picture the same way: the effect removes what they share."""
    from benchmarks.coinrun_motion import _effect_directions

    fall = torch.tensor([-12, -1])
    shifts = torch.stack([fall + torch.tensor(d) for d in ((0, 4), (0, -4), (6, 0), (0, 0))])  # left right jump none
    assert _effect_directions(shifts, 4) == ["left", "right", "up"]
    assert _effect_directions(torch.stack([fall] * 4), 4) == ["still"] * 3


@pytest.mark.slow
def test_gpu_script_smoke_runs_on_cpu(tmp_path):
    pytest.importorskip("procgen")
    from benchmarks.world_model import main

    assert main(["--scale", "gpu", "--smoke", "--results", str(tmp_path), "--out", str(tmp_path / "work")]) == 0
    r = json.loads((tmp_path / "world_model_gpu.json").read_text())
    assert r["smoke"] is True and r["run"]["model"] == "tiny" and r["compile_error"] is None
    for phase in ("tokenizer", "dynamics"):
        p = r["phases"][phase]
        assert p["steps"] >= 2 and p["tokens_per_s"] > 0 and p["flops_per_step"] > 0 and p["peak_memory_bytes"] > 0
        assert p["mfu"] is None  # no peak FLOPs for a CPU
        assert len(r["loss_curves"][phase]["loss"]) >= 1
    e = r["eval"][next(iter(r["eval"]))]
    assert e["clips"] == 2 and set(e["delta_psnr_t4"]) == {"shuffled", "uniform", "most_frequent"}
    assert len(e["psnr_t1_4"]) == 4 == len(e["copy_prompt_t1_4"])
