"""The latent action model's defences against the collapse of issue 8.

On sprite footage (benchmarks/lam.py) the paper's layout learned codes that named the
frame's position in the window (NMI with the frame index 0.94, with the true move 0.01)
and a decoder that did worse than copying the previous frame and ignored its actions.
Each test below pins one setting of models/lam.py that removes one of those routes, and
fails with that setting off (the paper's layout, `PAPER_LAYOUT`).
"""

import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from genie_pipeline.models import LatentActionModel, ModelConfigError, get_config
from genie_pipeline.models.fsq import FiniteScalarQuantizer

PAPER_LAYOUT = {"lam.encode_pairs": False, "lam.decoder_past": True, "lam.predict_delta": False}
STEPS, BATCH = 200, 8  # the learning test: ~15 s of CPU


def lam(**overrides):
    torch.manual_seed(0)
    cfg = get_config("tiny", {"image_height": 32, "image_width": 32, "frames": 6, **overrides})
    return LatentActionModel(cfg).eval()


def video(frames=6, seed=0):
    return torch.rand(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout, position_free", [({}, True), (PAPER_LAYOUT, False)])
def test_an_action_does_not_depend_on_where_the_transition_sits(layout, position_free):
    """The same two frames give the same latent at any position in the window, so the
    codes cannot name the frame index (the sinusoidal time embedding of a causal read did)."""
    model, clip = lam(**layout), video()
    shifted = torch.cat([clip[:, :1], clip[:, :-1]], dim=1)  # frames 2, 3 now sit at 3, 4
    with torch.no_grad():
        at_2, at_3 = model._action_latents(clip)[:, 2], model._action_latents(shifted)[:, 3]
    assert torch.allclose(at_2, at_3, atol=1e-5) == position_free


@pytest.mark.parametrize("layout, sees_past", [({}, False), (PAPER_LAYOUT, True)])
def test_the_decoder_predicts_from_the_last_frame_only(layout, sees_past):
    """Earlier frames would let the decoder extrapolate a move instead of reading the action."""
    model, clip = lam(**layout), video()
    other = clip.clone()
    other[:, 1] = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    actions = torch.zeros(2, 5, dtype=torch.long)
    with torch.no_grad():
        pred, pred_other = model.predict(clip, actions), model.predict(other, actions)
    # Frame 4 is predicted from frame 3 (and, in the paper's layout, frames 0-2 too).
    assert (not torch.allclose(pred[:, 3], pred_other[:, 3], atol=1e-6)) == sees_past


@pytest.mark.parametrize("layout, copies", [({}, True), (PAPER_LAYOUT, False)])
def test_an_untrained_decoder_starts_as_copying_the_last_frame(layout, copies):
    """Predicting the change from a zero head starts at the copy baseline; a decoder that
    redraws whole frames started ~100x worse than it and never got below it."""
    model, clip = lam(**layout), video()
    with torch.no_grad():
        pred = model.predict(clip, model.infer_actions(clip))
    assert torch.allclose(pred, clip[:, :-1], atol=1e-6) == copies


def test_training_metrics_report_codes_and_action_effect():
    model = lam().train()
    metrics = model(video())["metrics"]
    assert 1 <= metrics["codes_used"] <= model.num_actions
    assert metrics["action_effect"].shape == () and torch.isfinite(metrics["action_effect"])


def test_lam_switches_must_be_booleans():
    with pytest.raises(ModelConfigError, match="lam.predict_delta"):
        get_config("tiny", {"lam.predict_delta": "yes"})


# --------------------------------------------------------------------------- learning

SQUARE_MOVES = torch.tensor([[0, 0], [0, -4], [0, 4], [-4, 0], [4, 0]])  # (dy, dx): stay, left, right, up, down


def square_clips(n, gen, frames=3, size=32, side=8):
    """(n, frames, 3, size, size) clips of a white square on grey that takes one random move
    per transition, and the moves (n, frames-1)."""
    clips = torch.full((n, frames, 3, size, size), 0.3)
    moves = torch.randint(0, len(SQUARE_MOVES), (n, frames - 1), generator=gen)
    pos = torch.randint(side, size - 2 * side, (n, 2), generator=gen)
    for t in range(frames):
        if t:
            pos = (pos + SQUARE_MOVES[moves[:, t - 1]]).clamp(0, size - side)
        for i, (y, x) in enumerate(pos.tolist()):
            clips[i, t, :, y : y + side, x : x + side] = 1.0
    return clips, moves


def train_on_squares(steps=STEPS, **overrides):
    torch.manual_seed(0)
    model = LatentActionModel(get_config("tiny", {"image_height": 32, "image_width": 32, "frames": 3, **overrides}))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model(square_clips(BATCH, gen)[0])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_the_tiny_lam_learns_actions_the_decoder_answers():
    """A short training on a moving square leaves several codes in use, a decoder whose error
    rises when the actions are shuffled, and codes that tell the moves apart. With the VQ
    codebook instead (`lam.quantizer=vq`, the tiny preset before FSQ) the same training keeps
    codes alive by restarts but the decoder ignores them: shuffling changes its error by ~1e-6."""
    model = train_on_squares()
    clips, moves = square_clips(64, torch.Generator().manual_seed(1))
    with torch.no_grad():
        actions = model.infer_actions(clips)
        own = ((model.predict(clips, actions) - clips[:, 1:]) ** 2).mean()
        shuffled = ((model.predict(clips, actions[torch.randperm(64, generator=torch.Generator().manual_seed(2))])
                     - clips[:, 1:]) ** 2).mean()
    assert len(actions.unique()) >= 2
    assert shuffled - own > 1e-3, (float(own), float(shuffled))
    assert normalized_mutual_info_score(moves.flatten().numpy(), actions.flatten().numpy()) > 0.15


# --------------------------------------------------------------------------- FSQ


def test_fsq_indices_round_trip_through_lookup():
    fsq = FiniteScalarQuantizer([3, 2, 2], input_dim=6, output_dim=5)
    x = 3 * torch.randn(200, 6, generator=torch.Generator().manual_seed(0))
    quantized, indices, loss, metrics = fsq(x)
    assert quantized.shape == (200, 5) and indices.shape == (200,) and float(loss) == 0.0
    assert torch.equal(fsq.encode(x), indices)
    assert torch.allclose(fsq.lookup(indices), quantized, atol=1e-6)
    # 12 distinct codes, each its own embedding; inputs this spread reach every one.
    assert len(fsq.lookup(torch.arange(12)).unique(dim=0)) == 12
    assert set(indices.tolist()) == set(range(12)) and float(metrics["usage"]) == 1.0


def test_fsq_passes_gradients_straight_through_the_rounding():
    fsq = FiniteScalarQuantizer([2, 2, 2], input_dim=4, output_dim=4)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    fsq(x)[0].pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_fsq_counts_usage_in_training_only():
    fsq = FiniteScalarQuantizer([2, 2], input_dim=2).eval()
    x = torch.randn(8, 2)
    fsq(x)
    assert torch.allclose(fsq.usage_ema, torch.full((4,), 0.25))
    fsq.train()(x)
    assert not torch.allclose(fsq.usage_ema, torch.full((4,), 0.25))


@pytest.mark.parametrize("overrides", [
    {"lam.quantizer": "fsq", "lam.fsq_levels": [2, 2]},  # 4 codes for 8 actions
    {"lam.quantizer": "fsq", "lam.fsq_levels": [8, 1]},
    {"lam.quantizer": "fsq", "lam.fsq_levels": "2,2,2"},
])
def test_fsq_levels_must_give_num_actions_codes(overrides):
    with pytest.raises(ModelConfigError, match="lam.fsq_levels") as err:
        get_config("tiny", overrides)
    assert err.value.key == "lam.fsq_levels"


def test_unknown_quantizer_is_named():
    with pytest.raises(ModelConfigError, match="lam.quantizer"):
        get_config("tiny", {"lam.quantizer": "kmeans"})


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_either_quantizer_serves_the_lam_api(quantizer):
    model, clip = lam(**{"lam.quantizer": quantizer}), video()
    actions = model.infer_actions(clip)
    assert actions.shape == (2, 5) and 0 <= actions.min() and actions.max() < model.num_actions
    assert model.predict(clip, actions).shape == (2, 5, 3, 32, 32)
    out = model.train()(clip)
    assert {"perplexity", "usage", "codes_used", "action_effect"} <= set(out["metrics"])
