"""`genie-pipeline train-quality`: train the clip quality classifier from labels.

Input: K frames per clip, sampled by `filtering.quality.sample_frames` (the function the
scoring stage uses), at 90x160. Model: `QualityNet` — a ResNet18 trunk (torchvision,
weights=None, or a local weights file) with a frame head (one logit per frame) and a small
clip head over clip statistics (frame logits, motion between sampled frames, embedding
spread). `pooling` picks the clip score: the mean frame probability, or another pooling;
`auto` (default) takes the best on validation, and the metadata reports every pooling's
validation and test ROC-AUC, so the choice is justified by numbers.

Procedure: labels resolved per clip (majority over labellers) -> videos split into train /
val / test (by video, stratified by class: neighbouring clips of one video never straddle a
split) -> class-balanced sampling; each step shows K of the clip's keyframes near the scoring
positions; augmentation per clip (flip, shift, brightness/contrast); multiple-instance frame
loss (a bad clip needs one bad frame) -> AdamW with a one-cycle schedule, bf16 autocast,
BatchNorm statistics re-estimated each epoch, the epoch with the lowest validation loss kept
(early stop after `patience`) -> threshold = the most recall whose validation precision
reaches `target_precision` -> held-out test metrics -> bf16 inference checked on held-out clips.

Writes MODEL.pt (state dict, loadable with torch.load(weights_only=True)), MODEL.json
(input spec, threshold, metrics, label-set hash, training time) and two pictures:
MODEL_pr_curve.png and MODEL_score_hist.png.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from genie_pipeline.filtering.quality import (FRAME_H, FRAME_W, POOLINGS, QualityNet, load_backbone_weights, pool_logits,
                               read_metadata, sample_frames, save_quality_model)
from genie_pipeline.filtering.quality_config import QualityConfig
from genie_pipeline.filtering.quality_data import LABELS, QualityError, label_set_hash, load_labels, resolve_labels
from genie_pipeline.shards.reader import ClipIndex


MIN_STEPS_PER_EPOCH = 8  # small label sets: an "epoch" is still enough steps to move a network from scratch


# --------------------------------------------------------------------------- validation
def check_labels(labels: dict[str, str], index: ClipIndex, source: str, ignore_missing: bool = False) -> dict[str, str]:
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


# -------------------------------------------------------------------------------- split
def split_videos(video_label: dict[str, str], val_fraction: float, test_fraction: float,
                 seed: int) -> dict[str, list[str]]:
    """train/val/test lists of video ids, each class split separately (stratified)."""
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


# ------------------------------------------------------------------------------ metrics
def choose_threshold(y: np.ndarray, s: np.ndarray, target: float) -> tuple[float, bool]:
    """The threshold with the most recall whose precision on (y, s) is >= target; (t, met).

    Clips scoring >= t are kept. Between the last clip kept and the next one down any
    threshold gives the same result on these clips; the midpoint is the widest margin on
    both sides (a threshold right at a validation clip's score overfits a small set)."""
    order = np.argsort(-s, kind="stable")
    ys, ss = y[order], s[order]
    tp = np.cumsum(ys)
    n = np.arange(1, len(ys) + 1)
    prec = tp / n
    cut = np.r_[ss[1:] != ss[:-1], True]  # only cut between distinct scores
    ok = np.where(cut & (prec >= target) & (tp > 0))[0]
    met = bool(len(ok))
    if met:
        i = ok[-1]
    else:
        cands = np.where(cut & (tp > 0))[0]
        if not len(cands):
            return 0.5, False
        i = cands[np.argmax(prec[cands] + 1e-9 * n[cands])]
    t = float(ss[i]) if i + 1 == len(ss) else float((ss[i] + ss[i + 1]) / 2)
    return t, met


def clip_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    pred = s >= threshold
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & (y == 1)).sum())
    out: dict[str, Any] = {"n": int(len(y)), "n_good": int(y.sum()), "n_bad": int(len(y) - y.sum()),
                           "precision": tp / (tp + fp) if tp + fp else None,
                           "recall": tp / (tp + fn) if tp + fn else None,
                           "kept_fraction": float(pred.mean()) if len(y) else None,
                           "accuracy": float((pred == (y == 1)).mean()) if len(y) else None}
    two = len(set(y.tolist())) == 2
    out["roc_auc"] = float(roc_auc_score(y, s)) if two else None
    out["average_precision"] = float(average_precision_score(y, s)) if two else None
    return out


# ------------------------------------------------------------------------- augmentation
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


# ------------------------------------------------------------------------------ training
def _frames_for(index: ClipIndex, keys: list[str], k: int, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    out = np.empty((len(keys), k, FRAME_H, FRAME_W, 3), np.uint8)
    for i, key in enumerate(tqdm(keys, desc="sampling frames", unit="clip", disable=not progress,
                                 file=sys.stderr, dynamic_ncols=True, mininterval=1.0)):
        try:
            out[i] = sample_frames(index.read(key), k)
        except QualityError as e:
            raise QualityError(f"clip {key} ({index[key].path}): {e}") from None
    return out


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
    from genie_pipeline.filtering.quality_frames import sample_indices

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


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None


def train_quality(index: ClipIndex, labels: dict[str, str], out_path: str | os.PathLike,
                  cfg: QualityConfig | None = None, *, weights: str | None = None,
                  label_source: str = "labels", progress: bool = True, ignore_missing: bool = False,
                  split: dict[str, list[str]] | None = None,
                  log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, choose the threshold, write model + metadata + pictures; returns the metadata.

    `split`: {"train"|"val"|"test": [video ids]} to use instead of the seeded random split
    (cross-validation); videos it does not name are not used."""
    from tqdm import tqdm

    cfg = cfg or QualityConfig()
    log = log or (lambda m: print(m, file=sys.stderr))
    t_start = time.time()
    labels = check_labels(labels, index, label_source, ignore_missing)
    keys = sorted(labels)
    y_all = np.array([1 if labels[k] == "good" else 0 for k in keys], np.int64)
    video_of = {k: index[k].video_id for k in keys}
    votes: dict[str, Counter] = defaultdict(Counter)
    for k in keys:
        votes[video_of[k]][labels[k]] += 1
    video_label = {v: c.most_common(1)[0][0] for v, c in votes.items()}
    if split is None:
        split = split_videos(video_label, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    else:
        split = {p: [v for v in split.get(p, []) if v in video_label] for p in ("train", "val", "test")}
        named = {v for vs in split.values() for v in vs}
        keys = [k for k in keys if video_of[k] in named]
        y_all = np.array([1 if labels[k] == "good" else 0 for k in keys], np.int64)
        labels = {k: labels[k] for k in keys}
    part_of = {v: p for p, vs in split.items() for v in vs}
    idx = {p: np.array([i for i, k in enumerate(keys) if part_of[video_of[k]] == p], np.int64)
           for p in ("train", "val", "test")}
    val_is_train = len(set(y_all[idx["val"]].tolist())) < 2
    if val_is_train:
        log("warning: too few videos per class for a validation split; early stopping and the threshold use "
            "the training clips (label clips from more videos)")
        idx["val"] = idx["train"]
    log(f"labels: {len(keys)} clips ({int(y_all.sum())} good, {int(len(keys) - y_all.sum())} bad) from "
        f"{len(video_label)} videos; split by video: train {len(split['train'])} / val {len(split['val'])} / "
        f"test {len(split['test'])} videos")

    k = cfg.frames_per_clip
    frames = _frames_for(index, keys, k, progress)  # exactly what scoring sees: evaluation
    # training draws K of P frames per clip per step (more views of each clip, same spacing)
    n_pool = max(cfg.train_frame_pool, k)
    pool = _frames_for(index, [keys[i] for i in idx["train"]], n_pool, progress) if n_pool > k else None
    pool_row = {int(i): r for r, i in enumerate(idx["train"])}

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    candidates = POOLINGS if cfg.pooling == "auto" else (cfg.pooling,)
    model = QualityNet(cfg.arch, k, "mean_prob" if cfg.pooling == "auto" else cfg.pooling,
                       channels_last=cfg.channels_last)
    weights = weights or cfg.weights
    if weights:
        info = load_backbone_weights(model, weights)
        log(f"backbone initialised from {weights}: {info}")
    head = list(model.clip_head.parameters())
    trunk = [p for p in model.parameters() if all(p is not h for h in head)]
    # the clip head, a small MLP on 21 detached statistics: a larger step and its own decay
    opt = torch.optim.AdamW([{"params": trunk}, {"params": head, "lr": cfg.head_learning_rate, "weight_decay": cfg.head_weight_decay}],
                            lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    tr = idx["train"]
    y_tr = y_all[tr]
    # class balancing: each epoch draws len(train) clips, each class equally likely
    w = np.where(y_tr == 1, 0.5 / max(1, y_tr.sum()), 0.5 / max(1, len(y_tr) - y_tr.sum()))
    w = w / w.sum()
    bs = min(cfg.train_batch_size, max(2, len(tr)))
    steps = cfg.steps_per_epoch or max(MIN_STEPS_PER_EPOCH, math.ceil(len(tr) / bs))
    # one cycle: linear warm-up over the first 10% of the planned steps, cosine decay to 5%
    total = cfg.epochs * steps
    warm = max(1, total // 10)

    def lr_factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    history, best, best_state, best_epoch, stale = [], None, None, 0, 0
    bar = tqdm(total=cfg.epochs * steps, desc="training", unit="step", disable=not progress,
               file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        model.bf16 = cfg.train_bf16  # the trunk's forward/backward under bf16 autocast (~1.8x on CPU)
        draw = rng.choice(tr, size=steps * bs, replace=True, p=w)
        losses = []
        for s in range(steps):
            b = draw[s * bs:(s + 1) * bs]
            clips = torch.from_numpy(_pick(pool[[pool_row[int(i)] for i in b]], k, rng)
                                     if pool is not None else frames[b])  # (B, K, H, W, 3)
            x = model.normalize(clips.reshape(-1, FRAME_H, FRAME_W, 3))
            if cfg.augment:
                x = augment(x, k, gen)
                if cfg.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            frame_logits, clip_logits = model.heads(model.features(x), k, model.motion(x, k), model.image_stats(clips))
            target = torch.from_numpy(y_all[b].astype(np.float32))
            loss = _frame_loss(frame_logits, target, cfg.frame_loss) \
                + F.binary_cross_entropy_with_logits(clip_logits, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.update(1)
        model.bf16 = False  # evaluation in fp32
        recalibrate_bn(model, frames[rng.permutation(tr)[:128]])
        vo = _outputs(model, frames[idx["val"]])
        yv = y_all[idx["val"]]
        aucs = {how: _auc(yv, _pooled(vo, how)) for how in candidates}
        val_loss = _bce(vo, yv, cfg.frame_loss)
        top = max((a for a in aucs.values() if a is not None), default=None)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                        "val_auc": aucs})
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", val_auc=f"{top or 0:.3f}", val_loss=f"{val_loss:.3f}")
        # validation loss, not AUC: on a few validation videos AUC saturates at 1.0 by chance
        score = -val_loss
        if best is None or score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience and epoch >= cfg.min_epochs:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    train_seconds = time.time() - t_start

    # ------------------------------------------------------- pooling, threshold, metrics
    outs = {p: _outputs(model, frames[idx[p]]) for p in ("train", "val", "test")}
    ys = {p: y_all[idx[p]] for p in idx}
    pooling_auc = {p: {how: _auc(ys[p], _pooled(outs[p], how)) for how in POOLINGS} for p in ("val", "test")}
    pooling = cfg.pooling
    if pooling == "auto":  # the best on validation; mean_prob unless another is better
        val = pooling_auc["val"]
        pooling = max(POOLINGS, key=lambda h: ((val[h] if val[h] is not None else -1), h == "mean_prob"))
        log(f"pooling: {pooling} (validation ROC-AUC " + ", ".join(
            f"{h} {'n/a' if v is None else f'{v:.3f}'}" for h, v in val.items()) + ")")
    model.pooling = pooling
    scores = {p: _pooled(outs[p], pooling) for p in outs}
    threshold, met = choose_threshold(ys["val"], scores["val"], cfg.target_precision)
    if not met:
        log(f"warning: no threshold reaches precision {cfg.target_precision} on validation; using the most "
            f"precise one ({threshold:.4f})")
    metrics = {p: clip_metrics(ys[p], scores[p], threshold) for p in ("train", "val", "test") if len(ys[p])}
    metrics["pooling_roc_auc"] = pooling_auc
    metrics["history"] = history
    held = "test" if len(idx["test"]) else "val"
    bf16 = _bf16_check(model, frames[idx[held]], ys[held], threshold)

    # ------------------------------------------------------------------------- writing
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    pics = {"pr_curve": f"{out_path.stem}_pr_curve.png", "score_hist": f"{out_path.stem}_score_hist.png"}
    meta = {
        "input": {"frames_per_clip": k, "height": FRAME_H, "width": FRAME_W,
                  "array": "uint8 (clips, K, height, width, 3) RGB; normalisation is inside the model",
                  "sampling": "genie_pipeline.filtering.quality.sample_frames: K keyframes spread evenly over the clip "
                              "(K evenly spaced frames when the clip has fewer keyframes)"},
        "pooling": pooling,
        "threshold": threshold,
        "target_precision": cfg.target_precision,
        "target_met": met,
        "threshold_chosen_on": "train" if val_is_train else "val",
        "metrics": metrics,
        "bf16": bf16,
        "labels": {"hash": label_set_hash(labels), "source": label_source, "n_clips": len(keys),
                   "n_good": int(y_all.sum()), "n_bad": int(len(keys) - y_all.sum()),
                   "n_videos": len(video_label)},
        "split": {p: sorted(v) for p, v in split.items()},
        "training": {"seconds": round(train_seconds, 2), "epochs_run": len(history), "best_epoch": best_epoch,
                     "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "torch": torch.__version__, "weights": weights, "input_dir": index.root,
                     "config": cfg.model_dump()},
        "pictures": pics,
    }
    _plots(out_path.parent, pics, ys, scores, threshold, cfg.target_precision)
    meta = read_metadata(save_quality_model(model, out_path, meta))
    return meta


@torch.inference_mode()
def _bf16_check(model: QualityNet, frames: np.ndarray, y: np.ndarray, threshold: float) -> dict:
    """Does bf16 autocast keep the classifier's accuracy? Same clips, both precisions."""
    if not len(frames):
        return {"keeps_accuracy": False, "reason": "no clips to compare"}
    o32 = _outputs(model, frames)
    model.bf16 = True
    try:
        o16 = _outputs(model, frames)
    finally:
        model.bf16 = False
    s32, s16 = _pooled(o32, model.pooling), _pooled(o16, model.pooling)
    a32, a16 = _auc(y, s32), _auc(y, s16)
    agree = float(((s32 >= threshold) == (s16 >= threshold)).mean())
    # the same keep/reject decisions, and a ranking as good (on a few dozen clips one swapped
    # near-tie moves the AUC by ~0.01: a stricter bound would only measure the sample size)
    keeps = (a32 is None or abs(a32 - a16) <= 0.02) and agree >= 0.99
    return {"keeps_accuracy": bool(keeps), "roc_auc_fp32": a32, "roc_auc_bf16": a16,
            "max_abs_score_diff": float(np.abs(s32 - s16).max()), "decision_agreement": agree, "n": int(len(y))}


def _plots(out_dir: Path, pics: dict, ys: dict, scores: dict, threshold: float, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for p in ("val", "test"):
        y, s = ys[p], scores[p]
        if len(set(y.tolist())) < 2:
            continue
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, label=f"{p} ({len(y)} clips)")
        m = clip_metrics(y, s, threshold)
        if m["precision"] is not None:
            ax.plot([m["recall"]], [m["precision"]], "o", color=ax.lines[-1].get_color())
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target precision {target}")
    ax.set(xlabel="recall (good clips kept)", ylabel="precision (kept clips that are good)",
           title=f"quality classifier: precision-recall\n(dot: threshold {threshold:.3f})", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / pics["pr_curve"], dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    bins = np.linspace(0, 1, 26)
    for ax, p in zip(axes, ("val", "test")):
        y, s = ys[p], scores[p]
        for cls, color, name in ((1, "tab:green", "good"), (0, "tab:red", "bad")):
            ax.hist(s[y == cls], bins=bins, alpha=0.6, color=color, label=f"{name} ({int((y == cls).sum())})")
        ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
        ax.set(title=f"{p} clips", xlabel="quality score", ylabel="clips")
        ax.legend()
    fig.suptitle("score histogram per class")
    fig.tight_layout()
    fig.savefig(out_dir / pics["score_hist"], dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------------ the CLI
def add_train_quality_args(p) -> None:
    p.add_argument("input", nargs="?", default=None,
                   help="ingest output directory or folder of mp4 clips (default: output.dir)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels", default=None,
                   help="label database, Parquet export or Label Studio JSON (default: filters.quality.labels_db, "
                        "else INPUT/labels.sqlite)")
    g.add_argument("--reference-catalog", default=None, metavar="CATALOG",
                   help="label every clip with its video's quality_label from a corpus catalog.jsonl")
    p.add_argument("--out", default=None, help="model file to write (default: filters.quality.model, "
                                               "else INPUT/quality/model.pt)")
    p.add_argument("--weights", default=None, help="local backbone weights to start from (torch state dict)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="frames per clip K")
    p.add_argument("--target-precision", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-missing", action="store_true", help="skip labels of clips that don't exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_train_quality(args, cfg) -> int:
    qcfg = QualityConfig() if cfg is None else cfg if isinstance(cfg, QualityConfig) else cfg.filters.quality
    input_dir = args.input or (getattr(getattr(cfg, "output", None), "dir", None))
    if not input_dir:
        raise QualityError("give the ingest output directory (or folder of clips) to train from")
    updates = {k: v for k, v in {"epochs": args.epochs, "frames_per_clip": args.frames,
                                 "target_precision": args.target_precision, "seed": args.seed}.items()
               if v is not None}
    if updates:
        from pydantic import ValidationError

        try:
            qcfg = QualityConfig.model_validate({**qcfg.model_dump(), **updates})
        except ValidationError as e:
            err = e.errors()[0]
            raise QualityError(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    index = ClipIndex.open(input_dir)
    if args.reference_catalog:
        from genie_pipeline.filtering.quality import reference_labels

        events = reference_labels(input_dir, args.reference_catalog)
        source = f"reference labels from {args.reference_catalog}"
    else:
        path = args.labels or qcfg.labels_db or str(Path(input_dir) / "labels.sqlite")
        events = load_labels(path)
        source = str(path)
    labels = resolve_labels(events)
    out = args.out or qcfg.model or str(Path(input_dir) / "quality" / "model.pt")
    meta = train_quality(index, labels, out, qcfg, weights=args.weights, label_source=source,
                         progress=not args.no_progress, ignore_missing=args.ignore_missing)
    m = meta["metrics"]
    rep = m.get("test") or m["val"]
    which = "test" if "test" in m else "val"
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"
    print(f"wrote {out} (+ {Path(out).with_suffix('.json').name}, {', '.join(meta['pictures'].values())})")
    print(f"threshold {meta['threshold']:.4f} (target precision {meta['target_precision']}"
          f"{'' if meta['target_met'] else ', NOT reached on validation'}); {which}: ROC-AUC {f(rep['roc_auc'])}, "
          f"precision {f(rep['precision'])}, recall {f(rep['recall'])} on {rep['n']} clips; "
          f"trained in {meta['training']['seconds']:.0f} s")
    return 0
