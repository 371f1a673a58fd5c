"""`genie-pipeline train-quality`: train the clip quality classifier from labels.

Input: K frames per clip, sampled by `frames.sample_frames` (the function the scoring stage
uses). Model: `QualityNet` — a ResNet18 trunk (torchvision, weights=None, or a local weights
file: filters.quality.weights) with a frame head (one logit per frame) and a small clip head
over clip statistics. `pooling` picks the clip score: the mean frame probability, or another
pooling; `auto` (default) takes the best on validation, and the metadata reports every
pooling's validation and test ROC-AUC, so the choice is justified by numbers.

`train_quality` runs five steps, one function each:
    split     labels resolved per clip -> videos split into train / val / test (by video,
              stratified by class: neighbouring clips of one video never straddle a split)
    sample    K frames per clip exactly as scoring sees them; for training, P frames per clip
    fit       class-balanced batches, each showing K of a clip's P frames near the scoring
              positions; augmentation per clip (flip, shift, brightness/contrast);
              multiple-instance frame loss (a bad clip needs one bad frame); AdamW with a
              one-cycle schedule, bf16 autocast, BatchNorm statistics re-estimated each epoch;
              the epoch with the lowest validation loss kept (early stop after `patience`)
    evaluate  pooling; threshold = the most recall whose validation precision reaches
              `target_precision`; held-out test metrics; bf16 and int8 inference checked on
              held-out clips (the same clips scored both ways)
    write     MODEL.pt (state dict, loadable with torch.load(weights_only=True), and 64 training
              frames that the int8 trunk is calibrated on where it is loaded), MODEL.json
              (input spec, threshold, metrics, label-set hash, training time) and two
              pictures: MODEL_pr_curve.png and MODEL_score_hist.png
"""
from __future__ import annotations

import datetime as dt
import math
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.frames import sample_indices
from genie_pipeline.filtering.quality.labels import LABELS, label_set_hash
from genie_pipeline.filtering.quality.metrics import choose_threshold, clip_metrics, roc_auc, write_plots
from genie_pipeline.filtering.quality.model import (POOLINGS, QualityNet, calibration_frames, metadata_path,
                                                    native_bf16, pool_logits, read_metadata, save_quality_model,
                                                    train_bf16)
from genie_pipeline.filtering.quality.trainkit import _bar, _frames_for, _log, _new_model, _one_cycle
from genie_pipeline.shards import fs
from genie_pipeline.shards.reader import ClipIndex

MIN_STEPS_PER_EPOCH = 8  # small label sets: an "epoch" is still enough steps to move a network from scratch
PARTS = ("train", "val", "test")


@dataclass
class LabelledClips:
    """The labelled clips of one run in a fixed order, and how their videos are split."""

    keys: list[str]
    y: np.ndarray  # 1 good / 0 bad, per key
    labels: dict[str, str]
    video_label: dict[str, str]  # a video's majority label
    split: dict[str, list[str]]  # part -> video ids
    idx: dict[str, np.ndarray]  # part -> positions in keys (val is train when val has one class)
    val_is_train: bool


@dataclass
class Evaluation:
    pooling: str
    threshold: float
    target_met: bool
    metrics: dict[str, Any]
    bf16: dict[str, Any]
    int8: dict[str, Any]
    calibration: np.ndarray  # uint8 (N, H, W, 3) training frames the int8 trunk is calibrated on
    ys: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]


def train_quality(index: ClipIndex, labels: dict[str, str], out_path: str | os.PathLike, qcfg: QualityConfig,
                  *, label_source: str, progress: bool = True, ignore_missing: bool = False,
                  split: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Train on `labels` (clip key -> good|bad) of `index`'s clips, choose the threshold,
    write model + metadata + pictures to `out_path` (local, or `gs://`/`s3://`); returns the
    metadata. An output folder or bucket that cannot be written is a StorageError before
    any clip is read.

    `split`: {"train"|"val"|"test": [video ids]} to use instead of the seeded random split
    (cross-validation); videos it does not name are not used."""
    if fs.is_remote(str(out_path)):
        fs.check_writable(str(out_path).rsplit("/", 1)[0])
    t_start = time.time()
    data = split_labels(index, check_labels(labels, index, label_source, ignore_missing), qcfg, split)
    pretrained = None
    if qcfg.pretrain_steps:  # learn from every clip of the input first, labelled or not
        from genie_pipeline.filtering.quality.pretrain import pretrain_backbone

        w = os.path.splitext(str(out_path))[0] + "_pretrained.pt"
        pretrained = pretrain_backbone(index, w, qcfg, progress=progress)
        qcfg = qcfg.model_copy(update={"weights": w})
    frames, pool = sample_clips(index, data, qcfg, progress)
    model, history, best_epoch = fit(data, frames, pool, qcfg, progress)
    training = {"seconds": round(time.time() - t_start, 2), "epochs_run": len(history), "best_epoch": best_epoch,
                "pretrained": pretrained}
    ev = evaluate(model, data, frames, qcfg, history)
    return write_model(model, out_path, data, ev, qcfg, training, label_source, index.root)


# ---------------------------------------------------------------------------------- split
def check_labels(labels: dict[str, str], index: ClipIndex, source: str, ignore_missing: bool = False) -> dict[str, str]:
    """The labels to train on: every labelled clip must exist and be readable (else a
    QualityError naming them, or, with `ignore_missing`, they are left out), both classes
    present."""
    if not labels:
        raise QualityError(f"no labels in {source}: label clips with `genie-pipeline label {index.root}` "
                           "first (or train from reference labels with --reference-catalog)")
    missing = sorted(k for k in labels if k not in index)
    if missing:
        if not ignore_missing:
            raise QualityError(
                f"{len(missing)} of {len(labels)} labelled clips don't exist in {index.root}: "
                + ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
                + " (labels from another ingest output? --ignore-missing trains on the rest)")
        labels = {k: v for k, v in labels.items() if k in index}
    unreadable = sorted(k for k in labels if not index.readable(k))
    if unreadable and not ignore_missing:
        raise QualityError(f"{len(unreadable)} labelled clips have no mp4 in {index.root} (clip store or shard "
                           "missing): " + ", ".join(unreadable[:5]) + (" …" if len(unreadable) > 5 else ""))
    labels = {k: v for k, v in labels.items() if k not in set(unreadable)}
    counts = Counter(labels.values())
    if len(counts) < 2:
        only = next(iter(counts)) if counts else "none"
        raise QualityError(f"all {len(labels)} labelled clips are {only!r}: the classifier needs both good and "
                           "bad examples — label some clips of the other class")
    return labels


def split_videos(video_label: dict[str, str], val_fraction: float, test_fraction: float,
                 seed: int, group_of: dict[str, str] | None = None) -> dict[str, list[str]]:
    """train/val/test lists of video ids, each class split separately (stratified).

    `group_of` (video -> group, e.g. its game): whole groups go to one part, so test (and
    val) hold only games training never saw — what a user meets on new footage. Groups are
    drawn in a seeded order into test, then val, each until it holds its share of the videos
    and both classes; training keeps at least one group."""
    if group_of is not None:
        return _split_groups(video_label, val_fraction, test_fraction, seed, group_of)
    rng = random.Random(seed)
    out = {"train": [], "val": [], "test": []}
    for cls in LABELS:
        vids = sorted(v for v, lab in video_label.items() if lab == cls)
        rng.shuffle(vids)
        n = len(vids)
        n_test = max(1, round(test_fraction * n)) if test_fraction > 0 and n >= 3 else 0
        n_val = max(1, round(val_fraction * n)) if val_fraction > 0 and n >= 2 else 0
        while n_test + n_val >= n and (n_test or n_val):
            if n_test:
                n_test -= 1
            else:
                n_val -= 1
        out["test"] += vids[:n_test]
        out["val"] += vids[n_test:n_test + n_val]
        out["train"] += vids[n_test + n_val:]
    return out


def _split_groups(video_label: dict[str, str], val_fraction: float, test_fraction: float, seed: int,
                  group_of: dict[str, str]) -> dict[str, list[str]]:
    members: dict[str, list[str]] = defaultdict(list)
    for v in sorted(video_label):
        members[group_of.get(v, v)].append(v)
    groups = sorted(members)
    random.Random(seed).shuffle(groups)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    n = len(video_label)
    for part, frac in (("test", test_fraction), ("val", val_fraction)):
        if frac <= 0:
            continue
        while len(groups) > 1 and (len(out[part]) < frac * n or len({video_label[v] for v in out[part]}) < 2):
            out[part] += members[groups.pop(0)]
    out["train"] = [v for g in groups for v in members[g]]
    return out


def split_labels(index: ClipIndex, labels: dict[str, str], qcfg: QualityConfig,
                 split: dict[str, list[str]] | None) -> LabelledClips:
    """Clips in key order with their labels, each video's majority label, and the split of
    videos (seeded and stratified, or the given one)."""
    keys = sorted(labels)
    video_of = {k: index[k].video_id for k in keys}
    votes: dict[str, Counter] = defaultdict(Counter)
    for k in keys:
        votes[video_of[k]][labels[k]] += 1
    video_label = {v: c.most_common(1)[0][0] for v, c in votes.items()}
    if split is None:
        split = split_videos(video_label, qcfg.val_fraction, qcfg.test_fraction, qcfg.seed)
    else:
        split = {p: [v for v in split.get(p, []) if v in video_label] for p in PARTS}
        named = {v for vs in split.values() for v in vs}
        keys = [k for k in keys if video_of[k] in named]
        labels = {k: labels[k] for k in keys}
    y = np.array([1 if labels[k] == "good" else 0 for k in keys], np.int64)
    part_of = {v: p for p, vs in split.items() for v in vs}
    idx = {p: np.array([i for i, k in enumerate(keys) if part_of[video_of[k]] == p], np.int64) for p in PARTS}
    val_is_train = len(set(y[idx["val"]].tolist())) < 2
    if val_is_train:
        _log("warning: too few videos per class for a validation split; early stopping and the threshold use "
             "the training clips (label clips from more videos)")
        idx["val"] = idx["train"]
    _log(f"labels: {len(keys)} clips ({int(y.sum())} good, {int(len(keys) - y.sum())} bad) from "
         f"{len(video_label)} videos; split by video: train {len(split['train'])} / val {len(split['val'])} / "
         f"test {len(split['test'])} videos")
    return LabelledClips(keys, y, labels, video_label, split, idx, val_is_train)


# --------------------------------------------------------------------------------- sample
def sample_clips(index: ClipIndex, data: LabelledClips, qcfg: QualityConfig,
                 progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """K frames of every clip, exactly what scoring sees (evaluation), and a pool of P frames
    of each training clip (None when P <= K): training draws K of them per step, more views
    of each clip at the same spacing. The pool's rows follow data.idx["train"]."""
    k = qcfg.frames_per_clip
    frames = _frames_for(index, data.keys, k, progress)
    n_pool = max(qcfg.train_frame_pool, k)
    pool = _frames_for(index, [data.keys[i] for i in data.idx["train"]], n_pool, progress) if n_pool > k else None
    return frames, pool


# ------------------------------------------------------------------------------------ fit
def fit(data: LabelledClips, frames: np.ndarray, pool: np.ndarray | None, qcfg: QualityConfig,
        progress: bool) -> tuple[QualityNet, list[dict], int]:
    """Train for up to `epochs`, stopping early after `patience` epochs without a lower
    validation loss (not before `min_epochs`). Returns the model at its best epoch (eval
    mode), the per-epoch history and the best epoch."""
    run = _Run(data, frames, pool, qcfg)
    history, best, best_state, best_epoch, stale = [], None, None, 0, 0
    bar = _bar(progress, total=qcfg.epochs * run.steps, desc="training", unit="step")
    for epoch in range(1, qcfg.epochs + 1):
        h = run.validate(epoch, run.epoch(bar))
        history.append(h)
        top = max((a for a in h["val_auc"].values() if a is not None), default=None)
        bar.set_postfix(loss=f"{h['train_loss']:.3f}", val_auc=f"{top or 0:.3f}", val_loss=f"{h['val_loss']:.3f}")
        # validation loss, not AUC: on a few validation videos AUC saturates at 1.0 by chance
        score = -h["val_loss"]
        if best is None or score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {n: t.detach().clone() for n, t in run.model.state_dict().items()}
        else:
            stale += 1
            if stale >= qcfg.patience and epoch >= qcfg.min_epochs:
                break
    bar.close()
    run.model.load_state_dict(best_state)
    run.model.eval()
    return run.model, history, best_epoch


class _Run:
    """One training run: the model, its optimiser and schedule, and the seeded random
    streams (torch for augmentation, numpy for batches and views), drawn in a fixed order."""

    def __init__(self, data: LabelledClips, frames: np.ndarray, pool: np.ndarray | None, qcfg: QualityConfig):
        self.data, self.frames, self.pool, self.cfg = data, frames, pool, qcfg
        self.k = qcfg.frames_per_clip
        self.tr = data.idx["train"]
        self.pool_row = {int(i): r for r, i in enumerate(self.tr)}
        if qcfg.torch_threads:
            torch.set_num_threads(qcfg.torch_threads)
        torch.manual_seed(qcfg.seed)
        self.gen = torch.Generator().manual_seed(qcfg.seed)
        self.rng = np.random.default_rng(qcfg.seed)
        self.candidates = POOLINGS if qcfg.pooling == "auto" else (qcfg.pooling,)
        self.model = _new_model(qcfg)
        self.opt = _optimizer(self.model, qcfg)
        y_tr = data.y[self.tr]
        # class balancing: each epoch draws len(train) clips, each class equally likely
        w = np.where(y_tr == 1, 0.5 / max(1, y_tr.sum()), 0.5 / max(1, len(y_tr) - y_tr.sum()))
        self.p = w / w.sum()
        self.bs = min(qcfg.train_batch_size, max(2, len(self.tr)))
        self.steps = qcfg.steps_per_epoch or max(MIN_STEPS_PER_EPOCH, math.ceil(len(self.tr) / self.bs))
        self.sched = _one_cycle(self.opt, qcfg.epochs * self.steps)

    def epoch(self, bar) -> float:
        """One epoch of class-balanced batches; the mean training loss."""
        self.model.train()
        self.model.bf16 = train_bf16(self.cfg.train_bf16)
        draw = self.rng.choice(self.tr, size=self.steps * self.bs, replace=True, p=self.p)
        losses = []
        for s in range(self.steps):
            losses.append(self.step(draw[s * self.bs:(s + 1) * self.bs]))
            bar.update(1)
        self.model.bf16 = False  # evaluation in fp32
        return float(np.mean(losses))

    def step(self, b: np.ndarray) -> float:
        model, k = self.model, self.k
        clips = torch.from_numpy(_pick(self.pool[[self.pool_row[int(i)] for i in b]], k, self.rng)
                                 if self.pool is not None else self.frames[b])  # (B, K, H, W, 3)
        x = model.normalize(clips.reshape(-1, *clips.shape[2:]))
        if self.cfg.augment:
            x = augment(x, k, self.gen)
            if self.cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        frame_logits, clip_logits = model.heads(model.features(x), k, model.motion(x, k), model.image_stats(clips))
        target = torch.from_numpy(self.data.y[b].astype(np.float32))
        loss = _frame_loss(frame_logits, target, self.cfg.frame_loss) \
            + F.binary_cross_entropy_with_logits(clip_logits, target)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return float(loss.detach())

    def validate(self, epoch: int, train_loss: float) -> dict[str, Any]:
        """BatchNorm statistics re-estimated, then validation loss and each pooling's ROC-AUC."""
        recalibrate_bn(self.model, self.frames[self.rng.permutation(self.tr)[:128]])
        vo = _outputs(self.model, self.frames[self.data.idx["val"]])
        yv = self.data.y[self.data.idx["val"]]
        return {"epoch": epoch, "train_loss": train_loss, "val_loss": _bce(vo, yv, self.cfg.frame_loss),
                "val_auc": {how: roc_auc(yv, _pooled(vo, how)) for how in self.candidates}}


def _optimizer(model: QualityNet, qcfg: QualityConfig) -> torch.optim.Optimizer:
    head = list(model.clip_head.parameters())
    trunk = [p for p in model.parameters() if all(p is not h for h in head)]
    # the clip head, a small MLP on 21 detached statistics: a larger step and its own decay
    return torch.optim.AdamW([{"params": trunk},
                              {"params": head, "lr": qcfg.head_learning_rate, "weight_decay": qcfg.head_weight_decay}],
                             lr=qcfg.learning_rate, weight_decay=qcfg.weight_decay)


# ------------------------------------------------------------------------ fit: the pieces
def augment(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Normalised (B*K, 3, H, W), K frames per clip: random horizontal flip, shift by up to
    8 px, brightness and contrast +-15% (mild: darkness is itself a sign of a bad clip).
    One draw per clip, applied to all its frames, so augmentation adds no spread between the
    frames of a clip (which the clip head reads)."""
    n, _, h, w = x.shape
    nc = n // k

    def per_clip(t):
        return t.repeat_interleave(k, 0)

    flip = per_clip(torch.rand(nc, generator=gen) < 0.5)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    pad = 8
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = per_clip(torch.randint(0, 2 * pad + 1, (nc,), generator=gen))
    dx = per_clip(torch.randint(0, 2 * pad + 1, (nc,), generator=gen))
    x = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    c = per_clip(1 + (torch.rand(nc, 1, 1, 1, generator=gen) - 0.5) * 0.3)
    b = per_clip((torch.rand(nc, 1, 1, 1, generator=gen) - 0.5) * 0.3)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + b


def _frame_loss(frame_logits: torch.Tensor, target: torch.Tensor, how: str) -> torch.Tensor:
    """Frame head loss for (B, K) logits and (B,) clip labels.

    "frame": every frame carries its clip's label. "mil": multiple instance — a good clip
    has only good frames (every frame is pushed up), a bad clip needs one bad frame (only its
    least good frame is pushed down): the frames of a clip that is bad for a reason no frame
    shows (rapid cuts, a slideshow of game screenshots, a paused menu) stop teaching the
    frame head that gameplay looks bad."""
    if how == "frame":
        return F.binary_cross_entropy_with_logits(frame_logits, target[:, None].expand_as(frame_logits))
    good = target > 0.5
    loss_good = F.binary_cross_entropy_with_logits(frame_logits[good], torch.ones_like(frame_logits[good]),
                                                   reduction="sum")
    worst = frame_logits[~good].min(1).values
    loss_bad = F.binary_cross_entropy_with_logits(worst, torch.zeros_like(worst), reduction="sum")
    k = frame_logits.shape[1]
    # per clip: a good clip counts its K frames / K, a bad clip its one frame: clips weigh the same
    return (loss_good / k + loss_bad) / max(1, len(target))


def _pick(pool: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(B, P, ...) -> (B, K, ...): per clip, the K evenly spread positions that scoring uses
    (sample_indices(P, K)), each moved by -1, 0 or +1 at random, kept in time order."""
    b, p = pool.shape[:2]
    base = np.array(sample_indices(p, k))
    idx = np.clip(base[None, :] + rng.integers(-1, 2, (b, k)), 0, p - 1)
    idx = np.sort(idx, axis=1)
    return pool[np.arange(b)[:, None], idx]


@torch.no_grad()
def recalibrate_bn(model: QualityNet, frames: np.ndarray, max_clips: int = 128, batch: int = 32) -> None:
    """Re-estimate BatchNorm running statistics on (un-augmented) training clips.

    A network trained from scratch for a few hundred steps has running averages that lag far
    behind its weights (momentum 0.1); evaluated as they are, scores collapse. A cumulative
    average over training frames with the final weights fixes that for the cost of one
    forward pass."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not len(frames):
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    sel = frames[:max_clips]
    for i in range(0, len(sel), batch):
        model.outputs(torch.from_numpy(sel[i:i + batch]))
    for m, mom in zip(bns, saved):
        m.momentum = mom
    model.eval()


@torch.inference_mode()
def _outputs(model: QualityNet, frames: np.ndarray, batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Frame logits (N, K) and clip-head logits (N,) for uint8 clips (N, K, H, W, 3)."""
    model.eval()
    fr, cl = [], []
    for i in range(0, len(frames), batch):
        f, c = model.outputs(torch.from_numpy(frames[i:i + batch]))
        fr.append(f.numpy())
        cl.append(c.numpy())
    if not fr:
        return np.zeros((0, frames.shape[1]), np.float32), np.zeros(0, np.float32)
    return np.concatenate(fr), np.concatenate(cl)


def _pooled(outs: tuple[np.ndarray, np.ndarray], how: str) -> np.ndarray:
    if how == "learned":
        return 1 / (1 + np.exp(-outs[1].astype(np.float64)))
    return pool_logits(torch.from_numpy(outs[0]), how).numpy()


def _bce(outs: tuple[np.ndarray, np.ndarray], y: np.ndarray, frame_loss: str = "frame") -> float:
    frame, clip = (torch.from_numpy(o) for o in outs)
    t = torch.from_numpy(y.astype(np.float32))
    return float(_frame_loss(frame, t, frame_loss) + F.binary_cross_entropy_with_logits(clip, t))


# ------------------------------------------------------------------------------- evaluate
def evaluate(model: QualityNet, data: LabelledClips, frames: np.ndarray, qcfg: QualityConfig,
             history: list[dict]) -> Evaluation:
    """Pick the pooling (`auto`: the best validation ROC-AUC, mean_prob on a tie), choose
    the threshold on validation, measure every part, check bf16 inference."""
    outs = {p: _outputs(model, frames[data.idx[p]]) for p in PARTS}
    ys = {p: data.y[data.idx[p]] for p in PARTS}
    pooling_auc = {p: {how: roc_auc(ys[p], _pooled(outs[p], how)) for how in POOLINGS} for p in ("val", "test")}
    pooling = qcfg.pooling
    if pooling == "auto":
        val = pooling_auc["val"]
        pooling = max(POOLINGS, key=lambda h: ((val[h] if val[h] is not None else -1), h == "mean_prob"))
        _log(f"pooling: {pooling} (validation ROC-AUC " + ", ".join(
            f"{h} {'n/a' if v is None else f'{v:.3f}'}" for h, v in val.items()) + ")")
    model.pooling = pooling
    scores = {p: _pooled(outs[p], pooling) for p in outs}
    threshold, met = choose_threshold(ys["val"], scores["val"], qcfg.target_precision)
    if not met:
        _log(f"warning: no threshold reaches precision {qcfg.target_precision} on validation; using the most "
             f"precise one ({threshold:.4f})")
    metrics = {p: clip_metrics(ys[p], scores[p], threshold) for p in PARTS if len(ys[p])}
    metrics["pooling_roc_auc"] = pooling_auc
    metrics["history"] = history
    held = "test" if len(data.idx["test"]) else "val"
    calibration = calibration_frames(frames[data.idx["train"]], seed=qcfg.seed)
    bf16 = precision_check(model, frames[data.idx[held]], ys[held], threshold, "bf16")
    int8 = precision_check(model, frames[data.idx[held]], ys[held], threshold, "int8", calibration)
    return Evaluation(pooling, threshold, met, metrics, bf16, int8, calibration, ys, scores)


# How far a lower precision may move the scores before `auto` leaves it off: a ranking as good
# (on a few dozen clips one swapped near-tie moves the AUC by ~0.01: a stricter bound would only
# measure the sample size) and the same keep/reject decisions. int8 moves clips near the
# threshold more than bf16 (1.5 % of 544 held-out clips in benchmarks/results/quality_games.json).
MAX_AUC_DROP = 0.02
MIN_AGREEMENT = {"bf16": 0.99, "int8": 0.98}


@torch.inference_mode()
def precision_check(model: QualityNet, frames: np.ndarray, y: np.ndarray, threshold: float, precision: str,
                    calibration: np.ndarray | None = None) -> dict:
    """Does scoring in `precision` (bf16 autocast, or the int8 trunk calibrated on
    `calibration`) keep the classifier's accuracy? The same clips scored in fp32 and in it."""
    if not len(frames):
        return {"keeps_accuracy": False, "reason": "no clips to compare"}
    if precision == "bf16" and not native_bf16():  # emulated bf16 costs minutes here and `auto` never uses it
        return {"keeps_accuracy": False, "reason": "not measured: this CPU has no native bf16"}
    if precision == "int8" and not (calibration is not None and len(calibration)):
        return {"keeps_accuracy": False, "reason": "no calibration frames"}
    o32 = _outputs(model, frames)
    try:
        if precision == "bf16":
            model.bf16 = True
        else:
            model.quantize(calibration)
        low = _outputs(model, frames)
    except QualityError as e:
        return {"keeps_accuracy": False, "reason": str(e)}
    finally:
        model.bf16 = False
        model.quantize(None)
    s32, s_low = _pooled(o32, model.pooling), _pooled(low, model.pooling)
    a32, a_low = roc_auc(y, s32), roc_auc(y, s_low)
    agree = float(((s32 >= threshold) == (s_low >= threshold)).mean())
    keeps = (a32 is None or abs(a32 - a_low) <= MAX_AUC_DROP) and agree >= MIN_AGREEMENT[precision]
    return {"keeps_accuracy": bool(keeps), "roc_auc_fp32": a32, f"roc_auc_{precision}": a_low,
            "max_abs_score_diff": float(np.abs(s32 - s_low).max()), "decision_agreement": agree, "n": int(len(y))}


# ---------------------------------------------------------------------------------- write
def write_model(model: QualityNet, out_path: str | os.PathLike, data: LabelledClips, ev: Evaluation,
                qcfg: QualityConfig, training: dict[str, Any], label_source: str, input_dir: str) -> dict[str, Any]:
    """MODEL.pt, MODEL.json and the two pictures; returns the metadata as written. For a
    bucket path they are written to a local folder first and uploaded through `shards.fs`:
    the pictures, the model, then MODEL.json last, since readers take the model file's
    existence plus its metadata as a finished model."""
    if fs.is_remote(str(out_path)):
        remote = str(out_path)
        with tempfile.TemporaryDirectory(prefix="quality-model-") as tmp:
            meta = write_model(model, Path(tmp) / remote.rsplit("/", 1)[1], data, ev, qcfg, training,
                               label_source, input_dir)
            names = [*meta["pictures"].values(), meta["model_file"], metadata_path(meta["model_file"])]
            # an older model's metadata goes first: new weights never pair with an old threshold
            fs.remove(fs.join(remote.rsplit("/", 1)[0], metadata_path(meta["model_file"])))
            for name in names:
                fs.copy(os.path.join(tmp, name), fs.join(remote.rsplit("/", 1)[0], name))
        return read_metadata(remote)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pics = {"pr_curve": f"{out_path.stem}_pr_curve.png", "score_hist": f"{out_path.stem}_score_hist.png"}
    n_good = int(data.y.sum())
    meta = {
        "input": {"frames_per_clip": qcfg.frames_per_clip, "height": model.height, "width": model.width,
                  "array": "uint8 (clips, K, height, width, 3) RGB; normalisation is inside the model",
                  "sampling": "genie_pipeline.filtering.quality.frames.sample_frames: K keyframes spread evenly "
                              "over the clip (K evenly spaced frames when the clip has fewer keyframes)"},
        "pooling": ev.pooling,
        "threshold": ev.threshold,
        "target_precision": qcfg.target_precision,
        "target_met": ev.target_met,
        "threshold_chosen_on": "train" if data.val_is_train else "val",
        "metrics": ev.metrics,
        "bf16": ev.bf16,
        "int8": {**ev.int8, "calibration_frames": int(len(ev.calibration))},
        "labels": {"hash": label_set_hash(data.labels), "source": label_source, "n_clips": len(data.keys),
                   "n_good": n_good, "n_bad": len(data.keys) - n_good, "n_videos": len(data.video_label)},
        "split": {p: sorted(v) for p, v in data.split.items()},
        "training": {**training, "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "torch": torch.__version__, "weights": qcfg.weights, "input_dir": input_dir,
                     "config": qcfg.model_dump()},
        "pictures": pics,
    }
    write_plots(out_path.parent, pics, ev.ys, ev.scores, ev.threshold, qcfg.target_precision)
    return read_metadata(save_quality_model(model, out_path, meta, calibration=ev.calibration))
