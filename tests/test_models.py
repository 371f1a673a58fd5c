"""Behaviour of the model components with the tiny config."""

import pytest
import torch
import torch.nn.functional as F

from genie_pipeline.models import (
    DynamicsModel,
    Genie,
    LatentActionModel,
    STConfig,
    STTransformer,
    VectorQuantizer,
    VideoTokenizer,
    get_config,
)

torch.set_num_threads(2)

SIZES = [(90, 160), (64, 64)]


def tiny(height=90, width=160, **overrides):
    return get_config("tiny", {"image_height": height, "image_width": width, **overrides})


def clip(cfg, batch=2, frames=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, cfg.image_height, cfg.image_width, generator=gen)


def grad_norm(module):
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


# ------------------------------------------------------------------ shapes and dtypes


@pytest.mark.parametrize("height, width", SIZES)
def test_tokenizer_shapes(height, width):
    cfg = tiny(height, width)
    model = VideoTokenizer(cfg)
    video = clip(cfg)
    rows, cols = model.tokens_hw
    assert rows == -(-height // cfg.tokenizer.patch) and cols == -(-width // cfg.tokenizer.patch)

    out = model(video)
    assert out["recon"].shape == video.shape and out["recon"].dtype == torch.float32
    assert out["loss"].shape == () and out["loss"].requires_grad
    assert set(out["metrics"]) >= {"recon_mse", "vq_loss", "perplexity", "usage", "psnr"}

    tokens = model.encode(video)
    assert tokens.shape == (2, 4, rows * cols) and tokens.dtype == torch.long
    assert 0 <= tokens.min() and tokens.max() < cfg.tokenizer.codebook_size
    decoded = model.decode(tokens)
    assert decoded.shape == video.shape and 0 <= decoded.min() and decoded.max() <= 1


def test_tokenizer_crop_mode_returns_cropped_frames():
    cfg = tiny(pad_mode="crop")
    model = VideoTokenizer(cfg)
    out = model(clip(cfg))
    assert model.tokens_hw == (11, 20)
    assert out["recon"].shape[-2:] == (88, 160)


@pytest.mark.parametrize("height, width", SIZES)
def test_lam_shapes(height, width):
    cfg = tiny(height, width)
    model = LatentActionModel(cfg)
    video = clip(cfg, frames=5)
    out = model(video)
    assert out["recon"].shape == (2, 4, 3, height, width)
    assert out["actions_BT"].shape == (2, 4) and out["actions_BT"].dtype == torch.long
    assert out["loss"].shape == ()
    assert set(out["metrics"]) >= {"recon_mse", "perplexity", "usage", "psnr"}
    actions = model.infer_actions(video)
    assert actions.shape == (2, 4) and actions.dtype == torch.long
    assert 0 <= actions.min() and actions.max() < cfg.lam.num_actions


@pytest.mark.parametrize("height, width", SIZES)
def test_dynamics_and_genie_shapes(height, width):
    cfg = tiny(height, width)
    genie = Genie(cfg).eval()
    video = clip(cfg)
    tokens = genie.tokenizer.encode(video)
    N, K = tokens.shape[2], cfg.tokenizer.codebook_size
    actions = torch.randint(0, cfg.lam.num_actions, (2, 3))

    out = genie.dynamics(tokens, actions)
    assert out["logits_BTNK"].shape == (2, 4, N, K)
    assert out["loss"].shape == () and set(out["metrics"]) == {"acc", "mask_ratio"}
    # (B, T) actions are accepted too; the last one leads past the clip and is unused.
    mask = genie.dynamics.draw_mask(tokens)
    with_extra = genie.dynamics(tokens, torch.cat([actions, actions[:, :1]], 1), mask_BTN=mask)
    assert torch.allclose(with_extra["loss"], genie.dynamics(tokens, actions, mask_BTN=mask)["loss"])

    next_tokens = genie.dynamics.generate_next(tokens, torch.randint(0, 8, (2, 4)), steps=3)
    assert next_tokens.shape == (2, N) and next_tokens.dtype == torch.long
    assert 0 <= next_tokens.min() and next_tokens.max() < K  # no mask token left

    frame = genie.play_step(video[:, :2], action=3)
    assert frame.shape == (2, 3, height, width)
    frame = genie.play_step(video[:, :1], action=torch.tensor([1, 2]))
    assert frame.shape == (2, 3, height, width)
    torch.manual_seed(0)
    given = genie.play_step(video[:, :3], 1, past_actions=genie.lam.infer_actions(video[:, :3]))
    torch.manual_seed(0)
    inferred = genie.play_step(video[:, :3], 1)
    assert torch.equal(given, inferred)


def test_rollout_slides_past_the_training_clip_length():
    cfg = tiny(64, 64, frames=4)
    model = DynamicsModel(cfg).eval()
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (1, 2, 16))
    actions = torch.randint(0, cfg.lam.num_actions, (1, 1 + 5))
    new = model.rollout(tokens, actions, steps=2)
    assert new.shape == (1, 5, 16)
    assert new.max() < cfg.tokenizer.codebook_size


# ------------------------------------------------------------------ training mechanics


def test_dynamics_mask_spares_the_first_frame_and_follows_the_rate():
    cfg = tiny(dynamics={"mask_min": 0.5, "mask_max": 1.0})
    model = DynamicsModel(cfg)
    tokens = torch.zeros(64, 4, 100, dtype=torch.long)
    mask = model.draw_mask(tokens)
    assert not mask[:, 0].any()
    per_sample = mask[:, 1:].float().mean(dim=(1, 2))
    assert per_sample.min() > 0.4 and per_sample.max() <= 1.0 and per_sample.std() > 0.05


def test_dynamics_loss_is_on_masked_tokens_only():
    cfg = tiny(64, 64)
    model = DynamicsModel(cfg)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (2, 3, 16))
    actions = torch.randint(0, 8, (2, 2))
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 2, :5] = True
    out = model(tokens, actions, mask_BTN=mask)
    expected = F.cross_entropy(out["logits_BTNK"][mask], tokens[mask])
    assert torch.allclose(out["loss"], expected)


def test_straight_through_gradients_reach_the_encoders():
    cfg = tiny(64, 64)
    video = clip(cfg)
    tokenizer = VideoTokenizer(cfg)
    # Only the reconstruction, never the VQ loss: its sole path to the encoder is the
    # straight-through estimator.
    F.mse_loss(tokenizer(video)["recon"], video).backward()
    assert grad_norm(tokenizer.encoder) > 0 and grad_norm(tokenizer.embed) > 0

    lam = LatentActionModel(cfg)
    with torch.no_grad():  # the delta head starts at zero ("copy the last frame"), which passes no gradient back
        for p in lam.head.parameters():
            p.normal_(0, 0.02)
    F.mse_loss(lam(video)["recon"], video[:, 1:]).backward()
    assert grad_norm(lam.encoder) > 0
    assert lam.action_query_C.grad.abs().sum() > 0


def test_vq_straight_through_and_lookup():
    vq = VectorQuantizer(16, 4, input_dim=8)
    x = torch.randn(2, 3, 5, 8, requires_grad=True)
    quantized, indices, loss, metrics = vq(x)
    assert quantized.shape == x.shape and indices.shape == (2, 3, 5)
    assert torch.allclose(vq.lookup(indices), quantized, atol=1e-6)
    assert torch.equal(vq.encode(x), indices)
    quantized.sum().backward()
    assert x.grad.abs().sum() > 0
    assert 1.0 <= metrics["perplexity"] <= 16 and 0 < metrics["usage"] <= 1


@pytest.mark.parametrize("restart", [True, False])
def test_dead_code_restart_revives_unused_codes(restart):
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, input_dim=4, dead_code_threshold=2, restart=restart)
    with torch.no_grad():
        vq.project_in.weight.copy_(torch.eye(4))
        vq.project_in.bias.zero_()
        # Code 0 points along the inputs, every other code away from them: all on code 0.
        vq.codebook.weight[:] = -torch.tensor([1.0, 0, 0, 0])
        vq.codebook.weight[0] = torch.tensor([1.0, 0, 0, 0])
    before = vq.codebook.weight.detach().clone()
    inputs = torch.tensor([1.0, 0, 0, 0]) + 0.5 * torch.randn(64, 4).abs()

    usages = [vq(inputs)[3]["usage"].item() for _ in range(4)]
    assert usages[0] == 1 / 16
    changed = (vq.codebook.weight.detach() != before).any(dim=1)
    if restart:
        assert changed[1:].all()
        assert usages[-1] > 1 / 16
        # Revived codes restart among the inputs, which all lie in the positive orthant.
        revived = F.normalize(vq.codebook.weight.detach()[1:], dim=-1)
        assert (revived @ F.normalize(torch.ones(4), dim=0) > 0.3).all()
    else:
        assert not changed.any() and usages[-1] == 1 / 16


def test_vq_keeps_a_running_usage_buffer():
    vq = VectorQuantizer(8, 4, input_dim=4, restart=False)
    idx = vq(torch.randn(256, 4))[1]
    counts = torch.bincount(idx, minlength=8).float()
    expected = 0.99 / 8 + 0.01 * counts / counts.sum()
    assert torch.allclose(vq.usage_ema, expected)
    vq.eval()
    vq(torch.randn(256, 4))
    assert torch.allclose(vq.usage_ema, expected)  # eval does not count


# ------------------------------------------------------------------ causality


def changed_at(video, frame, seed=1):
    other = video.clone()
    other[:, frame] = torch.rand(other[:, frame].shape, generator=torch.Generator().manual_seed(seed))
    return other


def test_tokenizer_is_causal_in_time():
    cfg = tiny(64, 64)
    model = VideoTokenizer(cfg).eval()
    video = clip(cfg, frames=5)
    other = changed_at(video, 3)
    latents = model.encoder(model.embed(video))
    latents_other = model.encoder(model.embed(other))
    assert torch.allclose(latents[:, :3], latents_other[:, :3], atol=1e-6)
    assert not torch.allclose(latents[:, 3], latents_other[:, 3], atol=1e-3)
    assert torch.equal(model.encode(video)[:, :3], model.encode(other)[:, :3])

    tokens = model.encode(video)
    tokens_other = tokens.clone()
    tokens_other[:, 3] = (tokens_other[:, 3] + 1) % cfg.tokenizer.codebook_size
    decoded, decoded_other = model.decode(tokens), model.decode(tokens_other)
    assert torch.allclose(decoded[:, :3], decoded_other[:, :3], atol=1e-6)
    assert not torch.allclose(decoded[:, 3], decoded_other[:, 3], atol=1e-4)


def test_lam_actions_are_causal_in_time():
    cfg = tiny(64, 64)
    model = LatentActionModel(cfg).eval()
    video = clip(cfg, frames=6)
    other = changed_at(video, 4)  # frame 4 ends transition 3
    latents, latents_other = model._action_latents(video), model._action_latents(other)
    assert torch.allclose(latents[:, :3], latents_other[:, :3], atol=1e-6)
    assert not torch.allclose(latents[:, 3], latents_other[:, 3], atol=1e-3)
    assert torch.equal(model.infer_actions(video)[:, :3], model.infer_actions(other)[:, :3])

    # The decoder's prediction of frame t+1 uses frames <= t only.
    recon, recon_other = model(video)["recon"], model(other)["recon"]
    assert torch.allclose(recon[:, :3], recon_other[:, :3], atol=1e-6)


@pytest.mark.parametrize("mode", ["add", "concat", "prepend"])
def test_dynamics_is_causal_and_uses_actions(mode):
    cfg = tiny(64, 64, dynamics={"action_mode": mode})
    model = DynamicsModel(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (2, 5, 16), generator=gen)
    actions = torch.randint(0, cfg.lam.num_actions, (2, 4), generator=gen)
    mask = model.draw_mask(tokens)
    logits = model(tokens, actions, mask_BTN=mask)["logits_BTNK"]

    other = tokens.clone()
    other[:, 3] = (other[:, 3] + 1) % cfg.tokenizer.codebook_size
    other_logits = model(other, actions, mask_BTN=mask)["logits_BTNK"]
    assert torch.allclose(logits[:, :3], other_logits[:, :3], atol=1e-5)
    assert not torch.allclose(logits[:, 3:], other_logits[:, 3:], atol=1e-4)

    # Action 2 leads from frame 2 to frame 3: it may change frames 3.. only.
    other_actions = actions.clone()
    other_actions[:, 2] = (other_actions[:, 2] + 1) % cfg.lam.num_actions
    action_logits = model(tokens, other_actions, mask_BTN=mask)["logits_BTNK"]
    assert torch.allclose(logits[:, :3], action_logits[:, :3], atol=1e-5)
    assert not torch.allclose(logits[:, 3], action_logits[:, 3], atol=1e-4)

    out = model.train()(tokens, actions)
    out["loss"].backward()
    assert model.action_embed.weight.grad.abs().sum() > 0
    next_tokens = model.eval().generate_next(tokens, torch.cat([actions, actions[:, :1]], 1), steps=2)
    assert next_tokens.shape == (2, 16)


def test_kv_cache_matches_full_pass():
    torch.manual_seed(0)
    model = STTransformer(STConfig(dim=32, depth=2, heads=4)).eval()
    x = torch.randn(2, 5, 6, 32)
    full = model(x)
    out_a, cache = model.extend(x[:, :2])
    out_b, cache = model.extend(x[:, 2:4], cache)
    out_c = model(x[:, 4:], cache)
    assert cache.frames == 4
    assert torch.allclose(torch.cat([out_a, out_b, out_c], 1), full, atol=1e-5)


def test_non_causal_transformer_sees_the_future():
    torch.manual_seed(0)
    model = STTransformer(STConfig(dim=32, depth=1, heads=4), causal_time=False).eval()
    x = torch.randn(1, 3, 4, 32)
    other = x.clone()
    other[:, 2] += torch.randn(4, 32)
    assert not torch.allclose(model(x)[:, 0], model(other)[:, 0], atol=1e-4)


def test_greedy_generation_matches_uncached_argmax_at_one_step():
    cfg = tiny(64, 64)
    model = DynamicsModel(cfg).eval()
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (2, 3, 16))
    actions = torch.randint(0, cfg.lam.num_actions, (2, 3))
    next_tokens = model.generate_next(tokens, actions, steps=1, greedy=True)
    # One step predicts every token from a fully masked frame; compare with a plain pass.
    masked = torch.cat([tokens, torch.full_like(tokens[:, :1], model.mask_token)], 1)
    mask = torch.zeros_like(masked, dtype=torch.bool)
    logits = model(masked.clamp(max=cfg.tokenizer.codebook_size - 1), actions, mask_BTN=mask | (masked == model.mask_token))
    assert torch.equal(next_tokens, logits["logits_BTNK"][:, -1].argmax(-1))


# ------------------------------------------------------------------ overfitting


def overfit(model, loss_fn, steps=20, lr=3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_tokenizer_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny(32, 32)
    model = VideoTokenizer(cfg)
    video = clip(cfg, batch=2, frames=3)
    losses = overfit(model, lambda: model(video)["loss"])
    assert losses[-1] < 0.6 * losses[0]


def test_lam_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny(32, 32)
    model = LatentActionModel(cfg)
    video = clip(cfg, batch=2, frames=3)
    losses = overfit(model, lambda: model(video)["loss"])
    assert losses[-1] < 0.6 * losses[0]


def test_dynamics_overfits_a_fixed_batch():
    torch.manual_seed(0)
    cfg = tiny(32, 32)
    model = DynamicsModel(cfg)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (2, 3, 16))
    actions = torch.randint(0, cfg.lam.num_actions, (2, 2))
    mask = model.draw_mask(tokens)
    losses = overfit(model, lambda: model(tokens, actions, mask_BTN=mask)["loss"])
    assert losses[-1] < 0.6 * losses[0]


# ------------------------------------------------------------------ sampling defects (issue 8)


@pytest.mark.parametrize("mode", ["add", "concat", "prepend"])
def test_one_prompt_frame_conditions_the_next_frame(mode):
    """A single context frame has no past action: it must still reach the model (it was
    dropped by broadcasting against an empty action tensor, so two prompts gave one output)."""
    cfg = tiny(64, 64, dynamics={"action_mode": mode})
    torch.manual_seed(0)
    model = DynamicsModel(cfg).eval()
    a, b = (torch.randint(0, cfg.tokenizer.codebook_size, (1, 1, 16), generator=torch.Generator().manual_seed(s))
            for s in (1, 2))
    action = torch.tensor([[3]])
    next_a = model.generate_next(a, action, steps=2, greedy=True)
    next_b = model.generate_next(b, action, steps=2, greedy=True)
    assert not torch.equal(next_a, next_b)
    assert model.rollout(a, torch.tensor([[3, 1]]), steps=2, greedy=True).shape == (1, 2, 16)


def test_play_step_from_one_image_depends_on_the_image():
    """The dynamics' tokens, not decoded pixels: the tokenizer decoder reads the prompt's tokens
    itself, so pixels differ between prompts even when the dynamics model ignores the prompt."""
    cfg = tiny(64, 64)
    torch.manual_seed(0)
    genie = Genie(cfg).eval()
    generated = []
    real_generate_next = genie.dynamics.generate_next

    def recording(*args, **kwargs):  # a spy on the real sampler: it records what play_step generated
        generated.append(real_generate_next(*args, **kwargs))
        return generated[-1]

    genie.dynamics.generate_next = recording
    x, y = clip(cfg, batch=1, frames=1, seed=1), clip(cfg, batch=1, frames=1, seed=2)
    genie.play_step(x, 2, steps=2, greedy=True)
    genie.play_step(y, 2, steps=2, greedy=True)
    assert len(generated) == 2 and generated[0].shape == (1, 64)
    assert not torch.equal(generated[0], generated[1])


def test_keep_bias_keeps_a_patch_unless_the_model_prefers_another_token_by_more_than_the_bias():
    """Greedy, one MaskGIT step: a patch takes the model's favourite token only where its
    log-probability beats the previous frame's token there by more than keep_bias; sampling
    keeps more of the previous frame as the bias grows, all of it when the bias is huge."""
    cfg = tiny(64, 64)
    torch.manual_seed(0)
    model = DynamicsModel(cfg).eval()
    with torch.no_grad():  # log-probability margins of 2 to 7 nats: the biases below fall among them
        model.head.weight.mul_(4)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (4, 2, 16), generator=torch.Generator().manual_seed(3))
    actions = torch.randint(0, cfg.lam.num_actions, (4, 2), generator=torch.Generator().manual_seed(4))
    previous_BN = tokens[:, -1]
    with torch.no_grad():  # the model's own log-probabilities for the new frame, fully masked
        cache = model.prefill(tokens, actions[:, :1])
        masked_BN = torch.full_like(previous_BN, model.mask_token)
        log_probs_BNK = model.frame_logits(masked_BN[:, None], actions[:, 1:], cache)[:, 0].float().log_softmax(-1)
    best_BN = log_probs_BNK.argmax(-1)
    margin_BN = log_probs_BNK.max(-1).values - log_probs_BNK.gather(-1, previous_BN[..., None])[..., 0]
    kept = {}
    for bias in (0.0, 2.0, 5.0, 8.0):
        model.cfg.keep_bias = bias
        greedy_BN = model.generate_next(tokens, actions, steps=1, greedy=True)
        assert torch.equal(greedy_BN, torch.where(margin_BN > bias, best_BN, previous_BN)), bias
        torch.manual_seed(5)
        kept[bias] = (model.generate_next(tokens, actions, steps=4, temperature=1.0) == previous_BN).float().mean()
    model.cfg.keep_bias = 1e4
    torch.manual_seed(5)
    assert torch.equal(model.generate_next(tokens, actions, steps=4, temperature=1.0), previous_BN)
    assert kept[0.0] < 0.2 and kept[0.0] < kept[2.0] < kept[5.0] < kept[8.0] and kept[8.0] > 0.6, kept
    assert 0 < int((margin_BN > 5.0).sum()) < margin_BN.numel()  # the bias decided some patches both ways
    with pytest.raises(Exception, match="dynamics.keep_bias"):
        DynamicsModel(tiny(64, 64, dynamics={"keep_bias": -1}))
    # a rollout tilts each new frame towards the one it generated last, the context's at first
    seen, sample = [], model.sample_frame
    model.sample_frame = lambda *a, **k: seen.append(a[7]) or sample(*a, **k)
    model.cfg.keep_bias = 2.0
    out_BFN = model.rollout(tokens, torch.cat([actions, actions], 1)[:, :4], steps=2, temperature=1.0)
    assert out_BFN.shape == (4, 3, 16) and len(seen) == 3
    assert torch.equal(seen[0], tokens[:, -1]) and all(torch.equal(seen[i], out_BFN[:, i - 1]) for i in (1, 2))


def test_greedy_is_deterministic_and_temperature_scales_token_sampling():
    cfg = tiny(64, 64)
    torch.manual_seed(0)
    model = DynamicsModel(cfg).eval()
    with torch.no_grad():  # a peaked but not one-hot distribution: temperature must matter
        model.head.weight.mul_(40)
    tokens = torch.randint(0, cfg.tokenizer.codebook_size, (4, 2, 16), generator=torch.Generator().manual_seed(3))
    actions = torch.randint(0, cfg.lam.num_actions, (4, 2), generator=torch.Generator().manual_seed(4))
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(model.generate_next(tokens, actions, steps=4, temperature=2.0, greedy=True))
    assert torch.equal(*runs)
    greedy = model.generate_next(tokens, actions, steps=1, greedy=True)

    def disagreement(temperature):
        torch.manual_seed(5)
        return (model.generate_next(tokens, actions, steps=1, temperature=temperature) != greedy).float().mean()

    assert disagreement(0.0) == 0
    assert disagreement(1e-3) < disagreement(1.0) < disagreement(8.0)
