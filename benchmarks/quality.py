"""Quality classifier: accuracy on the sample corpus's held-out videos, and what scoring costs.

    python benchmarks/quality.py [--size small|full] [--seeds 0,1,2,3] [--quality-seeds 0,1]
                                 [--corpus-base DIR] [--frames 4] [--epochs 30] [--folds 4]
                                 [--cv-group game|video] [--out benchmarks/results/quality.json]

1. Ingest the sample corpus (one rendering per seed, each its own source) and the `quality`
   corpora (30 games, a clean and a degraded video each) with the keyword filter off, so
   every decodable video, good or bad, is cut; quality off.
2. Train the classifier from the catalogs' reference labels (`reference_labels`); the
   split is by video, and held-out test videos are never seen in training, early stopping
   or threshold choice. Report ROC-AUC, precision and recall at the threshold on them.
2b. Cross-validation holding out whole GAMES (every video of a game, clean or degraded, in
   one fold): a classifier that learned which games look bad, not what bad looks like,
   fails here. Per degradation kind: its ROC-AUC against all clean clips.
3. Ingest the same files again with `filters.quality.mode: score_only` and the model, in
   one process (FnApiRunner in_memory, one torch thread), and compare in that run the CPU
   time of the whole ingest with the scoring stage's own CPU counters (frame sampling +
   inference): the scoring share (goal <= 25%) and clips scored per CPU second.
4. The same clips through the model outside Beam, one thread: fp32 vs channels_last vs
   bf16 autocast, K = 2/4/8 frames — clips per CPU second for each.
5. (--label-efficiency) held-out-games ROC-AUC against 50/100/200/500 labels, random vs
   active labelling, stats-only baseline vs scratch trunk vs self-supervised pretrained trunk,
   and per bad kind (quality_labels.py); with --pretrain-steps > 0 the fine-tuned
   cross-validation (2b) is run twice, from scratch and from the pretrained trunk.

3b. (`costmodes`) in one process, one after another: the ingest without scoring, with
   `score_only` (every clip scored) and with `filter` (only the clips the heuristics kept are
   scored): the scoring share of each by the stage's counters and by difference with the
   unscored run measured beside them.

`--stages` picks what runs (default all: train,cv,cost,variants; add `labels` for 5, `cvp` for
2b fine-tuned from `--pretrained`, `testkinds` for the model's own test videos per kind,
`costmodes` for 3b). On the quality corpus alone: `--seeds '' --quality-seeds 0`.
On a busy machine the stages run as separate processes on one `--work`: `--model` (e.g. a
fold's model from 2b) skips 2, `variants` without `cost` estimates the scoring share from the
variants' CPU per clip and the unscored ingest's CPU, and `--merge A.json B.json …` combines
their results into `--out` with the held-out-games summary (before: no pretraining; after:
the recipe that measured best), measuring nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


from genie_pipeline.corpus.reference import game_of  # noqa: E402
from genie_pipeline.ingest.pipeline import cpu_seconds as cpu  # noqa: E402


def corpora(seeds: list[int], size: str, base: Path, quality_seeds: list[int] = ()) -> list[tuple[str, Path]]:
    from genie_pipeline.corpus.generate import cached_small_corpus, generate_corpus

    out = []
    for s in seeds:
        if size == "small":
            out.append(("small", Path(cached_small_corpus(base, seed=s))))
            continue
        out.append(("full", base / f"full-s{s}"))
    out += [("quality", base / f"quality-s{s}") for s in quality_seeds]
    for i, (kind, d) in enumerate(out):
        if kind != "small" and not (d / "catalog.jsonl").exists():
            print(f"rendering the {kind} corpus -> {d}", file=sys.stderr, flush=True)
            generate_corpus(d, seed=(seeds + list(quality_seeds))[i], size=kind, lerobot=False)
    return out


def catalogs(dirs: list[tuple[str, Path]], work: Path, group: str) -> tuple[list[dict], Path, dict[str, dict]]:
    """One local-path catalog per corpus, the reference labels, and per video id its catalog row.

    group "render": each rendering is its own video (ids prefixed with the corpus index):
    the split keeps a video's clips together, as it would for any two uploads of one game.
    group "plan": renderings of one catalog entry (same game, same degradation, other seed)
    share the id, so a held-out video's siblings are held out too — a test on degradations
    the classifier may never have seen labelled."""
    sources = []
    labels: dict[str, dict] = {}
    for i, (kind, d) in enumerate(dirs):
        rows = [json.loads(x) for x in (d / "catalog.jsonl").read_text().splitlines() if x.strip()]
        tag = "q" if kind == "quality" else "s"
        for r in rows:
            r["id"] = f"{tag}{i}{r['id']}" if group == "render" else f"{tag}{r['id']}"
        ok = [r for r in rows if r.get("file") and not r.get("expect_failure")]
        cat = work / f"catalog{i}.jsonl"
        cat.write_text("".join(json.dumps({"id": r["id"], "path": str(d / r["file"]), "title": r["title"]}) + "\n"
                               for r in ok))
        sources.append({"type": "catalog", "name": f"s{i}", "path": str(cat), "keywords": "none"})
        for r in rows:
            if r["id"] in labels and labels[r["id"]]["quality_label"] != r["quality_label"]:
                raise SystemExit(f"{r['id']}: reference label differs between corpora")
            labels[r["id"]] = r
    ref = work / "reference.jsonl"
    ref.write_text("".join(json.dumps(r) + "\n" for r in labels.values()))
    return sources, ref, labels


def ingest(sources: list[dict], out: Path, quality: dict | None = None, workers: int = 1) -> tuple[float, dict]:
    """CPU seconds of this process (with workers > 1 the workers' CPU is not counted) and stats."""
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import run_ingest

    runner = {"running_mode": "in_memory", "direct_num_workers": 1} if workers == 1 else \
        {"running_mode": "multi_processing", "direct_num_workers": workers}
    cfg = parse_config({
        "sources": sources,
        "runner": runner,
        "filters": {"quality": quality or {"mode": "off"}},
        "output": {"dir": str(out)},
    })
    c0 = cpu()
    stats = run_ingest(cfg)
    spent = cpu() - c0
    # the report is drawn by a process of its own: let it finish before anything else is timed
    deadline = time.time() + 300
    while not (out / "report.html").exists() and time.time() < deadline:
        time.sleep(1)
    return spent, stats


def variants(model_path: str, out: Path, n_clips: int = 48) -> list[dict]:
    import numpy as np
    import torch

    from genie_pipeline.filtering.quality import load_quality_model
    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.model import INT8_CALIBRATION, QualityNet, native_bf16
    from genie_pipeline.shards.reader import ClipIndex

    torch.set_num_threads(1)
    index = ClipIndex.open(out)
    keys = list(index.clips)[:n_clips]
    data = [index.read(k) for k in keys]
    base, meta = load_quality_model(model_path, bf16="off")
    calib = torch.load(model_path, weights_only=True).get(INT8_CALIBRATION)
    rows = []
    for k in (2, 4, 8):
        t0 = time.thread_time()
        clips = np.stack([sample_frames(d, k) for d in data])
        sample_s = (time.thread_time() - t0) / len(keys)
        for layout, bf16 in (("contiguous", False), ("channels_last", False), ("channels_last", True),
                             ("channels_last int8", False)):
            if bf16 and not native_bf16():  # emulated: ~8x slower than fp32, never chosen by `auto`
                continue
            m = QualityNet(**{**meta["model_params"], "frames_per_clip": k}, channels_last=layout != "contiguous",
                           bf16=bf16).eval()
            m.load_state_dict(base.state_dict())
            if layout.endswith("int8"):
                if calib is None:
                    continue
                m.quantize(calib)
            with torch.inference_mode():
                m(torch.from_numpy(clips[:16]))  # warm-up (oneDNN primitives)
                t0 = time.thread_time()
                for i in range(0, len(clips), 16):
                    m(torch.from_numpy(clips[i:i + 16]))
                infer_s = (time.thread_time() - t0) / len(clips)
            rows.append({"frames": k, "layout": layout, "bf16": bf16, "sample_ms": round(sample_s * 1000, 2),
                         "infer_ms": round(infer_s * 1000, 2),
                         "clips_per_cpu_s": round(1 / (sample_s + infer_s), 1),
                         "trained_k": k == meta["model_params"]["frames_per_clip"]})
            print(f"  K={k} {layout:13s} bf16={bf16!s:5s}: sample {sample_s * 1000:.1f} ms + infer "
                  f"{infer_s * 1000:.1f} ms per clip", file=sys.stderr, flush=True)
    return rows


def int8_calibration(index, labels: dict[str, str], model_path: Path, meta: dict, seed: int):
    """The frames a model's int8 trunk is calibrated on: those its file stores, or for a model
    trained before int8 existed, drawn as training draws them (`calibration_frames` over the K
    scoring frames of its training videos' clips)."""
    import numpy as np
    import torch

    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.model import INT8_CALIBRATION, calibration_frames

    calib = torch.load(model_path, weights_only=True).get(INT8_CALIBRATION)
    if calib is not None:
        return calib.numpy()
    train_v, k_frames = set(meta["split"]["train"]), meta["model_params"]["frames_per_clip"]
    return calibration_frames(np.stack([sample_frames(index.read(k), k_frames) for k in sorted(labels)
                                        if index[k].video_id in train_v]), seed=seed)


def with_int8(index, labels: dict[str, str], model_path: Path, out: Path, seed: int) -> Path:
    """A copy of a model trained before int8 existed, made as training now makes one: the
    calibration frames stored with it and `int8` in its metadata measured on its own held-out
    test videos (`precision_check`). A model that has them is returned as it is."""
    import numpy as np
    import torch

    from genie_pipeline.filtering.quality import load_quality_model
    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.model import INT8_CALIBRATION, save_quality_model
    from genie_pipeline.filtering.quality.train import precision_check

    if INT8_CALIBRATION in torch.load(model_path, weights_only=True):
        return model_path
    model, meta = load_quality_model(str(model_path), bf16="off")
    calib = int8_calibration(index, labels, model_path, meta, seed)
    test = set(meta["split"]["test"])
    keys = [k for k in sorted(labels) if index[k].video_id in test]
    frames = np.stack([sample_frames(index.read(k), meta["model_params"]["frames_per_clip"]) for k in keys])
    y = np.array([labels[k] == "good" for k in keys], int)
    check = precision_check(model, frames, y, meta["threshold"], "int8", calib)
    meta = {k: v for k, v in meta.items() if k not in ("format", "model_file", "model_params")}
    meta["int8"] = {**check, "calibration_frames": len(calib), "added_by": "benchmarks/quality.py with_int8"}
    print(f"   int8 check on the model's test videos: {check}", file=sys.stderr, flush=True)
    return save_quality_model(model, out / "model.pt", meta, calibration=calib)


def cross_validate(index, labels: dict[str, str], folds: int, qcfg, work: Path, rows: dict[str, dict],
                   unit: str = "game", only: set[int] | None = None) -> dict:
    """Every game (`unit="game"`) or video held out once: K folds; per fold, training on the
    rest (a quarter of its videos for validation: early stopping and threshold), scores and
    keep/reject decisions on the held-out fold. Pooled out-of-fold ROC-AUC, precision,
    recall, and per degradation kind its ROC-AUC against every clean clip.

    A fold whose model an earlier run left in `work` (cvF/model.json) is not trained again
    (the folds are a function of the seed), so `only` (a subset of the folds, e.g. one process
    per core) and a last run over all of them pool what several processes trained."""
    import random

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from genie_pipeline.filtering.quality import load_quality_model, train_quality
    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.metrics import clip_metrics
    from genie_pipeline.filtering.quality.model import read_metadata
    from genie_pipeline.filtering.quality.score import score_clips
    from genie_pipeline.filtering.quality.train import split_videos

    video_of = {k: index[k].video_id for k in labels}
    vlabel: dict[str, str] = {}
    for k, lab in labels.items():
        vlabel.setdefault(video_of[k], lab)
    group = {v: game_of(rows[v]) if unit == "game" else v for v in vlabel}
    units = sorted(set(group.values()))
    random.Random(qcfg.seed).shuffle(units)
    fold_of = {v: units.index(group[v]) % folds for v in vlabel}
    ys, ss, ss8, keep, kinds, per_fold = [], [], [], [], [], []
    for f in range(folds):
        if only is not None and f not in only:
            continue
        test = sorted(v for v, g in fold_of.items() if g == f)
        rest = {v: lab for v, lab in vlabel.items() if fold_of[v] != f}
        sp = split_videos(rest, 0.25, 0.0, qcfg.seed + f)
        t0 = time.time()
        if (work / f"cv{f}" / "model.json").exists():
            meta = read_metadata(work / f"cv{f}" / "model.pt")
            if sorted(meta["split"]["test"]) != test:
                raise SystemExit(f"{work / f'cv{f}'}: a model of another fold split; delete it to train again")
            print(f"  fold {f}: reusing {work / f'cv{f}'}", file=sys.stderr, flush=True)
        else:
            meta = train_quality(index, labels, work / f"cv{f}" / "model.pt", qcfg, label_source="labels",
                                 progress=False, split={"train": sp["train"], "val": sp["val"], "test": test})
        model, _ = load_quality_model(str(work / f"cv{f}" / "model.pt"), bf16="off")
        keys = [k for k in labels if video_of[k] in test]
        k_frames = meta["model_params"]["frames_per_clip"]
        clips = [sample_frames(index.read(k), k_frames) for k in keys]
        s = score_clips(model, clips)
        model.quantize(int8_calibration(index, labels, work / f"cv{f}" / "model.pt", meta, qcfg.seed))
        ss8.append(score_clips(model, clips))
        y = np.array([labels[k] == "good" for k in keys], int)
        ys.append(y)
        ss.append(s)
        keep.append(s >= meta["threshold"])
        kinds += [rows[video_of[k]]["made_how"] for k in keys]
        m = clip_metrics(y, s, meta["threshold"])
        per_fold.append({"fold": f, "units": len({group[v] for v in test}), "videos": len(test), "clips": len(keys),
                         "roc_auc": m["roc_auc"], "precision": m["precision"], "recall": m["recall"],
                         "threshold": meta["threshold"], "pooling": meta["pooling"],
                         "epochs": meta["training"]["epochs_run"], "seconds": round(time.time() - t0, 1)})
        print(f"  fold {f}: {per_fold[-1]}", file=sys.stderr, flush=True)
    y, s, kp = np.concatenate(ys), np.concatenate(ss), np.concatenate(keep)
    s8 = np.concatenate(ss8)
    thr = np.concatenate([np.full(len(f), p["threshold"]) for f, p in zip(ys, per_fold)])
    by_kind = per_kind(y, s, kp, np.array(kinds))
    tp, fp, fn = int((kp & (y == 1)).sum()), int((kp & (y == 0)).sum()), int((~kp & (y == 1)).sum())
    return {"folds": folds, "held_out_unit": unit, "units": len(units), "clips": int(len(y)), "videos": len(fold_of),
            "roc_auc_pooled": float(roc_auc_score(y, s)),
            "roc_auc_mean_of_folds": float(np.mean([p["roc_auc"] for p in per_fold if p["roc_auc"] is not None])),
            "precision_at_threshold": tp / (tp + fp) if tp + fp else None,
            "recall_at_threshold": tp / (tp + fn) if tp + fn else None, "by_kind": by_kind, "per_fold": per_fold,
            "int8": {"roc_auc_pooled": float(roc_auc_score(y, s8)),
                     "decision_agreement": float(((s8 >= thr) == kp).mean()),
                     "max_abs_score_diff": float(np.abs(s8 - s).max()),
                     "by_kind": per_kind(y, s8, s8 >= thr, np.array(kinds)),
                     "what": "the same fold models scoring with the int8 trunk (filters.quality.int8), calibrated "
                             "on 64 frames of each fold's training clips"}}


def corpus_summary(index, labels: dict[str, str], rows: dict[str, dict], args, seeds, qseeds) -> dict:
    vids = {index[k].video_id for k in labels}
    return {"size": args.size, "seeds": seeds, "quality_seeds": qseeds, "group": args.group, "clips": len(labels),
            "good": sum(v == "good" for v in labels.values()), "bad": sum(v == "bad" for v in labels.values()),
            "videos": len(vids), "games": len({rows[v]["game"] for v in vids if rows[v]["kind"] == "game"}),
            "robot_setups": len({rows[v]["game"] for v in vids if rows[v]["kind"] == "robot"}),
            "clips_by_kind": {k: sum(rows[index[c].video_id]["made_how"] == k for c in labels)
                              for k in sorted({rows[v]["made_how"] for v in vids})}}


GOAL_ROC_AUC = 0.92


def per_kind(y, s, kp, kinds) -> dict:
    """Per made_how: clips, mean score, kept fraction, and (a bad kind) its ROC-AUC against every clean clip."""
    from sklearn.metrics import roc_auc_score

    out = {}
    for kind in sorted(set(kinds.tolist())):
        sel = kinds == kind
        d = {"clips": int(sel.sum()), "mean_score": round(float(s[sel].mean()), 3),
             "kept_fraction": round(float(kp[sel].mean()), 3)}
        if kind != "clean":
            both = sel | (y == 1)
            d["roc_auc_vs_clean"] = round(float(roc_auc_score(y[both], s[both])), 3)
        out[kind] = d
    return out


def model_test_by_kind(index, labels: dict[str, str], rows: dict[str, dict], model_path: str) -> dict:
    """A trained model on its own held-out test videos (its metadata's split), per bad kind."""
    import numpy as np

    from genie_pipeline.filtering.quality import load_quality_model
    from genie_pipeline.filtering.quality.frames import sample_frames
    from genie_pipeline.filtering.quality.score import score_clips

    model, meta = load_quality_model(model_path, bf16="off")
    test = set(meta["split"]["test"])
    keys = [k for k in sorted(labels) if index[k].video_id in test]
    s = score_clips(model, [sample_frames(index.read(k), meta["model_params"]["frames_per_clip"]) for k in keys])
    y = np.array([labels[k] == "good" for k in keys], int)
    return per_kind(y, s, s >= meta["threshold"], np.array([rows[index[k].video_id]["made_how"] for k in keys]))


def measured_cost(on_cpu: float, counters: dict, off_cpu: float, bf16_used: bool, int8_used: bool) -> dict:
    """The scoring share of one score_only ingest (stage 3)."""
    scoring_cpu = (counters.get("quality_sample_cpu_ms", 0) + counters.get("quality_infer_cpu_ms", 0)) / 1000
    n_scored = counters.get("quality_clips_scored", 0)
    return {
        "method": "measured", "ingest_cpu_s": round(on_cpu, 2), "scoring_cpu_s": round(scoring_cpu, 2),
        "scoring_share": round(scoring_cpu / on_cpu, 4) if on_cpu else None, "goal_share": 0.25,
        "clips_scored": n_scored, "clips_per_scoring_cpu_s": round(n_scored / scoring_cpu, 1) if scoring_cpu else None,
        "sample_cpu_s": counters.get("quality_sample_cpu_ms", 0) / 1000,
        "infer_cpu_s": counters.get("quality_infer_cpu_ms", 0) / 1000,
        "ingest_off_cpu_s": round(off_cpu, 2),
        "share_by_difference": round((on_cpu - off_cpu) / on_cpu, 4) if on_cpu else None,
        "bf16_used": bf16_used, "int8_used": int8_used, "channels_last": True, "torch_threads": 1,
        "note": "scoring_share: the stage's own thread CPU counters over the whole run's process CPU (one "
                "process, one torch thread); share_by_difference compares with the run without scoring "
                "(noisier: two runs on a shared machine)",
    }


def cost_by_mode(sources: list[dict], work: Path, model: Path, int8: bool, bf16_used: bool, int8_used: bool) -> dict:
    """Stage 3b: the unscored ingest, then score_only, then filter, in this process one after
    another (fresh outputs), so that the differences see the same machine."""
    import pyarrow.parquet as pq

    quality = {"model": str(model), "torch_threads": 1, "int8": "auto" if int8 else "off"}
    print("3b. ingest without scoring, with score_only, with filter", file=sys.stderr, flush=True)
    off_cpu, _ = ingest(sources, work / "mode-off")
    out = {"ingest_off_cpu_s": round(off_cpu, 2)}
    for mode in ("score_only", "filter"):
        on_cpu, stats = ingest(sources, work / f"mode-{mode}", {**quality, "mode": mode})
        rows = pq.read_table(work / f"mode-{mode}" / "manifest", columns=["reason"]).to_pylist()
        out[mode] = {**measured_cost(on_cpu, stats["last_run"]["counters"], off_cpu, bf16_used, int8_used),
                     "clips": len(rows), "rejected_by_reason": {r: sum(x["reason"] == r for x in rows)
                                                                for r in sorted({x["reason"] for x in rows}) if r}}
        print(f"   {mode}: {json.dumps(out[mode])}", file=sys.stderr, flush=True)
    out["note"] = ("filter scores only the clips no earlier filter rejected (here the heuristics reject the "
                   "corpus's black, static, slideshow and montage clips); score_only scores every clip")
    return out


def held_out_summary(result: dict) -> dict:
    """Before (the old recipe: no pretraining) and after (the recipe that measured best) on
    whole held-out games, pooled and per bad kind."""
    cvs = {"no pretraining": result.get("cross_validation"),
           "SimCLR-pretrained trunk, fine-tuned": result.get("cross_validation_pretrained")}
    cvs = {k: v for k, v in cvs.items() if v}
    if "no pretraining" not in cvs:
        raise SystemExit("--merge: no cross_validation (stage cv) among the files")
    best = max(cvs, key=lambda k: cvs[k]["roc_auc_pooled"])
    before, after = cvs["no pretraining"], cvs[best]
    return {"before": {"recipe": "no pretraining", "roc_auc_pooled": round(before["roc_auc_pooled"], 4)},
            "after": {"recipe": best, "roc_auc_pooled": round(after["roc_auc_pooled"], 4)},
            "by_recipe": {k: round(v["roc_auc_pooled"], 4) for k, v in cvs.items()},
            "goal_roc_auc": GOAL_ROC_AUC, "meets_goal": after["roc_auc_pooled"] >= GOAL_ROC_AUC,
            "by_kind": {kind: {r: v["by_kind"].get(kind, {}).get("roc_auc_vs_clean") for r, v in cvs.items()}
                        for kind in sorted(before["by_kind"]) if kind != "clean"},
            "folds": before["folds"], "epochs": before["per_fold"][0]["epochs"]}


def _write(out: str, result: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="full", choices=["small", "full"])
    ap.add_argument("--seeds", default="0,1,2,3", help="corpus renderings (comma-separated seeds)")
    ap.add_argument("--quality-seeds", default="0,1", help="renderings of the 30-game quality corpus ('' for none)")
    ap.add_argument("--corpus-base", default=str(ROOT / ".cache" / "corpus-bench"),
                    help="where corpora are rendered / found (full-s{seed} or the small cache)")
    ap.add_argument("--group", choices=["render", "plan"], default="render",
                    help="what a held-out video is: one rendering, or every rendering of a catalog entry")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--patience", type=int, default=30, help="default: no early stop (the one-cycle schedule runs out; the best validation-loss epoch is kept)")
    ap.add_argument("--steps-per-epoch", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--folds", type=int, default=4, help="cross-validation folds (0: skip)")
    ap.add_argument("--cv-folds-only", default=None, help="cv and cvp train only these folds (e.g. 2,3: one process per core); "
                    "a later run on the same --work reuses every fold's model and pools them")
    ap.add_argument("--cv-group", choices=["game", "video"], default="game", help="what cross-validation holds out")
    ap.add_argument("--stages", default="train,cv,cost,variants",
                    help="comma-separated: train (2), cv (2b), cvp (2b fine-tuned from the pretrained trunk), "
                         "cost (3), variants (4), labels (5); train, cost and variants run together")
    ap.add_argument("--pretrain-steps", type=int, default=0, help="self-supervised steps for 5 and 2b (0: none)")
    ap.add_argument("--pretrain-batch", type=int, default=32)
    ap.add_argument("--pretrained", default=None,
                    help="the trunk stage cvp starts from (pretrain-quality's output; default: the one stage 5 wrote)")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="stages 3-4 score with the int8 trunk where the model's check allows (filters.quality.int8: "
                         "auto); a model without calibration frames gets them first (with_int8)")
    ap.add_argument("--model", default=None, help="a trained model for 3 and 4 (skips 2)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="only combine the results of runs of separate stages (later files win) into --out, with "
                         "the held-out-games summary; nothing is measured")
    ap.add_argument("--ingest-workers", type=int, default=1,
                    help="processes for step 1 (>1: faster, its CPU share in 3 no longer comparable)")
    ap.add_argument("--label-seeds", type=int, default=3, help="repetitions of the label-efficiency draws")
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quality.json"))
    args = ap.parse_args()
    if args.merge:
        result = {}
        for f in args.merge:
            result.update(json.loads(Path(f).read_text()))
        if "cross_validation" in result:
            result["held_out_games"] = held_out_summary(result)
        _write(args.out, result)
        print(json.dumps(result.get("held_out_games", {k: result[k] for k in result if k != "variants"}))[:2000])
        return 0

    import torch

    from genie_pipeline.corpus.reference import reference_labels
    from genie_pipeline.filtering.quality import QualityConfig, resolve_labels, train_quality
    from genie_pipeline.shards.reader import ClipIndex

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    qseeds = [int(s) for s in args.quality_seeds.split(",") if s.strip()]
    dirs = corpora(seeds, args.size, Path(args.corpus_base), qseeds)
    sources, ref, rows = catalogs(dirs, work, args.group)

    if (work / "off" / "stats.json").exists():  # --work of an earlier run: its ingest is reused
        print("1. ingest: reusing", work / "off", file=sys.stderr, flush=True)
        off_cpu = float((work / "off_cpu_s.txt").read_text())
    else:
        print("1. ingest, quality off", file=sys.stderr, flush=True)
        off_cpu, off_stats = ingest(sources, work / "off", workers=args.ingest_workers)
        (work / "off_cpu_s.txt").write_text(f"{off_cpu}\n")
        print(f"   {off_cpu:.0f} CPU-s", file=sys.stderr, flush=True)

    stages = set(args.stages.split(","))
    torch.set_num_threads(1)
    labels = resolve_labels(reference_labels(str(work / "off"), str(ref)))
    qcfg = QualityConfig(frames_per_clip=args.frames, epochs=args.epochs, patience=args.patience,
                         steps_per_epoch=args.steps_per_epoch, torch_threads=1)
    index = ClipIndex.open(work / "off")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "corpus": corpus_summary(index, labels, rows, args, seeds, qseeds)}
    le = None
    if "labels" in stages:
        from quality_labels import label_efficiency

        print("5. label efficiency", file=sys.stderr, flush=True)
        le = label_efficiency(index, labels, rows, work, pretrain_steps=args.pretrain_steps, folds=args.folds,
                              seeds=args.label_seeds, pretrain_batch_size=args.pretrain_batch)
        result["label_efficiency"] = le
        _write(args.out, result)
    if "cv" in stages and args.folds > 1:
        print(f"2b. {args.folds}-fold cross-validation by {args.cv_group}", file=sys.stderr, flush=True)
        only = {int(x) for x in args.cv_folds_only.split(",")} if args.cv_folds_only else None
        result["cross_validation"] = cross_validate(index, labels, args.folds, qcfg, work / "cv", rows, args.cv_group,
                                                    only)
        _write(args.out, result)
    if (le is not None or "cvp" in stages) and args.folds > 1:
        print("2b. again, fine-tuned from the pretrained trunk", file=sys.stderr, flush=True)
        pq = qcfg.model_copy(update={"weights": args.pretrained or str(work / "pretrained.pt")})
        only = {int(x) for x in args.cv_folds_only.split(",")} if args.cv_folds_only else None
        result["cross_validation_pretrained"] = cross_validate(index, labels, args.folds, pq, work / "cvp", rows,
                                                               args.cv_group, only)
        _write(args.out, result)
    if "testkinds" in stages and args.model:
        print("2c. the model's held-out test videos, per kind", file=sys.stderr, flush=True)
        result["held_out_test_by_kind"] = model_test_by_kind(index, labels, rows, args.model)
        _write(args.out, result)
    if not {"train", "cost", "costmodes", "variants"} & stages:
        print(json.dumps({k: v for k, v in result.items() if k != "machine"})[:4000])
        return 0

    from genie_pipeline.filtering.quality.model import read_metadata

    if args.model:
        model, meta = Path(args.model), read_metadata(args.model)
    else:
        print("2. train from reference labels", file=sys.stderr, flush=True)
        model = work / "model" / "model.pt"
        meta = train_quality(index, labels, model, qcfg, label_source=str(ref))
    cv = result.get("cross_validation")

    bf16_used = meta["bf16"].get("keeps_accuracy", False)
    if args.int8 and {"cost", "costmodes", "variants"} & stages:
        model = with_int8(index, labels, Path(model), work / "model_int8", qcfg.seed)
        meta = read_metadata(model)
    int8_used = bool(args.int8 and meta.get("int8", {}).get("keeps_accuracy"))
    if "costmodes" in stages:
        result["cost_by_mode"] = cost_by_mode(sources, work, model, args.int8, bf16_used, int8_used)
        _write(args.out, result)
        if not {"cost", "variants"} & stages:
            print(json.dumps(result["cost_by_mode"], indent=1))
            return 0
    if "cost" in stages:
        print("3. ingest with score_only", file=sys.stderr, flush=True)
        on_cpu, on_stats = ingest(sources, work / "scored",
                                  {"mode": "score_only", "model": str(model), "torch_threads": 1,
                                   "int8": "auto" if args.int8 else "off"})
        print("4. variants", file=sys.stderr, flush=True)
        var = variants(str(model), work / "scored")
        cost = measured_cost(on_cpu, on_stats["last_run"]["counters"], off_cpu, bf16_used, int8_used)
    else:  # variants alone: the scoring share estimated from them and the unscored ingest's CPU
        print("4. variants", file=sys.stderr, flush=True)
        var = variants(str(model), work / "off")
        row = next(v for v in var if v["frames"] == args.frames and v["bf16"] == bf16_used
                   and v["layout"] == ("channels_last int8" if int8_used else "channels_last"))
        scoring_cpu = len(index.clips) * (row["sample_ms"] + row["infer_ms"]) / 1000
        cost = {"method": "estimate: clips x the variant's CPU per clip, over the unscored ingest's CPU plus that",
                "ingest_off_cpu_s": round(off_cpu, 2), "clips": len(index.clips),
                "scoring_cpu_s": round(scoring_cpu, 2), "scoring_share": round(scoring_cpu / (off_cpu + scoring_cpu), 4),
                "goal_share": 0.25, "clips_per_scoring_cpu_s": row["clips_per_cpu_s"], "bf16_used": bf16_used,
                "channels_last": True, "torch_threads": 1}

    test, val = meta["metrics"].get("test", {}), meta["metrics"]["val"]
    result["corpus"]["split_videos"] = {k: len(v) for k, v in meta["split"].items()}
    result.update({
        "accuracy": {
            "held_out_test": {k: test.get(k) for k in ("n", "n_good", "n_bad", "roc_auc", "average_precision",
                                                        "precision", "recall", "kept_fraction")},
            "validation": {k: val.get(k) for k in ("n", "roc_auc", "precision", "recall")},
            "model": str(model), "goal_roc_auc": GOAL_ROC_AUC,
            "meets_goal": bool(test.get("roc_auc") is not None and test["roc_auc"] >= GOAL_ROC_AUC),
            "threshold": meta["threshold"], "target_precision": meta["target_precision"],
            "target_met_on_validation": meta["target_met"], "frames_per_clip": args.frames,
            "pooling": meta["pooling"], "pooling_roc_auc": meta["metrics"]["pooling_roc_auc"],
            "bf16": meta["bf16"], "training_seconds": meta["training"]["seconds"],
            "epochs_run": meta["training"]["epochs_run"],
        },
        "cost": cost,
        "variants": var,
    })
    _write(args.out, result)
    a, c = result["accuracy"]["held_out_test"], result["cost"]
    print(json.dumps({"held_out_roc_auc": a["roc_auc"], "precision": a["precision"], "recall": a["recall"],
                      "cv_roc_auc": cv and cv["roc_auc_pooled"],
                      "scoring_share": c["scoring_share"], "clips_per_scoring_cpu_s": c["clips_per_scoring_cpu_s"]}))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
