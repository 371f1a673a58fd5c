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
        assert label == sampler_label(kw.get("greedy", False), kw.get("temperature", 0.0), kw["steps"])
    four = {kw.get("temperature", 0.0) for kw in SAMPLERS.values() if kw["steps"] == 4}
    assert four == {0.0, 0.5, 1.0, 2.0}
    assert {kw["steps"] for kw in SAMPLERS.values()} == {4, 8, 16}
