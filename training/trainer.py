"""Genie training, one phase on one rank: phase 1 the video tokenizer, phase 2 the LAM and
dynamics model together.

Phase 2 runs the frozen tokenizer (no grad, eval mode) to get tokens, trains the latent
action model on pixels and the dynamics model on those tokens with the LAM's actions: the
actions are discrete ids, so the dynamics loss never reaches the LAM (stop-gradient), as in
the paper. One AdamW optimizer covers both.

Exact resume: a checkpoint holds model, optimizer, step, every rank's RNG states and loader
position; resuming replays nothing that has an effect and continues with the same batches,
masks and losses as an uninterrupted run (same world size, workers, device and threads).
The run driver (both phases, run.json, genie.pt) is `training.run.train_main`.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genie_pipeline.models.config import GenieConfig, config_to_dict, get_config
from genie_pipeline.models.dynamics import DynamicsModel
from genie_pipeline.models.genie import Genie
from genie_pipeline.models.lam import LatentActionModel
from genie_pipeline.models.patches import PatchGrid
from genie_pipeline.models.tokenizer import VideoTokenizer

from . import checkpoint as ckpt_lib
from . import distributed as dist_lib
from .config import PHASES, TrainConfig
from .controllability import HEADLINE_T, controllability, genie_rollout
from .checks import check_parallel
from .errors import TrainingError, TrainInterrupted
from .loader import WindowLoader
from .metrics import MetricsLogger, save_gif, save_png, video_rows_grid, video_side_by_side_frames
from .schedule import lr_at, make_optimizer, set_lr
from .stop import GracefulStop


# ============================================================================ settings
def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device` (None: fp32, no autocast)."""
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ============================================================================ models
class LamDynamics(nn.Module):
    """Phase 2's trainable pair: LAM on pixels, dynamics on tokens with stop-gradient actions."""

    def __init__(self, mcfg: GenieConfig):
        super().__init__()
        self.lam = LatentActionModel(mcfg)
        self.dynamics = DynamicsModel(mcfg)

    def forward(self, video_BTCHW: torch.Tensor, tokens_BTN: torch.Tensor) -> dict:
        lam_out = self.lam(video_BTCHW)
        actions_BT = lam_out["actions_BT"].detach()
        dyn_out = self.dynamics(tokens_BTN, actions_BT)
        return {"loss": lam_out["loss"] + dyn_out["loss"], "lam": lam_out, "dynamics": dyn_out, "actions_BT": actions_BT}


def tokens_per_frame(mcfg: GenieConfig) -> int:
    """Tokenizer tokens per frame (what tokens/s counts)."""
    return PatchGrid(mcfg.image_height, mcfg.image_width, mcfg.tokenizer.patch, mcfg.pad_mode).num_tokens


def load_tokenizer_weights(path: str | os.PathLike, mcfg: GenieConfig, device: torch.device) -> VideoTokenizer:
    """Phase 2's frozen tokenizer from a phase-1 checkpoint (or genie.pt) made for the same
    tokenizer config and image size."""
    ck = ckpt_lib.load(path)
    sd = ck["model"]["tokenizer"] if "model" in ck else ck["tokenizer"]
    saved_cfg = ck.get("model_config")
    if saved_cfg is not None:
        saved = get_config(dict(saved_cfg))
        if config_to_dict(saved)["tokenizer"] != config_to_dict(mcfg)["tokenizer"] or \
                (saved.image_height, saved.image_width) != (mcfg.image_height, mcfg.image_width):
            raise TrainingError("train.tokenizer_checkpoint",
                                f"{path} holds a tokenizer of a different config (model/overrides/resolution differ)")
    tok = VideoTokenizer(mcfg)
    tok.load_state_dict(sd)
    return tok.to(device)


# ============================================================================ one phase
SAMPLE_CLIPS = 8  # clips of the batch the phase-2 samples roll out and score


class PhaseTrainer:
    """One training phase on this rank. `step_on(video_uint8)` runs one optimizer update on a
    given batch (used by the loop and by tests); `run()` trains to the phase's step count."""

    def __init__(self, phase: str, cfg: TrainConfig, mcfg: GenieConfig, out_dir: str | os.PathLike,
                 info: dist_lib.DistInfo | None = None, shards: list[str] | None = None, resume: bool = False,
                 shard_sha256: dict[str, str] | None = None):
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}")
        self.phase, self.cfg, self.mcfg = phase, cfg, mcfg
        self.out_dir = Path(out_dir)
        self.info = info or dist_lib.DistInfo()
        self.device = self.info.device
        self.shards = shards or []
        self.shard_sha256 = shard_sha256 or {}  # a pinned snapshot's: every byte read is checked against it
        self.total_steps = cfg.tokenizer_steps if phase == "tokenizer" else cfg.dynamics_steps
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.step = 0
        self.stop: GracefulStop | None = None  # set while run() trains (training/stop.py)
        self.first_loss: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.tokens_per_frame = tokens_per_frame(mcfg)
        check_parallel(cfg, self.info.world_size)
        self.per_rank_batch = cfg.batch_size // self.info.world_size
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.resume_ckpt = self._resume_checkpoint(resume)

        # identical initialisation on every rank
        torch.manual_seed(cfg.seed * 1009 + PHASES.index(phase))
        self._build_models()
        self.loader_state = None
        self._rng_state = None
        if self.resume_ckpt is not None:
            self._load_model_weights(self.resume_ckpt)
        # per-rank stream for masks / restarts (restored exactly on resume, see run())
        torch.manual_seed(cfg.seed * 1009 + PHASES.index(phase) + 7919 * (self.info.rank + 1))
        self.wrapped = dist_lib.wrap(self.model, cfg.strategy, self.info)
        # after wrapping: FSDP replaces the parameters with sharded ones
        self.optimizer = make_optimizer([self.model], cfg.lr, cfg.weight_decay, cfg.betas)
        if self.resume_ckpt is not None:
            self._load_resume(self.resume_ckpt)
        if cfg.compile:
            self.wrapped.compile()

    def _resume_checkpoint(self, resume: bool) -> dict | None:
        """This phase's latest checkpoint in out_dir when resuming; none there when not."""
        ckpt_path = ckpt_lib.latest_path(self.out_dir, self.phase)
        if not ckpt_path.exists():
            return None
        if not resume:
            raise TrainingError("train.out_dir", f"{self.out_dir} already has a {self.phase} checkpoint ({ckpt_path}); "
                                "pass --resume to continue it, or choose another out_dir")
        return ckpt_lib.load(ckpt_path, map_location="cpu")

    def _build_models(self) -> None:
        """`self.model`, the trained module; in phase 2 also `self.tokenizer`, frozen: the one in
        the checkpoint being resumed, else `train.tokenizer_checkpoint` (default: phase 1's)."""
        mcfg = self.mcfg
        self.tokenizer: VideoTokenizer | None = None
        if self.phase == "tokenizer":
            self.model: nn.Module = VideoTokenizer(mcfg).to(self.device)
            return
        tok_path = self.cfg.tokenizer_checkpoint or ckpt_lib.latest_path(self.out_dir, "tokenizer")
        if self.resume_ckpt is not None:
            self.tokenizer = VideoTokenizer(mcfg)
            self.tokenizer.load_state_dict(self.resume_ckpt["model"]["tokenizer"])
            self.tokenizer.to(self.device)
        else:
            if not Path(tok_path).exists() and "://" not in str(tok_path):
                raise TrainingError("train.tokenizer_checkpoint",
                                    f"no tokenizer checkpoint at {tok_path}; train the tokenizer first (--stage tokenizer)")
            self.tokenizer = load_tokenizer_weights(tok_path, mcfg, self.device)
        self.tokenizer.eval().requires_grad_(False)
        self.model = LamDynamics(mcfg).to(self.device)

    # -- state
    @property
    def fsdp(self) -> bool:
        return self.cfg.strategy == "fsdp" and self.info.distributed

    def _model_state(self) -> dict:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            msd, osd = get_state_dict(self.model, self.optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        else:
            msd, osd = self.model.state_dict(), self.optimizer.state_dict()
        if self.phase == "tokenizer":
            models = {"tokenizer": msd}
        else:
            models = {"lam": {k[4:]: v for k, v in msd.items() if k.startswith("lam.")},
                      "dynamics": {k[9:]: v for k, v in msd.items() if k.startswith("dynamics.")},
                      "tokenizer": self.tokenizer.state_dict()}
        return {"model": models, "optimizer": osd, "optimizer_format": "fqn" if self.fsdp else "torch"}

    def _load_model_weights(self, ck: dict) -> None:
        m = ck["model"]
        if self.phase == "tokenizer":
            self.model.load_state_dict(m["tokenizer"])
        else:
            self.model.lam.load_state_dict(m["lam"])
            self.model.dynamics.load_state_dict(m["dynamics"])

    def _load_resume(self, ck: dict) -> None:
        fmt = ck.get("optimizer_format", "torch")
        if fmt != ("fqn" if self.fsdp else "torch"):
            raise TrainingError("train.strategy",
                                "cannot resume a checkpoint written with another strategy (fsdp vs ddp/none)")
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.model, self.optimizer, ck["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(ck["optimizer"])
        self.step = int(ck["step"])
        self.first_loss = ck.get("first_loss")
        ranks = ck["ranks"]
        if len(ranks) != self.info.world_size:
            print(f"[train] checkpoint was written by {len(ranks)} processes, now {self.info.world_size}: "
                  "RNG and data order restart (not an exact resume)", file=sys.stderr)
            mine = ranks[0]
            self.loader_state = {**mine["loader"], "world_size": -1}
            self._rng_state = None
        else:
            mine = ranks[self.info.rank]
            self.loader_state = mine["loader"]
            self._rng_state = mine["rng"]

    def _diverged(self, what: str) -> TrainingError:
        """The error of a run whose loss or weights stopped being finite: it names the last
        checkpoint, which never holds non-finite weights (see save_checkpoint)."""
        latest = ckpt_lib.latest_path(self.out_dir, self.phase)
        kept = f"the last finite checkpoint is {latest}" if latest.exists() else "no checkpoint was kept"
        return TrainingError("train.lr", f"training diverged: {what}; {kept}. Lower train.lr or set train.grad_clip, "
                                         "then --resume")

    def _weights_finite(self) -> bool:
        local = all(bool(torch.isfinite(p.detach().to_local() if hasattr(p, "to_local") else p.detach()).all())
                    for p in self.model.parameters())
        return dist_lib.mean_scalars({"finite": float(local)}, self.device)["finite"] == 1.0

    def save_checkpoint(self, loader: WindowLoader | None) -> Path | None:
        """Write this phase's checkpoint; a model whose weights are not finite is never saved
        (TrainingError), so `latest.pt` is always one to roll back to."""
        if not self._weights_finite():
            raise self._diverged(f"the {self.phase} weights are not finite at step {self.step}")
        rank_state = {"rng": ckpt_lib.get_rng_state(), "loader": loader.state_dict() if loader else {}}
        ranks = dist_lib.all_gather_objects(rank_state)
        state = self._model_state()
        path = None
        if self.info.is_main:
            ck = {
                "format": ckpt_lib.FORMAT,
                "phase": self.phase,
                "step": self.step,
                "total_steps": self.total_steps,
                "first_loss": self.first_loss,
                "metrics": dict(self.last_metrics),
                **state,
                "scheduler": {"step": self.step, "total_steps": self.total_steps, "warmup_steps": self.cfg.warmup_steps,
                              "lr": self.cfg.lr, "min_lr_ratio": self.cfg.min_lr_ratio},
                "ranks": ranks,
                "model_config": config_to_dict(self.mcfg),
                "train_config": self.cfg.model_dump(mode="json"),
                "world_size": self.info.world_size,
            }
            path = ckpt_lib.save_phase_checkpoint(ck, self.out_dir, self.phase, keep=self.cfg.keep_checkpoints)
        dist_lib.barrier()
        return path

    # -- one update
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        with self._autocast():
            if self.phase == "tokenizer":
                out = self.wrapped(video)
                m = out["metrics"]
                metrics = {"loss": out["loss"].detach(), "recon_mse": m["recon_mse"], "vq_loss": m["vq_loss"],
                           "psnr": m["psnr"], "perplexity": m["perplexity"], "usage": m["usage"]}
            else:
                with torch.no_grad():
                    tokens = self.tokenizer.encode(video)
                out = self.wrapped(video, tokens)
                lm, dm = out["lam"]["metrics"], out["dynamics"]["metrics"]
                metrics = {"loss": out["loss"].detach(), "lam_loss": out["lam"]["loss"].detach(),
                           "lam_recon_mse": lm["recon_mse"], "lam_psnr": lm["psnr"],
                           "lam_perplexity": lm["perplexity"], "lam_usage": lm["usage"],
                           # The LAM's collapse shows as few codes and an action effect near 0.
                           "lam_codes_used": lm["codes_used"], "lam_action_effect": lm["action_effect"],
                           "dyn_loss": out["dynamics"]["loss"].detach(), "dyn_acc": dm["acc"],
                           "mask_ratio": dm["mask_ratio"]}
        return out["loss"], metrics, out

    def step_on(self, video_uint8: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimizer update on a (B, T, 3, H, W) uint8 batch (this rank's share)."""
        video = video_uint8.to(self.device, non_blocking=True).float().div_(255.0)
        lr = lr_at(self.step, lr=self.cfg.lr, total_steps=self.total_steps, warmup_steps=self.cfg.warmup_steps,
                   min_lr_ratio=self.cfg.min_lr_ratio)
        set_lr(self.optimizer, lr)
        self.model.train()
        loss, metrics, _ = self.forward(video)
        if not torch.isfinite(loss):
            raise self._diverged(f"the {self.phase} loss is {loss.item()} at step {self.step + 1}")
        loss.backward()
        dist_lib.average_replicated_grads(self.model)
        gnorm = dist_lib.clip_grad_norm(self.model, self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics["lr"] = torch.tensor(lr)
        metrics["grad_norm"] = gnorm
        return metrics

    # -- samples
    @torch.no_grad()
    def samples(self, video_uint8: torch.Tensor, logger: MetricsLogger | None = None) -> dict[str, float]:
        """Reconstruction (phase 1) or rollouts (phase 2) of the first window: PNG + GIF."""
        # phase 2 scores ΔtPSNR over several clips (its baseline takes another clip's actions)
        clips = 1 if self.phase == "tokenizer" else SAMPLE_CLIPS
        video = video_uint8[:clips].to(self.device).float().div_(255.0)
        out_dir = self.out_dir / "samples"
        extra: dict[str, float] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                    dist_lib.full_params(self.model), self._autocast():
                torch.manual_seed(self.step)
                if self.phase == "tokenizer":
                    recon = self.model(video)["recon"].float()
                    rows = [video[0], recon[0]]
                else:
                    rows, extra = self._rollout_rows(video)
        finally:
            self.model.train(was_training)
        if self.info.is_main:
            name = f"{self.phase}-step{self.step:08d}"
            grid = video_rows_grid(rows)
            save_png(grid, out_dir / f"{name}.png")
            if logger is not None:
                logger.image(self.step, "reconstruction" if self.phase == "tokenizer" else "rollout", grid)
            save_gif(video_side_by_side_frames(rows), out_dir / f"{name}.gif")
        return extra

    def _rollout_rows(self, video: torch.Tensor):
        """Rollouts of the batch's first clips through eval's own code path (controllability.py):
        ΔtPSNR against another clip's actions with shared sampling noise, beside uniform codes
        and the most frequent code, and the model against copying the prompt."""
        lam, dyn, tok = self.model.lam, self.model.dynamics, self.tokenizer
        genie = Genie.from_parts(self.mcfg, tok, lam, dyn)
        actions = lam.infer_actions(video)
        recon = tok.decode(tok.encode(video[:1]))
        target = tok.grid.target(video).float()
        if video.shape[0] < 2:  # one clip on this rank: no other clip's actions to compare with
            pred = genie_rollout(genie, seed=self.step)(video[:, 0], actions)
            return [target[0], recon.float()[0], pred[0]], {}
        scores, pred, baselines = controllability(video.float(), target, genie_rollout(genie, seed=self.step), actions,
                                                  self.mcfg.lam.num_actions, seed=self.step,
                                                  headline_t=min(HEADLINE_T, video.shape[1] - 1))
        d, dyn_scores, t = scores["delta_psnr"], scores["dynamics"], scores["delta_psnr"]["t"]
        extra = {"rollout_psnr": sum(dyn_scores["psnr_per_step"]) / len(dyn_scores["psnr_per_step"]),
                 f"psnr_t{t}": dyn_scores["psnr_per_step"][t - 1],
                 f"copy_prompt_psnr_t{t}": dyn_scores["copy_prompt"]["psnr_per_step"][t - 1],
                 **{f"delta_psnr_t{t}" + ("" if name == "shuffled" else f"_vs_{name}"): against["value"]
                    for name, against in d["against"].items()}}
        return [target[0], recon.float()[0], pred[0], baselines["shuffled"][0]], extra

    # -- the loop
    def make_loader(self) -> WindowLoader:
        cfg = self.cfg
        return WindowLoader(
            self.shards, self.per_rank_batch, cfg.frames, rank=self.info.rank, world_size=self.info.world_size,
            num_workers=cfg.num_workers, state=self.loader_state, pin_memory=self.device.type == "cuda",
            seed=cfg.seed, windows_per_clip=cfg.windows_per_clip, clips_per_group=cfg.clips_per_group,
            shuffle_buffer=cfg.shuffle_buffer, resolution=(self.mcfg.image_height, self.mcfg.image_width),
            decoder=cfg.decoder, max_bad_shard_fraction=cfg.max_bad_shard_fraction, sha256=self.shard_sha256,
        )

    def run(self) -> dict:
        """Train to the phase's step count (a phase finished earlier is left alone); the phase's
        summary: steps, losses, last metrics, throughput, checkpoint and loader counts."""
        resumed_from = self.step if self.resume_ckpt is not None else None
        summary: dict[str, Any] = {"phase": self.phase, "resumed_from": resumed_from}
        if self.step >= self.total_steps:  # finished earlier: leave its metrics alone
            summary.update(steps=self.step, skipped=True, checkpoint=str(ckpt_lib.latest_path(self.out_dir, self.phase)),
                           final_metrics=self.resume_ckpt.get("metrics", {}) if self.resume_ckpt else {},
                           first_loss=self.first_loss)
            return summary
        t_start = time.time()
        if self.info.is_main:
            print(self.banner(resumed_from), file=sys.stderr, flush=True)
        logger = MetricsLogger(self.out_dir, self.phase, self.total_steps, enabled=self.info.is_main,
                               resume_step=resumed_from)
        loader = self.make_loader()
        try:
            with GracefulStop(announce=self.info.is_main) as self.stop:
                step_times, last_ckpt = self._loop(loader, logger)
        finally:
            self.stop = None
            loader.close()
            logger.close()
        summary.update(steps=self.step, seconds=time.time() - t_start, first_loss=self.first_loss,
                       final_metrics=self.last_metrics,
                       checkpoint=(str(ckpt_lib.latest_path(self.out_dir, self.phase))
                                   if last_ckpt or self.info.is_main else None),
                       **self._throughput(step_times), loader=loader.counts())
        return summary

    def banner(self, resumed_from: int | None) -> str:
        """What this phase trains, on what, where, for how long: printed before its first step
        (which on a CPU can take a minute: workers start, the first batch decodes)."""
        trained = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        what = "tokenizer (VQ-VAE)" if self.phase == "tokenizer" else "latent actions + dynamics (tokenizer frozen)"
        start = (f"resuming from step {resumed_from} of {self.total_steps}" if resumed_from is not None
                 else f"{self.total_steps} steps")
        return (f"[train {self.phase}] {what}: model {self.cfg.model}, {trained / 1e6:.2f}M trained parameters; "
                f"data {len(self.shards)} shard(s), windows of {self.cfg.frames} frames at "
                f"{self.mcfg.image_height}x{self.mcfg.image_width}, batch {self.cfg.batch_size}; "
                f"device {self.device} x{self.info.world_size}; {start}")

    def _loop(self, loader: WindowLoader, logger: MetricsLogger) -> tuple[list[float], Path | None]:
        """The optimizer steps with their logging, samples and checkpoints; (seconds of each
        step, the last checkpoint written)."""
        cfg = self.cfg
        it = iter(loader)
        if self._rng_state is not None:
            ckpt_lib.set_rng_state(self._rng_state)
        window = _Window()
        step_times: list[float] = []
        last_ckpt = None
        stop = self.stop
        while self.step < self.total_steps:
            if self._stop_requested(stop):
                raise self._interrupted(loader)
            t0 = time.time()
            batch = next(it)
            t1 = time.time()
            metrics_t = self.step_on(batch["video"])
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            window.steps += 1
            window.wait += t1 - t0
            step_times.append(time.time() - t0)
            step = self.step
            if self._due(step, cfg.log_every):
                self._log(step, metrics_t, window, loader, logger)
                window.reset()
            if self._due(step, cfg.sample_every):
                extra = self.samples(batch["video"], logger)
                if extra:
                    logger.log(step, extra, console=False)
                    self.last_metrics.update(extra)
            if self._due(step, cfg.checkpoint_every):
                last_ckpt = self.save_checkpoint(loader)
                window.t0 = time.time()  # checkpoint time is not throughput
        return step_times, last_ckpt

    def _stop_requested(self, stop: GracefulStop | None) -> bool:
        """A signal reached this rank (or, distributed, any rank: all stop at the same step)."""
        flag = bool(stop is not None and stop.requested)
        if self.info.world_size > 1:
            flag = dist_lib.mean_scalars({"stop": float(flag)}, self.device)["stop"] > 0
        return flag

    def _interrupted(self, loader: WindowLoader) -> TrainInterrupted:
        """Save a checkpoint at the step reached and say how to go on."""
        path = self.save_checkpoint(loader) if self.step > 0 else None
        where = f"{self.phase} step {self.step}/{self.total_steps}"
        if path is None:
            return TrainInterrupted(f"stopped at {where} before any step: nothing saved")
        return TrainInterrupted(f"stopped at {where}; checkpoint saved to {path}; to continue, run the same "
                                "command with --resume")

    def _due(self, step: int, every: int) -> bool:
        return step % every == 0 or step == self.total_steps

    def _log(self, step: int, metrics_t: dict[str, torch.Tensor], window: _Window, loader: WindowLoader,
             logger: MetricsLogger) -> None:
        """One log line: the step's metrics averaged over ranks, throughput since the last line."""
        cfg = self.cfg
        values = dist_lib.mean_scalars({k: float(v) for k, v in metrics_t.items()}, self.device)
        if self.first_loss is None:
            self.first_loss = values["loss"]
        elapsed = max(time.time() - window.t0, 1e-9)
        windows = window.steps * cfg.batch_size
        values["windows_per_s"] = windows / elapsed
        values["tokens_per_s"] = windows * cfg.frames * self.tokens_per_frame / elapsed
        values["data_wait_frac"] = window.wait / elapsed
        counts = loader.counts()
        values["bad_shards"] = counts["bad_shards"]
        values["bad_samples"] = counts["bad_samples"]
        self.last_metrics = values
        logger.log(step, values)

    def _throughput(self, step_times: list[float]) -> dict:
        """Mean seconds per step past the first two (warm-up), windows/s and tokens/s."""
        cfg = self.cfg
        steady = step_times[min(len(step_times) - 1, 2):] if step_times else []
        mean_step = sum(steady) / max(1, len(steady)) if steady else float("nan")
        return {"sec_per_step": mean_step,
                "windows_per_s": cfg.batch_size / mean_step if steady else None,
                "tokens_per_s": cfg.batch_size * cfg.frames * self.tokens_per_frame / mean_step if steady else None}


class _Window:
    """Steps and data-wait seconds since the last log line (throughput is logged per window)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.t0, self.steps, self.wait = time.time(), 0, 0.0
