"""Latent action model diagnostics: does the LAM find the true actions of sprite footage?

    .venv/bin/python benchmarks/lam.py [--steps 900] [--variant NAME ...] [--out benchmarks/results/lam.json]

Trains the LAM alone (its own forward loss, AdamW) on sprite clips whose true per-frame moves
are known (tests/fixtures/footage.py: stay/left/right/up/down, a new move every 8 frames), on
8-frame windows of 64x64 clips, then scores it on held-out clips:

- `codes_used`, `perplexity`: how many of the action codes the held-out transitions use;
- `nmi_move`: normalised mutual information between latent and true move (0 = unrelated,
  1 = one-to-one); `nmi_frame_index`: the same against the transition's position in the
  window, which is high when the codes only encode where in the clip a frame sits;
  `nmi_scroll`: against the clip's background scroll speed (-2, -1, 1 or 2 px per frame),
  the other change of this footage that x_t alone does not predict;
- `mse_own`, `effect_shuffled`, `effect_random`: the decoder's error with its own actions,
  and how much higher it is with actions shuffled across clips or drawn at random. An effect
  of 0 means the decoder ignores the action; `mse_copy` (predict the previous frame) is the
  error a decoder that learned nothing but copying would reach.

Each variant is a set of model config overrides on the tiny preset, so a fix that is a new
config key can be compared with the old behaviour in the same run: by default `before` (the
tiny LAM of e6edc0e, a VQ codebook) and `after` (the preset's defaults, FSQ); `--variant`
runs others.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import normalized_mutual_info_score  # noqa: E402

from genie_pipeline.models import LatentActionModel, get_config  # noqa: E402
from genie_pipeline.shards.clip import ClipSpec  # noqa: E402
from tests.fixtures.footage import MOVES, sprite_frames_and_moves  # noqa: E402

HEIGHT, WIDTH, FRAMES = 64, 64, 8
CLIP_FRAMES = 64  # windows are cut at random offsets, so they straddle move changes
# The tiny LAM at commit e6edc0e: change-only layout, but a VQ codebook and a width-32 decoder at
# patch 16, which collapsed to one code.
BEFORE = {"lam.quantizer": "vq", "lam.patch": 16, "lam.st": {"dim": 32, "depth": 2, "heads": 2},
          "lam.decoder_st": None}
# The paper's layout at those sizes (the LAM before e6edc0e).
PAPER_LAYOUT = {**BEFORE, "lam.encode_pairs": False, "lam.decoder_past": True, "lam.predict_delta": False}
VARIANTS: dict[str, dict] = {
    "paper-layout": PAPER_LAYOUT,
    "before": BEFORE,
    "after": {},  # the tiny preset's defaults
    # Other sizes and parts of the fix (not run by default: --variant NAME).
    "before-wide-decoder": {**BEFORE, "lam.decoder_st": {"dim": 128, "depth": 2, "heads": 4}},
    "after-wide-decoder": {"lam.decoder_st": {"dim": 128, "depth": 2, "heads": 4}},
    "after-patch8": {"lam.patch": 8},
    "after-without-encode-pairs": {"lam.encode_pairs": False},
    "after-with-decoder-past": {"lam.decoder_past": True},
    "after-without-predict-delta": {"lam.predict_delta": False},
}
DEFAULT_VARIANTS = ("before", "after")


def scroll_speed(seed: int) -> int:
    """The background scroll of sprite_frames_and_moves(seed): its fourth draw from the seed's
    generator (after base colour and period); the fixture does not return it."""
    rng = np.random.default_rng(seed)
    rng.uniform(40, 200, size=3)
    rng.uniform(16, 40)
    return int(rng.choice([-2, -1, 1, 2]))


def sprite_pool(seeds) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 clips (N, CLIP_FRAMES, 3, H, W), their true moves (N, CLIP_FRAMES) and scroll (N,)."""
    spec = ClipSpec(fps=10, width=WIDTH, height=HEIGHT, frames=CLIP_FRAMES, keyframe_interval=8, crf=20)
    frames, moves = zip(*(sprite_frames_and_moves(seed, spec) for seed in seeds))
    return (torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).contiguous(), torch.from_numpy(np.stack(moves)),
            torch.tensor([scroll_speed(seed) for seed in seeds]))


def windows(clips, moves, scroll, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random FRAMES-long windows in [0, 1], the true move of each of their transitions and
    each transition's scroll speed."""
    pick = torch.randint(0, clips.shape[0], (batch, 1), generator=gen)
    start = torch.randint(0, clips.shape[1] - FRAMES + 1, (batch, 1), generator=gen)
    frame_BT = start + torch.arange(FRAMES)
    # moves[t] took frame t-1 to frame t, so transition i (frame i -> i+1) is moves[i+1].
    return clips[pick, frame_BT].float() / 255.0, moves[pick, frame_BT][:, 1:], scroll[pick].expand(-1, FRAMES - 1)


def decoder_mse(model: LatentActionModel, video: torch.Tensor, actions: torch.Tensor) -> float:
    """The decoder's error predicting frames 2..T from the past and the given actions."""
    with torch.no_grad():
        pred = model.predict(video, actions)
    return float(((pred - video[:, 1:]) ** 2).mean())


def score(model: LatentActionModel, video: torch.Tensor, true_moves: torch.Tensor, scroll: torch.Tensor,
          seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        actions = model.infer_actions(video)
    model.train()
    counts = torch.bincount(actions.flatten(), minlength=model.num_actions).double()
    share = counts / counts.sum()
    frame_index = torch.arange(actions.shape[1]).expand_as(actions)
    own = decoder_mse(model, video, actions)
    shuffled = decoder_mse(model, video, actions[torch.randperm(actions.shape[0], generator=gen)])
    random = decoder_mse(model, video, torch.randint(0, model.num_actions, actions.shape, generator=gen))
    return {
        "codes_used": int((counts > 0).sum()),
        "perplexity": float(torch.exp(-(share * share.clamp(min=1e-12).log()).sum())),
        "nmi_move": float(normalized_mutual_info_score(true_moves.flatten().numpy(), actions.flatten().numpy())),
        "nmi_scroll": float(normalized_mutual_info_score(scroll.flatten().numpy(), actions.flatten().numpy())),
        "nmi_frame_index": float(normalized_mutual_info_score(frame_index.flatten().numpy(), actions.flatten().numpy())),
        "mse_copy": float(((video[:, 1:] - video[:, :-1]) ** 2).mean()),
        "mse_own": own,
        "effect_shuffled": shuffled - own,
        "effect_random": random - own,
    }


def train_and_score(overrides: dict, train, held_out, steps: int, batch: int, lr: float, seed: int,
                    log_every: int) -> dict:
    torch.manual_seed(seed)
    cfg = get_config("tiny", {"image_height": HEIGHT, "image_width": WIDTH, "frames": FRAMES, **overrides})
    model = LatentActionModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    eval_video, eval_moves, eval_scroll = windows(*held_out, 64, torch.Generator().manual_seed(seed + 1))
    history, cpu0 = [], time.process_time()
    for step in range(1, steps + 1):
        video, _, _ = windows(*train, batch, gen)
        out = model(video)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            row = {"step": step, "train_perplexity": float(out["metrics"]["perplexity"]),
                   **score(model, eval_video, eval_moves, eval_scroll, seed)}
            history.append(row)
            print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return {"overrides": overrides, "final": history[-1], "history": history,
            "cpu_s": round(time.process_time() - cpu0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=150)
    ap.add_argument("--variant", action="append", choices=sorted(VARIANTS), help=f"default: {DEFAULT_VARIANTS}")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lam.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    train, held_out = sprite_pool(range(100)), sprite_pool(range(1000, 1016))
    results: dict = {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
        "data": {"clips": f"sprite footage {WIDTH}x{HEIGHT}, {CLIP_FRAMES} frames; 100 train, 16 held-out seeds",
                 "window_frames": FRAMES, "true_moves": len(MOVES)},
        "training": {"steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                     "optimizer": "AdamW(betas=(0.9, 0.95), weight_decay=0.05), constant lr"},
        "variants": {},
    }
    for name in args.variant or DEFAULT_VARIANTS:
        print(f"--- {name}", flush=True)
        results["variants"][name] = train_and_score(VARIANTS[name], train, held_out, args.steps, args.batch,
                                                    args.lr, args.seed, args.log_every)
    results["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
