"""Play: the cached sampler against the uncached one, the `play` and `export` commands, bad input."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from genie_pipeline.cli import main
from genie_pipeline.models import Genie, get_config
from genie_pipeline.models.config import config_to_dict
from genie_pipeline.training import checkpoint as ckpt_lib
from genie_pipeline.training.bundle import load_genie

from tests.conftest import make_video

torch.set_num_threads(1)  # the shared test machine is oversubscribed; threads spin


def tiny(**overrides):
    return get_config("tiny", {"image_height": 32, "image_width": 48, "frames": 4, **overrides})


def genie(seed=0, **overrides):
    torch.manual_seed(seed)
    return Genie(tiny(**overrides)).eval()


def prompt(seed=0, batch=2):
    return torch.rand(batch, 3, 32, 48, generator=torch.Generator().manual_seed(seed))


def save_genie_pt(model: Genie, path):
    ckpt_lib.save_atomic({"format": ckpt_lib.FORMAT, "kind": "genie", "model_config": config_to_dict(model.cfg),
                          "tokenizer": model.tokenizer.state_dict(), "lam": model.lam.state_dict(),
                          "dynamics": model.dynamics.state_dict()}, path)
    return path


# ------------------------------------------------------------------ the sampler


@pytest.mark.parametrize("greedy", [False, True])
def test_cached_and_uncached_episodes_agree_past_the_window_and_through_undo(greedy):
    model = genie()
    actions = [1, 5, 2, 7, 0, 3, 3, 6, 1, 4]  # 10 steps with a 4-frame window: three restarts
    cached = model.start(prompt(), steps=3, temperature=2.0, greedy=greedy, seed=7)
    uncached = model.start(prompt(), steps=3, temperature=2.0, greedy=greedy, seed=7, cache=False)
    assert torch.allclose(cached.frames[0], uncached.frames[0], atol=1e-5)
    for i, action in enumerate(actions):
        a, b = cached.step(action), uncached.step(action)
        assert torch.equal(cached._tokens[-1], uncached._tokens[-1]), f"tokens differ at step {i}"
        assert torch.allclose(a, b, atol=1e-5), f"pixels differ at step {i}"
        if i in (3, 6):  # step 3 restarted the window: undo crosses it
            for episode in (cached, uncached):
                episode.undo()
                episode.undo()
            assert len(cached.frames) == len(uncached.frames)
            a, b = cached.step(action), uncached.step(action)
            assert torch.equal(cached._tokens[-1], uncached._tokens[-1]), f"tokens differ after undo at {i}"
    assert len(cached.frames) == len(actions) - 2 + 1
    assert cached.frames[-1].shape == (2, 3, 32, 48) and 0 <= cached.frames[-1].min() <= cached.frames[-1].max() <= 1


def test_prompt_detail_shows_the_prompt_on_unchanged_patches_and_the_decoder_elsewhere():
    """With prompt detail the first frame is the prompt itself; a generated frame shows
    decoded + (prompt - decoded prompt) on the patches whose token is the prompt's, the
    decoder's pixels alone on the others; the tokens are those of the episode without it."""
    model, p = genie(), prompt()
    grid = model.tokenizer.grid
    # a random model almost never samples the prompt's token where it stood: this one keeps it
    # on every other patch, so both kinds of patch are shown
    prompt_BN = model.tokenizer.encode(p[:, None])[:, 0]
    sample = model.dynamics.sample_frame

    def keeps_half(*args, **kwargs):
        tokens_BN = sample(*args, **kwargs).clone()
        tokens_BN[:, ::2] = prompt_BN[:, ::2]
        return tokens_BN

    model.dynamics.sample_frame = keeps_half
    on = model.start(p, steps=2, greedy=True, seed=1)
    off = model.start(p, steps=2, greedy=True, seed=1, prompt_detail=False)
    assert model.cfg.dynamics.prompt_detail and on.prompt_detail and not off.prompt_detail
    assert torch.allclose(on.frames[0], p, atol=1e-6) and not torch.allclose(off.frames[0], p, atol=1e-2)
    lost = p - off.frames[0]
    same_seen = changed_seen = 0
    for action in (1, 2, 3, 0, 5):
        shown, decoded = on.step(action), off.step(action)
        assert torch.equal(on._tokens[-1], off._tokens[-1])
        same_BN = on._tokens[-1] == on._tokens[0]
        same = grid.spread(same_BN.float()).bool().expand_as(shown)
        assert torch.allclose(shown[same], (decoded + lost).clamp(0, 1)[same], atol=1e-5)
        assert torch.equal(shown[~same], decoded[~same])
        same_seen, changed_seen = same_seen + int(same_BN.sum()), changed_seen + int((~same_BN).sum())
    assert same_seen and changed_seen, (same_seen, changed_seen)  # both kinds of patch were checked
    with pytest.raises(Exception, match="prompt_detail"):
        Genie(tiny(dynamics={"prompt_detail": "yes"}))


def test_keep_bias_holds_each_patch_to_the_frame_before_in_cached_and_uncached_episodes():
    """An episode's keep bias (default the config's dynamics.keep_bias) tilts every frame to
    the one before it: a huge bias repeats the prompt's tokens, so the frames shown are the
    prompt's pixels again; cached and uncached episodes still agree token for token."""
    model, p = genie(), prompt()
    assert model.cfg.dynamics.keep_bias == 0
    free = model.start(p, steps=2, temperature=1.0, seed=1)
    held = model.start(p, steps=2, temperature=1.0, seed=1, keep_bias=1e4)
    mild = [model.start(p, steps=2, temperature=1.0, seed=1, keep_bias=3.0, cache=c) for c in (True, False)]
    for action in (1, 2, 3, 0, 5, 6):
        free.step(action), held.step(action)
        for episode in mild:
            episode.step(action)
        assert torch.equal(held._tokens[-1], held._tokens[0])
        assert torch.equal(mild[0]._tokens[-1], mild[1]._tokens[-1])

    def kept(episode):
        return float(sum((t == episode._tokens[i]).float().mean() for i, t in enumerate(episode._tokens[1:])))

    assert kept(free) < kept(mild[0]) < kept(held)
    assert (held.frames[-1] - p).abs().mean() < (free.frames[-1] - p).abs().mean()
    configured = genie(dynamics={"keep_bias": 1e4})
    episode = configured.start(p, steps=2, seed=1)
    episode.step(3)
    assert episode.keep_bias == 1e4 and torch.equal(episode._tokens[1], episode._tokens[0])
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="keep_bias"):
            model.start(p, keep_bias=bad)


@pytest.mark.parametrize("cache", [True, False])
def test_the_keep_bias_is_towards_the_last_frame_through_window_restarts_and_undo(cache):
    model = genie()
    seen = []
    sample = model.dynamics.sample_frame

    def spy(*args, **kwargs):
        seen.append((args[7].clone(), args[8]))  # previous_BN, keep_bias
        return sample(*args, **kwargs)

    model.dynamics.sample_frame = spy
    episode = model.start(prompt(), steps=2, temperature=1.0, seed=3, keep_bias=2.5, cache=cache)
    for i, action in enumerate([1, 5, 2, 7, 0, 3, 6]):  # a 4-frame window: restarts at steps 3 and 5
        before = episode._tokens[-1].clone()
        episode.step(action)
        assert torch.equal(seen[-1][0], before) and seen[-1][1] == 2.5, i
        if i == 4:
            episode.undo()
            episode.undo()
            episode.step(action)
            assert torch.equal(seen[-1][0], episode._tokens[-2]), "after undo"


def test_episode_is_reproducible_by_seed_and_leaves_the_global_rng_alone():
    model = genie()
    state = torch.get_rng_state()
    runs = [[model.start(prompt(), steps=2, seed=s).step(a) for a in (1, 2)] for s in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(runs[0], runs[1]))
    assert not all(torch.equal(x, y) for x, y in zip(runs[0], runs[2]))


def test_output_depends_on_the_prompt_and_on_the_action():
    """Asserted on the dynamics model's output for the first generated frame (the logits of its
    first MaskGIT step, where every token is masked and only the prompt and the action can
    tell two calls apart), not on decoded pixels: the tokenizer decoder reads the prompt
    itself, so pixels differ between prompts even when the dynamics model drops the prompt."""
    model = genie()
    real_frame_logits = model.dynamics.frame_logits

    def first_logits(p, action, cache):
        seen = []

        def recording(*args, **kwargs):  # a spy on the real model: it records the logits it returned
            seen.append(real_frame_logits(*args, **kwargs))
            return seen[-1]

        model.dynamics.frame_logits = recording
        try:
            model.start(p, steps=2, greedy=True, cache=cache).step(action)
        finally:
            del model.dynamics.frame_logits
        return seen[0][:, -1]

    for cache in (True, False):
        a, b = first_logits(prompt(1), 3, cache), first_logits(prompt(2), 3, cache)
        assert (a - b).abs().max() > 1e-3 * a.abs().max()
        a, b = first_logits(prompt(1), 3, cache), first_logits(prompt(1), 4, cache)
        assert (a - b).abs().max() > 1e-3 * a.abs().max()
    with torch.no_grad():  # an action embedding that matters, as after training: different tokens
        model.dynamics.action_embed.weight.mul_(20)
    first = [model.start(prompt(1), steps=2, greedy=True) for _ in range(2)]
    for episode, action in zip(first, (3, 4)):
        episode.step(action)
    assert not torch.equal(first[0]._tokens[-1], first[1]._tokens[-1])


def test_episode_undo_at_the_prompt_and_bad_actions():
    episode = genie().start(prompt(batch=1), steps=1)
    episode.undo()
    assert len(episode.frames) == 1 and episode.actions == []
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        episode.step(8)
    with pytest.raises(ValueError, match="shape"):
        episode.step(torch.tensor([1, 2]))
    episode.step(torch.tensor([2]))
    assert len(episode.frames) == 2


# ------------------------------------------------------------------ play and export commands


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    save_genie_pt(genie(), run / "genie.pt")
    return run


def play(args, capsys):
    code = main(["play", *map(str, args)])
    return code, capsys.readouterr().err


def outputs(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_play_writes_mp4_and_gif_from_a_picture(run_dir, tmp_path, capsys, fmt):
    from genie_pipeline.shards.clip import decode_clip

    image = tmp_path / f"prompt.{fmt.lower()}"
    Image.new("RGB", (200, 120), (30, 160, 90)).save(image, fmt)
    out = tmp_path / "out" / "demo.mp4"
    code, err = play(["--checkpoint", run_dir, "--prompt", image, "--actions", "1,1,3,0", "--out", out,
                      "--steps", 2], capsys)
    assert code == 0, err
    assert decode_clip(out.read_bytes()).shape == (5, 64, 96, 3)  # prompt + 4 frames at scale 2
    assert Image.open(out.with_suffix(".gif")).n_frames == 5


def test_play_shows_the_prompt_itself_first_unless_decoded_only(run_dir, tmp_path, capsys):
    """With the config's prompt detail the first frame is the prompt picture (fitted to the
    model's frame: bars where the aspect differs); --decoded-only shows the decoder's
    reconstruction of it (a random tiny model's: far from the picture). A high --keep-bias
    holds the prompt's tokens, so the last frame stays nearer the picture than without."""
    from genie_pipeline.shards.clip import decode_clip

    image = tmp_path / "prompt.png"
    Image.new("RGB", (96, 64), (30, 160, 90)).save(image)
    first, last = {}, {}
    for name, extra in (("detail", []), ("decoded", ["--decoded-only"]), ("kept", ["--keep-bias", "1000"])):
        out = tmp_path / name / "demo.mp4"
        code, err = play(["--checkpoint", run_dir, "--prompt", image, "--actions", "1,2,3", "--out", out,
                          "--steps", 2, *extra], capsys)
        assert code == 0, err
        frames = decode_clip(out.read_bytes()).astype(float)
        first[name], last[name] = (np.abs(frames[i] - (30, 160, 90)).mean() for i in (0, -1))
    assert first["detail"] < first["decoded"] / 3, first
    assert last["kept"] < last["detail"] / 2, last


def test_play_from_a_video_bundle_and_random_actions(run_dir, tmp_path, capsys):
    video = make_video(tmp_path / "clip.mp4", 1, size="320x180", fps=10)
    bundle = tmp_path / "bundle.pt"
    (run_dir / "actions.json").write_text(json.dumps([f"move {i}" for i in range(8)]))
    try:
        assert main(["export", "--checkpoint", str(run_dir), "--out", str(bundle)]) == 0
    finally:
        (run_dir / "actions.json").unlink()
    raw = torch.load(bundle, weights_only=True)
    assert raw["kind"] == "bundle" and set(raw) >= {"tokenizer", "lam", "dynamics", "model_config", "action_names"}
    assert load_genie(bundle).action_names[3] == "move 3"
    assert load_genie(run_dir).action_names[3] == "action 3"
    code, err = play(["--checkpoint", bundle, "--image", video, "--random", 6, "--out", tmp_path / "v.mp4",
                      "--greedy"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "v.gif").n_frames == 7


def _truncated_png(path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize("case", ["truncated", "garbage", "enormous", "missing", "action", "random0",
                                  "other_config", "not_a_run", "pickle", "tokenizer_only", "steps",
                                  "keep_bias", "keep_bias_nan"])
def test_play_bad_input_exits_2_naming_it_and_writes_nothing(run_dir, tmp_path, capsys, case):
    image = tmp_path / "p.png"
    Image.new("RGB", (200, 120), (200, 30, 30)).save(image)
    checkpoint, extra, expect = run_dir, [], None
    if case == "truncated":
        _truncated_png(image)
        expect = "unreadable image"
    elif case == "garbage":
        image.write_bytes(b"\x00not an image at all" * 50)
        expect = "prompt"
    elif case == "enormous":
        extra, expect = ["--set", "download.max_pixels=1000"], "max_pixels"
    elif case == "missing":
        image, expect = tmp_path / "nope.png", "does not exist"
    elif case == "action":
        extra, expect = ["--actions", "1,8"], "in [0, 8)"
    elif case == "random0":
        extra, expect = ["--random", "0"], "random"
    elif case == "other_config":
        ck = torch.load(run_dir / "genie.pt", weights_only=True)
        ck["model_config"] = config_to_dict(tiny(dynamics={"st": {"dim": 32, "depth": 2, "heads": 2}}))
        checkpoint = tmp_path / "other.pt"
        torch.save(ck, checkpoint)
        expect = "do not fit the model config"
    elif case == "not_a_run":
        checkpoint = tmp_path / "empty_run"
        checkpoint.mkdir()
        expect = "not a training run"
    elif case == "pickle":
        checkpoint = tmp_path / "evil.pt"
        torch.save({"format": 1, "payload": os.system}, checkpoint)
        expect = "pickle payload"
    elif case == "tokenizer_only":
        checkpoint = tmp_path / "tok.pt"
        torch.save({"format": ckpt_lib.FORMAT, "model": {"tokenizer": {}}, "model_config": {}}, checkpoint)
        expect = "not a whole Genie"
    elif case == "steps":
        extra, expect = ["--steps", "0"], "--steps"
    elif case == "keep_bias":
        extra, expect = ["--keep-bias", "-1"], "--keep-bias"
    elif case == "keep_bias_nan":
        extra, expect = ["--keep-bias", "nan"], "--keep-bias"
    out_dir = tmp_path / "out"
    code, err = play(["--checkpoint", checkpoint, "--prompt", image, "--out", out_dir / "x.mp4", *extra], capsys)
    assert code == 2, err
    assert expect in err and len(err.strip().splitlines()) == 1, err
    assert not out_dir.exists()


def test_export_refuses_a_broken_source_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "b.pt")]) == 2
    assert "not a training run" in capsys.readouterr().err
    assert not (tmp_path / "b.pt").exists()
