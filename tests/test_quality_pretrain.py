"""Self-supervised pretraining of the quality trunk on unlabelled clips (pretrain-quality)."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from genie_pipeline.cli import main  # noqa: E402
from genie_pipeline.filtering.quality.model import QualityNet, load_backbone_weights  # noqa: E402
from genie_pipeline.filtering.quality.pretrain import nt_xent, ssl_augment  # noqa: E402
from tests.fixtures.output import write_quality_output  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_nt_xent_rewards_matching_views_only():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 16, generator=g)
    matched = torch.cat([a, a + 0.01 * torch.randn(8, 16, generator=g)])
    shuffled = torch.cat([a, a[torch.randperm(8, generator=g)]])
    assert nt_xent(matched, 0.2) < 0.5 < np.log(15) - 0.5 < nt_xent(shuffled, 0.2)


def test_ssl_augment_keeps_shape_and_varies_per_image():
    x = torch.randn(6, 3, 90, 160)
    y = ssl_augment(x, torch.Generator().manual_seed(1))
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, ssl_augment(x, torch.Generator().manual_seed(2)))


@pytest.mark.slow  # ~35 s of CPU: 14 contrastive steps, then a pretrain + train-quality run
def test_pretrain_cli_writes_a_trunk_that_train_quality_starts_from(tmp_path, capsys):
    """pretrain-quality: the loss falls below where it started on the fixture's clips; the
    file loads with weights_only, carries no classifier layer, and initialises every trunk
    tensor; train-quality with pretrain_steps runs it first and records it."""
    out = tmp_path / "out"
    info = write_quality_output(out, n_good=4, n_bad=4, clips_per_video=2, seed=3)
    w = tmp_path / "w" / "trunk.pt"
    sets = ["--set", "filters.quality.pretrain_batch_size=8", "--set", "filters.quality.pretrain_steps=14",
            "--set", "filters.quality.pretrain_learning_rate=0.003"]
    assert main(["pretrain-quality", str(out), "--out", str(w), "--no-progress", *sets]) == 0
    assert "filters.quality.weights=" in capsys.readouterr().out
    meta = json.loads(w.with_suffix(".json").read_text())
    assert meta["clips"] == 16 and meta["steps"] == 14 and meta["method"] == "simclr-temporal"
    assert meta["loss_last"] < meta["loss_first"]
    sd = torch.load(w, weights_only=True)
    assert sd and not any(k.startswith("fc.") for k in sd)
    m = QualityNet(frames_per_clip=2)
    got = load_backbone_weights(m, str(w))
    assert got["loaded"] == len(sd) and got["missing"] == 2  # fc.weight, fc.bias: the new head
    assert torch.equal(m.backbone.conv1.weight, sd["conv1.weight"])

    model = tmp_path / "q" / "model.pt"
    tiny = dict(epochs=1, min_epochs=1, patience=1, frames_per_clip=2, train_batch_size=8, train_frame_pool=2,
                steps_per_epoch=1, pretrain_steps=2, pretrain_batch_size=4)
    argv = ["train-quality", str(out), "--reference-catalog", str(info["catalog"]), "--no-progress"]
    for k, v in dict(tiny, model=model).items():
        argv += ["--set", f"filters.quality.{k}={v}"]
    assert main(argv) == 0
    tm = json.loads(model.with_suffix(".json").read_text())
    assert tm["training"]["pretrained"]["steps"] == 2 and (tmp_path / "q" / "model_pretrained.pt").exists()
