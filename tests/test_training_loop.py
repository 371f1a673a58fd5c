"""Training loop: both phases learn on fixture shards (tiny config, CPU), run outputs, config errors, CLI."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from genie_pipeline import cli
from genie_pipeline.config import ConfigError, load_config
from genie_pipeline.training import checkpoint as ckpt_lib
from genie_pipeline.training import distributed as dist_lib
from genie_pipeline.training.config import TrainConfig
from genie_pipeline.training.errors import TrainingError
from genie_pipeline.training.metrics import read_metrics
from genie_pipeline.training.schedule import lr_at
from tests.fixtures.output import write_sprite_output
from genie_pipeline.training.run import build_model_config, check_train_config, train_main
from genie_pipeline.training.trainer import PhaseTrainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = dict(model="tiny", frames=8, resolution=[48, 80], batch_size=4, num_workers=0, windows_per_clip=4,
            clips_per_group=4, shuffle_buffer=8, lr=3e-3, warmup_steps=5, log_every=1, sample_every=1000,
            checkpoint_every=1000, threads=1)


@pytest.fixture(scope="module")
def ingest_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ingest")
    write_sprite_output(out, n_train_shards=2, clips_per_shard=4, n_val_shards=1, seed=2)
    return out


@pytest.fixture(scope="module")
def trained(ingest_out, tmp_path_factory):
    """One run of both phases; several tests inspect it."""
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(**{**TINY, "sample_every": 20, "checkpoint_every": 20}, tokenizer_steps=40, dynamics_steps=40)
    summary = train_main(cfg, stage="all", inputs=[str(ingest_out)], out_dir=run)
    return run, summary


def _mean(xs):
    return sum(xs) / len(xs)


def test_tokenizer_loss_falls(trained):
    run, summary = trained
    loss = [v for _, _, v in read_metrics(run / "metrics.csv", "loss", "tokenizer")]
    psnr = [v for _, _, v in read_metrics(run / "metrics.csv", "psnr", "tokenizer")]
    assert len(loss) == 40
    assert _mean(loss[-5:]) < 0.35 * _mean(loss[:3]), loss
    assert _mean(psnr[-5:]) > _mean(psnr[:3]) + 4, psnr


def test_dynamics_phase_losses_fall(trained):
    run, summary = trained
    dyn = [v for _, _, v in read_metrics(run / "metrics.csv", "dyn_loss", "dynamics")]
    lam = [v for _, _, v in read_metrics(run / "metrics.csv", "lam_loss", "dynamics")]
    assert len(dyn) == 40
    assert _mean(dyn[-5:]) < 0.8 * _mean(dyn[:3]), dyn
    # the LAM starts at "copy the last frame" (a zero delta head) and FSQ has no codebook loss to
    # shed, so its loss falls from the copy error, not by half
    assert _mean(lam[-5:]) < 0.9 * _mean(lam[:3]), lam


def test_run_outputs(trained):
    run, summary = trained
    assert set(summary["phases"]) == {"tokenizer", "dynamics"}
    for phase in ("tokenizer", "dynamics"):
        assert summary["phases"][phase]["steps"] == 40
        assert summary["phases"][phase]["tokens_per_s"] > 0
        assert (run / "samples" / f"{phase}-step00000020.png").stat().st_size > 0
        assert (run / "samples" / f"{phase}-step00000040.gif").stat().st_size > 0
        ck = ckpt_lib.load(ckpt_lib.latest_path(run, phase))  # weights_only=True
        assert ck["step"] == 40 and ck["phase"] == phase
        assert ck["ranks"][0]["loader"]["positions"][0]["windows"] == 40 * 4
    with open(run / "metrics.csv", newline="") as f:
        names = {r["name"] for r in csv.DictReader(f)}
    for n in ("psnr", "perplexity", "usage", "tokens_per_s", "lam_perplexity", "dyn_acc", "delta_psnr_t4"):
        assert n in names, n
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    meta = json.loads((run / "run.json").read_text())
    assert len(meta["shards"]) == 2 and meta["manifests"][0]["rows"] == 12
    assert meta["model_config"]["frames"] == 8 and meta["model_config"]["image_height"] == 48
    assert meta["summary"]["phases"]["dynamics"]["steps"] == 40
    assert (run / "genie.pt").exists()


def test_play_gif_from_any_image(trained, tmp_path):
    from PIL import Image

    from genie_pipeline.training.play import load_genie, play

    run, _ = trained
    img = tmp_path / "prompt.png"
    Image.new("RGB", (200, 120), (30, 160, 90)).save(img)
    out = play(run / "genie.pt", img, "1,2,3,0,1,2,3,4,5,6,7", tmp_path / "demo.gif", steps=2)
    gif = Image.open(out)
    assert gif.n_frames == 12
    genie = load_genie(run / "genie.pt")
    assert genie.cfg.frames == 8


def test_existing_run_needs_resume_and_resume_of_finished_run_is_a_noop(trained, ingest_out):
    run, _ = trained
    cfg = TrainConfig(**TINY, tokenizer_steps=40, dynamics_steps=40)
    with pytest.raises(TrainingError) as e:
        train_main(cfg, stage="tokenizer", inputs=[str(ingest_out)], out_dir=run)
    assert e.value.key == "train.out_dir"
    summary = train_main(cfg, stage="all", inputs=[str(ingest_out)], out_dir=run, resume=True)
    assert all(p.get("skipped") for p in summary["phases"].values())


def test_dynamics_stage_needs_a_tokenizer(tmp_path, ingest_out):
    cfg = TrainConfig(**TINY, tokenizer_steps=2, dynamics_steps=2)
    with pytest.raises(TrainingError) as e:
        train_main(cfg, stage="dynamics", inputs=[str(ingest_out)], out_dir=tmp_path / "r")
    assert e.value.key == "train.tokenizer_checkpoint"


def _linear_output_dtypes(trainer: PhaseTrainer, video: torch.Tensor) -> set[torch.dtype]:
    """The dtypes the model's Linear layers produce during one training step."""
    seen: set[torch.dtype] = set()
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype))
             for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        trainer.step_on(video)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_bf16_autocast_step_on_cpu(tmp_path, ingest_out):
    cfg = TrainConfig(**{**TINY, "precision": "bf16"}, tokenizer_steps=2, dynamics_steps=0)
    summary = train_main(cfg, stage="tokenizer", inputs=[str(ingest_out)], out_dir=tmp_path / "r")
    assert summary["phases"]["tokenizer"]["steps"] == 2
    assert torch.isfinite(torch.tensor(summary["phases"]["tokenizer"]["final_metrics"]["loss"]))
    # the step really computes in bf16 (autocast), while the weights the optimizer updates stay fp32
    video = torch.randint(0, 256, (4, 8, 3, 48, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mcfg = build_model_config(cfg)
    bf16 = PhaseTrainer("tokenizer", cfg, mcfg, tmp_path / "bf16", dist_lib.DistInfo())
    assert bf16.amp_dtype == torch.bfloat16
    assert _linear_output_dtypes(bf16, video) == {torch.bfloat16}
    assert {p.dtype for p in bf16.model.parameters()} == {torch.float32}
    fp32 = PhaseTrainer("tokenizer", cfg.model_copy(update={"precision": "fp32"}), mcfg, tmp_path / "fp32",
                        dist_lib.DistInfo())
    assert fp32.amp_dtype is None
    assert _linear_output_dtypes(fp32, video) == {torch.float32}


@pytest.mark.parametrize("overrides,resolution,key", [
    ({"tokenizer.st.heads": 3}, None, "train.overrides.tokenizer.st.heads"),
    ({"dynamics": {"st": {"dim": 30, "heads": 4}}}, None, "train.overrides.dynamics.st.heads"),
    ({}, [8, 8], "train.overrides.lam.patch"),
    ({"tokenizer.patch": 64}, [48, 80], "train.overrides.tokenizer.patch"),
    ({"frames": 4}, None, "train.overrides.frames"),
    ({"tokenizer.nope": 1}, None, "train.overrides.tokenizer.nope"),
])
def test_bad_sizes_name_the_key(overrides, resolution, key):
    cfg = TrainConfig(model="tiny", frames=8, overrides=overrides, resolution=resolution)
    with pytest.raises(TrainingError) as e:
        build_model_config(cfg)
    assert e.value.key == key


def test_config_fields_have_defaults_and_descriptions():
    cfg = TrainConfig()
    for name, field in TrainConfig.model_fields.items():
        assert field.description, name
    assert cfg.frames == 16 and cfg.decoder == "auto" and cfg.precision == "auto"
    with pytest.raises(TrainingError) as e:
        build_model_config(TrainConfig(model="huge"))
    assert e.value.key == "train.model"
    mc = build_model_config(TrainConfig(model="tiny"))
    assert (mc.frames, mc.image_height, mc.image_width) == (16, 90, 160)
    with pytest.raises(TrainingError) as e:
        check_train_config(TrainConfig(batch_size=3), world_size=2)
    assert e.value.key == "train.batch_size"
    assert str(e.value) == f"train.batch_size: {e.value.message}"
    with pytest.raises(TrainingError) as e:  # the model checks run too
        check_train_config(TrainConfig(model="tiny", overrides={"tokenizer.st.heads": 3}))
    assert e.value.key == "train.overrides.tokenizer.st.heads"
    with pytest.raises(TrainingError) as e:
        check_train_config(TrainConfig(strategy="fsdp", compile=True))
    assert e.value.key == "train.compile"


def test_lr_schedule():
    kw = dict(lr=1.0, total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, **kw) == pytest.approx(0.1)
    assert lr_at(9, **kw) == pytest.approx(1.0)
    assert lr_at(10, **kw) == pytest.approx(1.0)
    assert lr_at(55, **kw) == pytest.approx(0.55)
    assert lr_at(100, **kw) == pytest.approx(0.1)


def test_nested_overrides_build():
    nested = build_model_config(TrainConfig(model="tiny", overrides={"tokenizer": {"patch": 8}}))
    assert nested.tokenizer.patch == 8
    mixed = build_model_config(TrainConfig(model="tiny", overrides={"tokenizer.st.heads": 3,
                                                                    "tokenizer": {"st": {"heads": 2}}}))
    assert mixed.tokenizer.st.heads == 2  # the later (nested, as `--set` writes it) wins


def test_cli_sets_and_config_file(tmp_path, ingest_out, capsys):
    sets = ["train.batch_size=16", "train.overrides.tokenizer.patch=8", "train.resolution=[45, 80]"]
    cfg = load_config(None, sets=sets, require_sources=False).train
    assert cfg.batch_size == 16 and cfg.overrides == {"tokenizer": {"patch": 8}} and cfg.resolution == [45, 80]
    with pytest.raises(ConfigError) as e:
        load_config(None, sets=["train.batchsize=16"], require_sources=False)
    assert e.value.key == "train.batchsize"
    y = tmp_path / "train.yaml"  # a train-only file (no sources) serves `train`
    y.write_text("train:\n  model: tiny\n  frames: 8\n  resolution: [48, 80]\n  batch_size: 2\n  num_workers: 0\n"
                 "  tokenizer_steps: 2\n  dynamics_steps: 2\n  log_every: 1\n  overrides: {tokenizer.st.heads: 3}\n")
    argv = ["train", "-c", str(y), "--set", f"train.out_dir={tmp_path / 'r'}"]
    assert cli.main(argv + [str(ingest_out)]) == 2
    assert "train.overrides.tokenizer.st.heads" in capsys.readouterr().err
    argv += ["--set", "train.overrides.tokenizer.st.heads=2", "--stage", "tokenizer", str(ingest_out)]
    assert cli.main(argv) == 0
    assert ckpt_lib.load(ckpt_lib.latest_path(tmp_path / "r", "tokenizer"))["step"] == 2
    capsys.readouterr()
    assert cli.main(argv) == 2  # the run dir holds a checkpoint: TrainingError, without --resume
    assert "train.out_dir" in capsys.readouterr().err
