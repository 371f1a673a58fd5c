"""Issue 20's proof: what the ingest keeps of footage whose picture jumps, before and after
clips on the 16 s grid, and whether any training window spans a cut.

    python benchmarks/cuts.py [--corpus DIR] [--demo OUT] [--out benchmarks/results/cuts.json] [--quality-only]

The sample corpus's footage with jumps (`CUT_FOOTAGE` in genie_pipeline/corpus/generate.py,
its expected outcome written before the thresholds were set) goes through the real ingest
(`run_ingest`, Beam FnApiRunner) twice: with `clips.split_at_cuts: true` (the old default:
clips inside shots) and with the default (clips on the 16 s grid, cuts recorded). Per video:
clips on the 16 s grid, clips kept by each, the cut frames recorded, and the windows the
training loader can draw from the shards that span a recorded cut. A window of `frames`
frames starting at s spans a cut c when s < c < s + frames; every start the loader can draw
(`WindowDataset.window_starts`, uniform over the starts that `shot_spans` allows) is counted,
against the cut frames of the manifest table (written apart from the sample JSON the loader
reads), and the draws are checked to lie among those starts.

`--demo OUT`: the same count over every clip of an existing `make demo` ingest output
(`out/demo/ingest`); without it, the demo's ingest (sample corpus served on 127.0.0.1 and
searched through yt-dlp, the demo's config) is run on the corpus here.

`quality_corpus_montages`: the quality corpus's slideshow, rapid-cut and fade videos
(`--size quality`, seed 0; 14 of each) through the same two ingests: what the shot cutter
dropped before and what the heuristics reject on the grid (`--quality-only` adds just this to
an existing result).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

FRAMES = 16  # a training window (train.frames)


def loader_windows(out: str, frames: int = FRAMES) -> dict:
    """Every window start the training loader can draw from the live shards of ingest output
    `out` (train and val), and how many of those windows span a cut of the manifest's
    `cut_frames`; per clip key too."""
    from genie_pipeline.shards.reader import iter_tar_clips, live_shards, read_rows
    from genie_pipeline.training.loader import WindowDataset, shot_spans

    cuts = {r["key"]: list(r["cut_frames"] or []) for r in read_rows(out, "manifest", columns=["key", "cut_frames"])}
    shards = [p for split in ("train", "val") for p in live_shards(os.path.join(out, "shards"), split)]
    ds = WindowDataset(shards, batch_size=1, frames=frames, windows_per_clip=2000, decoder="pyav")
    stats: dict = defaultdict(int)
    per_clip, total, spanning, clips, without, with_cuts, n_cuts, disagree = {}, 0, 0, 0, 0, 0, 0, 0
    for path in shards:
        for clip in iter_tar_clips(path, stats):
            n = int(clip.meta["n_frames"])
            starts = {s for a, b in shot_spans(clip.meta, n, frames) for s in range(a, b - frames + 1)}
            drawn = set(ds.window_starts(clip, epoch=0))
            if not drawn <= starts:
                raise SystemExit(f"{clip.key}: the loader drew starts {sorted(drawn - starts)} outside its spans")
            bad = sum(any(s < c < s + frames for c in cuts[clip.key]) for s in starts)
            per_clip[clip.key] = {"window_starts": len(starts), "spanning_a_cut": bad}
            clips += 1
            without += not starts
            with_cuts += bool(cuts[clip.key])
            n_cuts += len(cuts[clip.key])
            disagree += sorted(clip.meta.get("cut_frames") or []) != sorted(cuts[clip.key])
            total += len(starts)
            spanning += bad
    if stats["bad_shards"] or stats["bad_samples"]:
        raise SystemExit(f"unreadable shards or samples in {out}: {dict(stats)}")
    return {"shards": len(shards), "clips": clips, "clips_with_cuts": with_cuts, "cut_frames": n_cuts,
            "clips_whose_json_and_manifest_cuts_differ": disagree, "clips_without_a_window": without,
            "window_starts": total, "windows_spanning_a_cut": spanning, "per_clip": per_clip}


def ingest(catalog: Path, out: Path, split_at_cuts: bool) -> None:
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import run_ingest

    run_ingest(parse_config({"sources": [{"type": "catalog", "name": "cuts", "path": str(catalog), "keywords": "none"}],
                             "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                             "clips": {"split_at_cuts": split_at_cuts}, "output": {"dir": str(out)}}))


def per_video(out: Path) -> dict[str, dict]:
    """{video_id: clips, kept, reasons, cut_frames per clip, failure} of an ingest output."""
    from genie_pipeline.shards.reader import read_rows

    got: dict[str, dict] = defaultdict(lambda: {"clips": 0, "kept": 0, "reasons": [], "cut_frames": [], "keys": [],
                                                "failure": None})
    for r in sorted(read_rows(str(out), "manifest"), key=lambda r: r["start_s"]):
        v = got[r["video_id"]]
        v["clips"] += 1
        v["keys"].append(r["key"])
        v["kept"] += bool(r["kept"])
        v["reasons"].append(r["reason"] or "")
        v["cut_frames"].append(list(r["cut_frames"] or []))
    for f in read_rows(str(out), "failures"):
        got[f["video_id"]]["failure"] = f["error_type"]
    return dict(got)


def quality_montages(work: Path) -> dict:
    """The quality corpus's slideshow, rapid-cut and fade videos (seed 0, rendered one by one
    as the corpus renders them) through the ingest split at cuts and on the grid: clips, kept,
    reasons, failures."""
    from collections import Counter

    from genie_pipeline.corpus.generate import _render_one, seeded_plan
    from genie_pipeline.corpus.render import renderers_available

    specs = [s for s in seeded_plan("quality", 0, renderers_available()["procgen"])
             if s["made_how"] in QUALITY_MONTAGES]
    (work / "videos").mkdir(parents=True, exist_ok=True)
    for s in specs:
        _render_one(s, str(work))
    cat = work / "catalog.jsonl"
    cat.write_text("".join(json.dumps({"id": s["id"], "path": str(work / s["file"]), "title": s["title"]}) + "\n"
                           for s in specs))
    ingest(cat, work / "before", split_at_cuts=True)
    ingest(cat, work / "after", split_at_cuts=False)
    out = {}
    for name in ("before", "after"):
        got = per_video(work / name)
        for how in QUALITY_MONTAGES:
            vs = [got.get(s["id"], {}) for s in specs if s["made_how"] == how]
            out.setdefault(how, {})[name] = {
                "videos": len(vs), "videos_failed": Counter(v["failure"] for v in vs if v.get("failure")),
                "clips": sum(v.get("clips", 0) for v in vs), "kept": sum(v.get("kept", 0) for v in vs),
                "reasons": Counter(r for v in vs for r in v.get("reasons", []) if r),
                "cuts_of_kept_clips": sorted(len(c) for v in vs for c, r in zip(v.get("cut_frames", []),
                                                                                  v.get("reasons", [])) if not r)}
    return out


QUALITY_MONTAGES = ("slideshow", "rapid_cuts", "fade")


def demo_ingest(corpus: Path, dest: Path) -> str:
    """The demo's ingest step (genie_pipeline.demo) on `corpus`, into dest/ingest."""
    from genie_pipeline import demo

    cfg = demo.demo_config(str(ROOT / "pipeline.yaml"), dest, corpus)
    if demo._ingest(cfg, corpus):
        raise SystemExit("the demo's ingest output failed verify")
    return cfg.output.dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", help="an existing full sample corpus (default: render one)")
    ap.add_argument("--demo", help="an existing `make demo` ingest output (default: run the demo's ingest)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cuts.json"))
    ap.add_argument("--quality-only", action="store_true",
                    help="only the quality corpus's montage-like videos, added to an existing --out")
    args = ap.parse_args()
    if args.quality_only:
        result = json.loads(Path(args.out).read_text())
        result["quality_corpus_montages"] = quality_montages(Path(tempfile.mkdtemp(prefix="bench-cuts-q-")))
        print(json.dumps(result["quality_corpus_montages"], indent=2))
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0

    from genie_pipeline.corpus.generate import CUT_FOOTAGE, generate_corpus

    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="bench-cuts-"))
    corpus = Path(args.corpus).resolve() if args.corpus else work / "corpus"
    if not (corpus / "catalog.jsonl").exists():
        generate_corpus(corpus, seed=0, size="full")
    rows = [json.loads(x) for x in (corpus / "catalog.jsonl").read_text().splitlines() if x.strip()]
    jumpy = [r for r in rows if r.get("made_how") in CUT_FOOTAGE]
    cat = work / "cuts.jsonl"
    cat.write_text("".join(json.dumps({"id": r["id"], "path": str(corpus / r["file"]), "title": r["title"]}) + "\n"
                           for r in jumpy))
    ingest(cat, work / "before", split_at_cuts=True)
    ingest(cat, work / "after", split_at_cuts=False)
    before, after = per_video(work / "before"), per_video(work / "after")
    windows = loader_windows(str(work / "after"))

    table = []
    for r in jumpy:
        b, a = before.get(r["id"], {}), after[r["id"]]
        grid, kept, reason = CUT_FOOTAGE[r["made_how"]]
        keys = [k for k in a["keys"] if k in windows["per_clip"]]  # the kept ones: in the shards
        table.append({
            "video": r["id"], "made_how": r["made_how"], "title": r["title"], "seconds": r.get("duration"),
            "clips_on_16s_grid": a["clips"], "kept_before": b.get("kept", 0), "failure_before": b.get("failure"),
            "kept_after": a["kept"], "reasons_after": a["reasons"], "cut_frames": a["cut_frames"],
            "loader_window_starts": sum(windows["per_clip"][k]["window_starts"] for k in keys),
            "loader_windows_spanning_a_cut": sum(windows["per_clip"][k]["spanning_a_cut"] for k in keys),
            "expected": {"clips_on_16s_grid": grid, "kept": kept, "reason": reason},
            "as_expected": (a["clips"], a["kept"], {x for x in a["reasons"] if x}) == (grid, kept, {reason} - {None}),
        })
    montage = [{"video": t["video"], "clip": i, "reason": t["reasons_after"][i], "cuts": len(t["cut_frames"][i])}
               for t in table if t["made_how"] == "montage" for i in range(t["clips_on_16s_grid"])]
    for t in table:
        print(f"{t['video']} {t['made_how']:13s} grid {t['clips_on_16s_grid']} before {t['kept_before']} "
              f"after {t['kept_after']} cuts {t['cut_frames']} spanning {t['loader_windows_spanning_a_cut']}",
              file=sys.stderr)

    demo_out = args.demo or demo_ingest(corpus, work / "demo")
    demo_windows = loader_windows(demo_out)
    result = {
        "videos": table,
        "montage_clips": montage,
        "montage_clips_rejected": sum(m["reason"] != "" for m in montage),
        "fixtures_loader": {k: v for k, v in windows.items() if k != "per_clip"},
        "demo": {"output": "given" if args.demo else "the demo's ingest run here (sample corpus, seed 0)",
                 **{k: v for k, v in demo_windows.items() if k != "per_clip"}},
        "quality_corpus_montages": quality_montages(work / "quality"),
        "window_frames": FRAMES,
        "wall_s": round(time.time() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "videos"}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
