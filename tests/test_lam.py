"""The latent action model's defences against the collapse of issue 8.

On sprite footage (benchmarks/lam.py) the paper's layout learned codes that named the
frame's position in the window (NMI with the frame index 0.94, with the true move 0.01)
and a decoder that did worse than copying the previous frame and ignored its actions.
Each test below pins one setting of models/lam.py that removes one of those routes, and
fails with that setting off (the paper's layout, `PAPER_LAYOUT`).
"""

import pytest
import torch

from genie_pipeline.models import LatentActionModel, ModelConfigError, get_config

PAPER_LAYOUT = {"lam.encode_pairs": False, "lam.decoder_past": True, "lam.predict_delta": False}


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
