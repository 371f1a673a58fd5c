"""Label efficiency of the quality classifier: held-out-games ROC-AUC against the number of labels,
random vs active labelling, with and without self-supervised pretraining. Used by quality.py
(stage `labels`); runs alone on an ingest output (quality off) and the catalog rows that label
it (quality.py writes them to WORK/reference.jsonl), into results/quality_labels.json:

    python benchmarks/quality_labels.py OUT REFERENCE.jsonl --work DIR [--pretrain-steps 60]

Protocol (what a CPU affords for 4 sizes x 2 strategies x 3 feature sets x folds x seeds):
the trunk is frozen and a logistic regression is fitted on per-clip features, so each point is
seconds, not a fine-tuning run. Features of a clip (K=4 frames, as scoring samples them):
  stats      the classifier's 14 game-agnostic clip statistics (image_stats + motion): the
             strongest trivial baseline, no network at all
  scratch    stats + the mean 512-d embedding of a randomly initialised ResNet18 trunk
  pretrained stats + the embedding of the trunk after `pretrain_backbone` on every clip of the
             output (no labels; the held-out games' clips included, as on any ingest a user scores)
Whole games (a robot setup counts as one) are held out in `folds` folds; in each, the pool is
the other games' clips. random: n clips drawn uniformly from the pool. active: 50 random, then
rounds doubling the labels (50 -> 100 -> 200 -> 500), each round `active_sample` (the label
page's selection: half the least sure under the current fit, at most 2 per video, half
stratified by game) of the clips not yet labelled. AUC pooled over the folds' held-out clips,
mean over seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIZES = (50, 100, 200, 500)


def clip_features(index, keys: list[str], weights: str | None, k: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Per clip: "stats" (14) and "emb" (512, the trunk's mean frame embedding)."""
    import torch

    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.model import QualityNet, load_backbone_weights

    torch.manual_seed(seed)
    model = QualityNet(frames_per_clip=k)
    if weights:
        load_backbone_weights(model, weights)
    model.eval()
    emb, stats = [], []
    with torch.inference_mode():
        for i in range(0, len(keys), 32):
            clips = torch.from_numpy(np.stack([sample_frames(index.read(key), k) for key in keys[i:i + 32]]))
            x = model.normalize(clips.reshape(-1, *clips.shape[2:]))
            emb.append(model.features(x).view(len(clips), k, -1).mean(1).numpy())
            stats.append(torch.cat([model.image_stats(clips), model.motion(x, k)], 1).numpy())
    return {"stats": np.concatenate(stats), "emb": np.concatenate(emb)}


def _fit_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(set(ytr.tolist())) < 2:
        return np.full(len(xte), float(ytr.mean()))
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced"))
    clf.fit(xtr, ytr)
    return clf.predict_proba(xte)[:, 1]


class _Clip:
    __slots__ = ("key", "video_id", "stratum")

    def __init__(self, key, video_id, stratum):
        self.key, self.video_id, self.stratum = key, video_id, stratum


def label_curve(x: np.ndarray, y: np.ndarray, unit: np.ndarray, video: np.ndarray, folds: int, seeds: int,
                sizes=SIZES, share: float = 0.5) -> dict[str, dict[int, float]]:
    """{"random"|"active": {n: pooled held-out AUC, mean over seeds}} for features `x`."""
    from sklearn.metrics import roc_auc_score

    from genie_pipeline.filtering.quality.label.sample import active_sample

    units = sorted(set(unit.tolist()))
    out: dict[str, dict[int, list[float]]] = {"random": {}, "active": {}}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        order = list(units)
        rng.shuffle(order)
        fold_of = {u: i % folds for i, u in enumerate(order)}
        f = np.array([fold_of[u] for u in unit])
        preds = {s: {n: np.zeros(len(y)) for n in sizes} for s in out}
        for k in range(folds):
            pool, test = np.where(f != k)[0], np.where(f == k)[0]
            start = rng.choice(pool, min(sizes[0], len(pool)), replace=False)
            for n in sizes:  # random: n uniform draws (the first 50 shared with active)
                extra = rng.choice(np.setdiff1d(pool, start), max(0, min(n, len(pool)) - len(start)), replace=False)
                lab = np.concatenate([start, extra])
                preds["random"][n][test] = _fit_predict(x[lab], y[lab], x[test])
            lab = start
            for n in sizes:  # active: grow the labelled set round by round
                if min(n, len(pool)) > len(lab):
                    rest = np.setdiff1d(pool, lab)
                    p = _fit_predict(x[lab], y[lab], x[rest])
                    margin = {str(i): abs(float(v) - 0.5) for i, v in zip(rest, p)}
                    clips = [_Clip(str(i), str(video[i]), str(unit[i])) for i in rest]
                    pick = active_sample(clips, min(n, len(pool)) - len(lab), margin, share, seed)
                    lab = np.concatenate([lab, np.array([int(c.key) for c in pick], int)])
                preds["active"][n][test] = _fit_predict(x[lab], y[lab], x[test])
        for s in out:
            for n in sizes:
                out[s].setdefault(n, []).append(float(roc_auc_score(y, preds[s][n])))
    return {s: {n: round(float(np.mean(v)), 4) for n, v in d.items()} for s, d in out.items()}


def per_kind(x: np.ndarray, y: np.ndarray, unit: np.ndarray, kinds: np.ndarray, folds: int) -> dict[str, Any]:
    """All labels (every pool clip), games held out: per bad kind, its AUC against every clean clip."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    order = sorted(set(unit.tolist()))
    rng.shuffle(order)
    fold_of = {u: i % folds for i, u in enumerate(order)}
    f = np.array([fold_of[u] for u in unit])
    s = np.zeros(len(y))
    for k in range(folds):
        tr, te = f != k, f == k
        s[te] = _fit_predict(x[tr], y[tr], x[te])
    res = {"all": round(float(roc_auc_score(y, s)), 4)}
    for kind in sorted(set(kinds.tolist()) - {"clean"}):
        sel = (kinds == kind) | (y == 1)
        res[kind] = round(float(roc_auc_score(y[sel], s[sel])), 4)
    return res


def label_efficiency(index, labels: dict[str, str], rows: dict[str, dict], work: Path, *, pretrain_steps: int,
                     folds: int = 4, seeds: int = 3, torch_threads: int = 1, sizes=SIZES,
                     pretrain_batch_size: int = 32) -> dict[str, Any]:
    import time

    import torch

    from genie_pipeline.corpus.reference import game_of
    from genie_pipeline.filtering.quality import QualityConfig
    from genie_pipeline.filtering.quality.pretrain import pretrain_backbone

    torch.set_num_threads(torch_threads)
    keys = sorted(labels)
    vid = np.array([index[k].video_id for k in keys])
    row = [rows[v] for v in vid]
    unit = np.array([game_of(r) for r in row])
    kinds = np.array([r["made_how"] for r in row])
    y = np.array([labels[k] == "good" for k in keys], int)
    t0 = time.time()
    qcfg = QualityConfig(pretrain_steps=pretrain_steps, pretrain_batch_size=pretrain_batch_size,
                         torch_threads=torch_threads)
    pre = pretrain_backbone(index, work / "pretrained.pt", qcfg, progress=False)
    pre_s = time.time() - t0
    t0 = time.time()
    scratch = clip_features(index, keys, None)
    pretrained = clip_features(index, keys, str(work / "pretrained.pt"))
    feat_s = time.time() - t0
    sets = {"stats": scratch["stats"],
            "scratch": np.concatenate([scratch["stats"], scratch["emb"]], 1),
            "pretrained": np.concatenate([pretrained["stats"], pretrained["emb"]], 1)}
    curves, kinds_auc = {}, {}
    for name, x in sets.items():
        curves[name] = label_curve(x, y, unit, vid, folds, seeds, sizes)
        kinds_auc[name] = per_kind(x, y, unit, kinds, folds)
        print(f"  {name}: {curves[name]}  per kind {kinds_auc[name]}", file=sys.stderr, flush=True)
    return {"protocol": "frozen trunk + logistic regression on clip features (module docstring)",
            "clips": len(keys), "good": int(y.sum()), "bad": int(len(y) - y.sum()), "units": len(set(unit.tolist())),
            "folds": folds, "seeds": seeds, "sizes": list(sizes),
            "pretraining": {**pre, "wall_s": round(pre_s, 1)}, "feature_wall_s": round(feat_s, 1),
            "auc": curves, "per_kind_all_labels": kinds_auc}


def main() -> int:
    import argparse
    import json
    import os
    import platform
    import time

    import torch

    from genie_pipeline.corpus.reference import reference_labels
    from genie_pipeline.filtering.quality import resolve_labels
    from genie_pipeline.shards.reader import ClipIndex

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="an ingest output, quality off")
    ap.add_argument("reference", help="catalog rows with quality_label, made_how, game and kind (JSON lines)")
    ap.add_argument("--work", required=True, help="where the pretrained trunk is written")
    ap.add_argument("--pretrain-steps", type=int, default=60)
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3, help="repetitions of the label draws")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "quality_labels.json"))
    args = ap.parse_args()
    rows = {r["id"]: r for r in map(json.loads, Path(args.reference).read_text().splitlines()) if r}
    labels = resolve_labels(reference_labels(args.out, args.reference))
    index = ClipIndex.open(args.out)
    vids = {index[k].video_id for k in labels}
    corpus = {"output": args.out, "clips": len(labels), "videos": len(vids),
              "games": len({rows[v]["game"] for v in vids if rows[v]["kind"] == "game"}),
              "robot_setups": len({rows[v]["game"] for v in vids if rows[v]["kind"] == "robot"}),
              "clips_by_kind": {k: sum(rows[index[c].video_id]["made_how"] == k for c in labels)
                                for k in sorted({rows[v]["made_how"] for v in vids})}}
    Path(args.work).mkdir(parents=True, exist_ok=True)
    le = label_efficiency(index, labels, rows, Path(args.work), pretrain_steps=args.pretrain_steps, folds=args.folds,
                          seeds=args.seeds, pretrain_batch_size=args.pretrain_batch)
    result = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "corpus": corpus, "label_efficiency": le}
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(le["auc"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
