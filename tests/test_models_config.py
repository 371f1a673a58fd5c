"""Configs, validation, parameter counts and the patch grid."""

import pytest
import torch

from genie_pipeline.models import NAMED_CONFIGS, ModelConfigError, PatchGrid, config_to_dict, count_params, get_config, validate


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_config_param_counts_match_stated(name):
    cfg = get_config(name)
    counts = count_params(cfg)
    assert set(cfg.stated_params) == {"tokenizer", "lam", "dynamics"}
    for component, stated in cfg.stated_params.items():
        assert abs(counts[component] - stated) <= 0.15 * stated, (component, counts[component], stated)


def test_paper_sizes_are_the_papers():
    # Genie: ~200M tokenizer, ~300M LAM, dynamics from 2.7B (scaling study) to 10.7B.
    assert 170e6 < count_params(get_config("paper"))["tokenizer"] < 230e6
    assert 255e6 < count_params(get_config("paper"))["lam"] < 345e6
    assert 10.0e9 < count_params(get_config("paper-11b"))["dynamics"] < 11.5e9


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"tokenizer.st.heads": 3}, "tokenizer.st.heads"),
        ({"lam": {"decoder_st": {"heads": 5}}}, "lam.decoder_st.heads"),
        ({"dynamics.st.dim": 63, "dynamics.st.heads": 1}, "dynamics.st.dim"),
        ({"lam.patch": 128}, "lam.patch"),
        ({"image_height": 64, "image_width": 64, "lam.patch": 65}, "lam.patch"),
        ({"tokenizer.patch": 0}, "tokenizer.patch"),
        ({"frames": 1}, "frames"),
        ({"pad_mode": "reflect"}, "pad_mode"),
        ({"dynamics.action_mode": "multiply"}, "dynamics.action_mode"),
        ({"dynamics.mask_min": 0.6, "dynamics.mask_max": 0.5}, "dynamics.mask_max"),
        ({"tokenizer.codebook_size": 1}, "tokenizer.codebook_size"),
        ({"tokenizer.st.depth": 0}, "tokenizer.st.depth"),
        ({"tokenizer.st.widht": 3}, "tokenizer.st.widht"),
        ({"stated_params": {"vae": 1}}, "stated_params.vae"),
    ],
)
def test_validation_names_the_key(overrides, key):
    with pytest.raises(ModelConfigError) as err:
        get_config("tiny", overrides)
    assert err.value.key == key
    assert key in str(err.value)


def test_unknown_name_is_an_error():
    with pytest.raises(ModelConfigError) as err:
        get_config("huge")
    assert err.value.key == "name"


def test_overrides_apply_and_presets_stay_untouched():
    cfg = get_config({"name": "small", "dynamics": {"action_mode": "concat"}, "tokenizer.patch": 8})
    assert cfg.dynamics.action_mode == "concat" and cfg.tokenizer.patch == 8
    assert NAMED_CONFIGS["small"].dynamics.action_mode == "add"
    assert NAMED_CONFIGS["small"].tokenizer.patch == 4


def test_config_round_trips_through_dict():
    cfg = get_config("paper", {"lam.decoder_st.depth": 3})
    assert cfg.lam.decoder_st.dim == cfg.lam.st.dim  # an unset decoder starts as the encoder
    again = get_config(config_to_dict(cfg))
    assert again == cfg


def test_validate_catches_direct_edits():
    cfg = get_config("tiny")
    cfg.tokenizer.st.heads = 5
    with pytest.raises(ModelConfigError, match="tokenizer.st.heads"):
        validate(cfg)


@pytest.mark.parametrize(
    "mode, patch, hw",
    [("pad", 4, (23, 40)), ("pad", 16, (6, 10)), ("crop", 4, (22, 40)), ("crop", 16, (5, 10))],
)
def test_patch_grid_160x90(mode, patch, hw):
    grid = PatchGrid(90, 160, patch, mode)
    assert grid.tokens_hw == hw
    video = torch.rand(2, 3, 3, 90, 160)
    patches = grid.patchify(video)
    assert patches.shape == (2, 3, hw[0] * hw[1], patch * patch * 3)
    back = grid.unpatchify(patches)
    assert back.shape[-2:] == grid.out_hw
    assert torch.equal(back, grid.target(video))


def test_pad_mode_pads_bottom_right_with_zeros_and_crop_is_centred():
    video = torch.rand(1, 1, 3, 90, 160) + 1.0  # no zeros in the real pixels
    pad = PatchGrid(90, 160, 16, "pad")
    rows, cols = pad.tokens_hw
    first_patch = pad.patchify(video)[0, 0, 0]
    assert (first_patch != 0).all()
    last_row = pad.patchify(video)[0, 0, (rows - 1) * cols]
    # The last patch row covers image rows 80..95; 90..95 are padding.
    assert (last_row.reshape(16, 16, 3)[10:] == 0).all() and (last_row.reshape(16, 16, 3)[:10] != 0).all()

    crop = PatchGrid(90, 160, 16, "crop")
    assert torch.equal(crop.target(video), video[..., 5:85, :])


def test_patch_larger_than_image_is_refused():
    with pytest.raises(ValueError):
        PatchGrid(8, 160, 16)
