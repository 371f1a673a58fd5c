"""benchmarks/world_model_ablation.py: every variant it names is a model the trainer can build
(a typo in an override key fails here, not 30 CPU-minutes into an ablation), every sampler
label is the one eval gives it. (Its --smoke mode, every variant and sampler end to end, took
over 20 minutes on the shared machine: not in the suite yet.)"""
from __future__ import annotations

import torch

torch.set_num_threads(1)  # the shared test machine is oversubscribed; threads spin


def test_every_variant_builds_the_model_it_names():
    from benchmarks.world_model import CPU_PRESET
    from benchmarks.world_model_ablation import VARIANTS
    from genie_pipeline.training.config import TrainConfig
    from genie_pipeline.training.run import build_model_config

    base = build_model_config(TrainConfig(**{**CPU_PRESET, "data": ["unused"]}))
    for name, overrides in VARIANTS.items():
        cfg = build_model_config(TrainConfig(**{**CPU_PRESET, "overrides": overrides, "data": ["unused"]}))
        for key, value in overrides.items():
            obj = cfg
            for part in key.split("."):
                obj = getattr(obj, part)
            assert obj == value, (name, key)
        assert (cfg == base) == (not overrides), name  # each variant changes the model; `add` is the preset


def test_sampler_labels_are_evals_and_sweep_temperature_and_steps():
    from benchmarks.world_model_ablation import SAMPLERS
    from genie_pipeline.training.controllability import sampler_label

    for label, kw in SAMPLERS.items():
        assert label == sampler_label(kw.get("greedy", False), kw.get("temperature", 0.0), kw["steps"],
                                      kw["prompt_detail"])
    four = {kw.get("temperature", 0.0) for kw in SAMPLERS.values() if kw["steps"] == 4}
    assert four == {0.0, 0.5, 1.0, 2.0}
    # the preset's temperature and greedy, each with and without prompt detail
    assert {(kw.get("temperature", 0.0), kw["prompt_detail"]) for kw in SAMPLERS.values() if kw["steps"] == 4} >= {
        (0.0, True), (0.0, False), (0.5, True), (0.5, False)}
    assert {kw["steps"] for kw in SAMPLERS.values()} == {4, 8, 16}


def test_a_variant_added_later_joins_the_table_only_on_its_budget(tmp_path):
    import argparse
    import json
    import shutil
    from pathlib import Path

    import pytest

    from benchmarks.world_model_ablation import add_to_results

    shutil.copy(Path(__file__).parent.parent / "benchmarks" / "results" / "world_model_ablation.json", tmp_path)
    table = json.loads((tmp_path / "world_model_ablation.json").read_text())
    steps, clips = table["budget"]["dynamics_steps"], table["variants"][0]["clips"]
    row = {"variant": "dyn_wide", "overrides": {"dynamics.st.dim": 128}, "clips": clips, "psnr_t1_4": [1, 2, 3, 4]}
    args = argparse.Namespace(results=str(tmp_path), dynamics_steps=steps)
    add_to_results(args, [row], {"dyn_wide": {"seconds": 1.0}, "other": {}})
    got = json.loads((tmp_path / "world_model_ablation.json").read_text())
    assert [r["variant"] for r in got["variants"]] == [r["variant"] for r in table["variants"]
                                                       if r["variant"] != "dyn_wide"] + ["dyn_wide"]
    assert got["samplers"] == table["samplers"] and got["training"]["dyn_wide"] == {"seconds": 1.0}
    assert "other" not in got["training"] and "dyn_wide" not in (got["variants_not_run"] or "")
    add_to_results(args, [{**row, "psnr_t1_4": [5, 6, 7, 8]}], {})  # a rerun replaces its row
    again = json.loads((tmp_path / "world_model_ablation.json").read_text())
    assert [r["psnr_t1_4"] for r in again["variants"] if r["variant"] == "dyn_wide"] == [[5, 6, 7, 8]]
    with pytest.raises(SystemExit, match="dynamics steps"):
        add_to_results(argparse.Namespace(results=str(tmp_path), dynamics_steps=steps // 2), [row], {})


def test_the_keep_bias_is_chosen_by_its_worst_step_among_biases_that_stay_controllable():
    from benchmarks.world_model_ablation import choose_keep_bias, keep_samplers
    from genie_pipeline.models import get_config
    from genie_pipeline.training.controllability import sampler_label

    def row(bias, minus_copy, ci_low):
        return {"keep_bias": bias, "model_minus_copy_t1_4": [{"value": v} for v in minus_copy],
                "delta_psnr_t4": {"shuffled": {"value": 1.0, "ci95": [ci_low, 2.0]}}}

    rows = [row(0.0, [-3.7, -3.0, -1.2, 0.6], 1.7), row(2.0, [-0.5, -0.2, 0.1, 0.9], 0.8),
            row(4.0, [-0.9, 0.4, 0.5, 0.7], 0.3), row(8.0, [0.1, 0.1, 0.2, 0.2], -0.1)]
    assert choose_keep_bias(rows)["keep_bias"] == 2.0  # 8 beats copying everywhere but no longer follows actions
    assert choose_keep_bias([rows[-1]]) is None
    cfg = get_config("tiny", {})
    samplers = keep_samplers(cfg, [0.0, 2.0])
    steps, t = cfg.dynamics.maskgit_steps, cfg.dynamics.temperature
    assert list(samplers) == [sampler_label(False, t, steps), sampler_label(False, t, steps, True, 2.0)]
    assert samplers[sampler_label(False, t, steps, True, 2.0)]["keep_bias"] == 2.0
    assert list(keep_samplers(cfg, [3.0], greedy=True)) == [f"greedy/{steps} steps, keep 3"]


def test_keep_bias_tuning_needs_a_trained_run(tmp_path, capsys):
    import pytest

    from benchmarks.world_model_ablation import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path), "--keep-bias", "1", "2"])
    assert e.value.code == 2 and "--keep-bias needs --run" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing rendered
