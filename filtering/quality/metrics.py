"""How good a quality classifier is: the threshold for a target precision, clip metrics,
ROC-AUC, and the two pictures written beside a model (precision-recall, score histogram).

`y` is 1 for a good clip and 0 for a bad one; `s` the clip scores; clips scoring >= the
threshold are kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def choose_threshold(y: np.ndarray, s: np.ndarray, target: float) -> tuple[float, bool]:
    """The threshold with the most recall whose precision on (y, s) is >= target; (t, met).

    Between the last clip kept and the next one down any threshold gives the same result on
    these clips; the midpoint is the widest margin on both sides (a threshold right at a
    validation clip's score overfits a small set). When no threshold reaches the target,
    the most precise one (met is False)."""
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


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """ROC-AUC, None when the clips are all of one class."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if len(set(y.tolist())) == 2 else None


def clip_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts, precision, recall, kept fraction and accuracy at `threshold`; ROC-AUC and
    average precision (None for a one-class set)."""
    from sklearn.metrics import average_precision_score

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
    out["roc_auc"] = roc_auc(y, s)
    out["average_precision"] = float(average_precision_score(y, s)) if two else None
    return out


def write_plots(out_dir: Path, pics: dict[str, str], ys: dict[str, np.ndarray], scores: dict[str, np.ndarray],
                threshold: float, target: float) -> None:
    """pics["pr_curve"]: validation and test precision-recall curves, the threshold's point
    on each; pics["score_hist"]: validation and test score histograms per class."""
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
