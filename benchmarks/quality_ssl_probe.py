"""Why the SimCLR trunk scores quality worse than a random one: what its embedding encodes.

    python benchmarks/quality_ssl_probe.py OUT REFERENCE.jsonl --pretrained TRUNK.pt [--clips 200]
                                           [--out benchmarks/results/quality_ssl_probe.json]

OUT and REFERENCE.jsonl are what benchmarks/quality.py leaves in its --work directory (the
ingest output, quality off, and the catalog rows with game, kind and label). On `--clips`
labelled clips (seeded draw), the mean 512-d trunk embedding of K=4 frames (as
quality_labels.clip_features), for a randomly initialised trunk and the pretrained one; no
clip statistics, so only the trunk speaks. Per trunk, with logistic regressions:
  game_accuracy   which game (or robot setup) a clip shows, videos held out (4 folds): the
                  nuisance a classifier for unseen games must not lean on
  kind_accuracy   which degradation (or clean) a clip shows, videos held out
  quality_auc     good vs bad with whole games held out (4 folds)
  game_vs_kind    mean cosine distance between a game's clean and degraded clips over the
                  one between clean clips of two different games (< 1: the embedding moves
                  less for a degradation than for another game)
Chance levels are stated beside them (majority class).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _grouped_accuracy(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 4) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pred = np.empty(len(y), dtype=y.dtype)
    for tr, te in GroupKFold(folds).split(x, y, groups):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        pred[te] = clf.fit(x[tr], y[tr]).predict(x[te])
    return round(float((pred == y).mean()), 4)


def _distance_ratio(emb: np.ndarray, game: np.ndarray, kind: np.ndarray) -> float:
    z = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    d = 1 - z @ z.T
    clean = kind == "clean"
    same_game_degraded = (game[:, None] == game[None, :]) & clean[:, None] & ~clean[None, :]
    other_game_clean = (game[:, None] != game[None, :]) & clean[:, None] & clean[None, :]
    return round(float(d[same_game_degraded].mean() / d[other_game_clean].mean()), 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("reference")
    ap.add_argument("--pretrained", required=True)
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality_ssl_probe.json"))
    args = ap.parse_args()

    import torch
    from quality_labels import clip_features, per_kind

    from genie_pipeline.corpus.reference import game_of, reference_labels
    from genie_pipeline.filtering.quality import resolve_labels
    from genie_pipeline.shards.reader import ClipIndex

    torch.set_num_threads(1)
    rows = {str(r["id"]): r for r in (json.loads(x) for x in Path(args.reference).read_text().splitlines() if x)}
    labels = resolve_labels(reference_labels(args.out_dir, args.reference))
    index = ClipIndex.open(args.out_dir)
    keys = sorted(labels)
    keys = sorted(np.random.default_rng(0).choice(keys, min(args.clips, len(keys)), replace=False).tolist())
    row = [rows[str(index[k].video_id)] for k in keys]
    game = np.array([game_of(r) for r in row])
    kind = np.array([r["made_how"] for r in row])
    video = np.array([str(index[k].video_id) for k in keys])
    y = np.array([labels[k] == "good" for k in keys], int)
    result = {"clips": len(keys), "games": len(set(game.tolist())), "kinds": len(set(kind.tolist())),
              "chance": {"game_accuracy": round(float(np.unique(game, return_counts=True)[1].max() / len(game)), 4),
                         "kind_accuracy": round(float(np.unique(kind, return_counts=True)[1].max() / len(kind)), 4),
                         "quality_auc": 0.5},
              "pretrained": json.loads(Path(args.pretrained).with_suffix(".json").read_text())
              if Path(args.pretrained).with_suffix(".json").exists() else args.pretrained,
              "trunks": {}}
    for name, weights in (("random_init", None), ("simclr", args.pretrained)):
        t0 = time.time()
        emb = clip_features(index, keys, weights)["emb"]
        result["trunks"][name] = {
            "game_accuracy": _grouped_accuracy(emb, game, video),
            "kind_accuracy": _grouped_accuracy(emb, kind, video),
            "quality_auc": per_kind(emb, y, game, kind, 4)["all"],
            "game_vs_kind": _distance_ratio(emb, game, kind),
            "wall_s": round(time.time() - t0, 1)}
        print(f"  {name}: {result['trunks'][name]}", file=sys.stderr, flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["trunks"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
