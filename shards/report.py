"""`OUT/report.html`: what an ingest output holds, on one page a person reads top to bottom.

    summary · hours in and out per source and channel · keep/reject reasons · score histograms
    with their thresholds · clips per video and per game/query · duplicates · failures by type
    · contact sheets of kept and rejected clips per reason

The page is self-contained: its style is inline, every picture is a PNG in a `data:` URI, and
it has no script, so opening it makes no request. Every string that comes from data (titles,
channels, reasons, messages) is HTML-escaped. Tables are read with `shards.reader` (the one
reader of OUT/); contact-sheet frames come from the clip store, else the shards, through
`ClipIndex` (a local output only). Thresholds come from the caller, who owns the config.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

import numpy as np

from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipFormatError, decode_clip
from genie_pipeline.shards.records import redact
from genie_pipeline.shards.reader import ClipIndex, DataError, has_table, read_rows, read_stats

REPORT = "report.html"
SCORES = ("motion", "dark_fraction", "unique_fraction", "cuts_per_min", "quality_score")
UNKNOWN = "(unknown)"


@dataclass(frozen=True)
class Threshold:
    """A score's threshold: `name` is its config key; clips `keep` "above" or "below" it."""

    value: float
    name: str
    keep: str  # above | below

    def rejects(self, x: float) -> bool:
        return x < self.value if self.keep == "above" else x > self.value


@dataclass
class Output:
    """The tables of one output, and each video's channel and game/query."""

    out: str
    stats: dict
    manifest: list[dict]
    videos: list[dict]
    failures: list[dict]
    candidates: list[dict]
    channel: dict[str, str]  # video_key -> channel (manifest provenance, else discovery's extra)
    game: dict[str, str]  # video_key -> game or search query


def write_report(out: str, thresholds: dict[str, Threshold] | None = None, sheet_clips: int = 3,
                 sheet_frames: int = 5) -> str:
    """Write OUT/report.html and return its path. `thresholds` maps a score column (SCORES) to
    the threshold drawn on its histogram; contact sheets show up to `sheet_clips` clips per
    reason, `sheet_frames` frames each. Raises DataError when OUT is not an ingest output."""
    data = load_output(out)
    sections = [_summary(data), _hours(data), _reasons(data), _scores(data, thresholds or {}),
                _clip_counts(data), _duplicates(data), _failures(data), _sheets(data, sheet_clips, sheet_frames)]
    path = fs.join(out, REPORT)
    fs.write_bytes(path, _page(out, sections).encode())
    return path


# the report's own process: its parent exits at once, so it outlives the ingest that started
# it and is nobody's child there (its CPU is not the ingest's, and nothing must reap it)
_DETACH = "import subprocess, sys; subprocess.Popen(sys.argv[1:], start_new_session=True)"


def write_report_detached(out: str, thresholds: dict[str, Threshold], log: str) -> None:
    """Draw OUT/report.html (a local output) in a process of its own, off the caller's path:
    it returns once that process is started; what it prints, an error included, goes to the
    file `log`. The page appears whole when drawn (`fs.write_bytes`); until then an earlier
    one stays. The process imports this code from the caller's `sys.path`."""
    spec = json.dumps({k: asdict(t) for k, t in thresholds.items()})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with open(log, "ab") as f:
        subprocess.run([sys.executable, "-c", _DETACH, sys.executable, "-m", "genie_pipeline.shards.report", out, spec],
                       stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env, check=True)


def load_output(out: str) -> Output:
    if not (fs.exists(fs.join(out, "stats.json")) or has_table(out, "manifest")):
        raise DataError(f"{out} is not an ingest output (no stats.json or manifest table)")
    data = Output(out=out, stats=read_stats(out), manifest=read_rows(out, "manifest"), videos=read_rows(out, "videos"),
                  failures=read_rows(out, "failures"), candidates=read_rows(out, "candidates"), channel={}, game={})
    for c in data.candidates:
        try:
            extra = json.loads(c.get("extra") or "{}")
        except (TypeError, ValueError):
            extra = {}
        extra = extra if isinstance(extra, dict) else {}
        data.channel[c["video_key"]] = str(extra.get("channel") or extra.get("uploader") or "") or UNKNOWN
        data.game[c["video_key"]] = str(extra.get("game") or extra.get("query") or "") or UNKNOWN
    for r in data.manifest:  # what the download found wins over what discovery guessed
        if r.get("channel") or r.get("uploader"):
            data.channel[r["video_key"]] = r.get("channel") or r.get("uploader")
        if r.get("query"):
            data.game[r["video_key"]] = r["query"]
    return data


# ------------------------------------------------------------------------------ sections
def _summary(d: Output) -> str:
    s, m = d.stats, d.manifest
    kept = [r for r in m if r["kept"]]
    rows = [("candidates", len(d.candidates)),
            ("kept by keywords", sum(c["keyword_verdict"] == "keep" for c in d.candidates)),
            ("videos done", sum(v["status"] == "done" for v in d.videos)),
            ("videos failed", sum(v["status"] == "failed" for v in d.videos)),
            ("clips cut", len(m)), ("clips kept", len(kept)),
            ("clips kept, train", sum(r["split"] == "train" for r in kept)),
            ("clips kept, val", sum(r["split"] == "val" for r in kept)),
            ("time in", _hms(sum(v["seconds_in"] or 0 for v in d.videos))),
            ("time kept", _hms(sum(r["duration_s"] for r in kept)))]
    run = s.get("last_run") or {}
    if run:
        rows.append(("last run", f"{run.get('run_id', '')}: {run.get('wall_s', 0)} s wall, {run.get('cpu_s', 0)} s CPU"))
    note = "" if m else "<p class=note>This output holds no clips.</p>"
    return _section("summary", "Summary", note + _table(("", "value"), rows))


def _hours(d: Output) -> str:
    by_source = _per_video_groups(d, lambda v: v["source"])
    by_channel = _per_video_groups(d, lambda v: d.channel.get(v["video_key"], UNKNOWN))
    head = ("videos", "done", "failed", "time in", "time cut", "time kept", "clips", "kept")
    return _section("hours", "Hours in and out",
                    "<p>Time in: the videos' length; cut: the clips cut from them; kept: the clips kept.</p>"
                    "<h3>Per source</h3>" + _table(("source",) + head, by_source)
                    + "<h3>Per channel</h3>" + _table(("channel",) + head, by_channel))


def _per_video_groups(d: Output, key: Callable[[dict], str]) -> list[tuple]:
    clips = _by(d.manifest, "video_key")
    groups: dict[str, list[dict]] = defaultdict(list)
    for v in d.videos:
        groups[key(v)].append(v)
    rows = []
    for name, vs in sorted(groups.items(), key=lambda kv: -sum(v["seconds_in"] or 0 for v in kv[1])):
        cs = [c for v in vs for c in clips.get(v["video_key"], [])]
        rows.append((name, len(vs), sum(v["status"] == "done" for v in vs), sum(v["status"] == "failed" for v in vs),
                     _hms(sum(v["seconds_in"] or 0 for v in vs)), _hms(sum(v["seconds_out"] or 0 for v in vs)),
                     _hms(sum(c["duration_s"] for c in cs if c["kept"])), len(cs), sum(c["kept"] for c in cs)))
    return rows


def _reasons(d: Output) -> str:
    kw = Counter((c["keyword_verdict"], c["keyword_reason"] or "-") for c in d.candidates)
    clips = Counter("kept" if r["kept"] else (r["reason"] or "(no reason)") for r in d.manifest)
    n = len(d.manifest)
    body = ("<h3>Videos, by keywords</h3>"
            + _table(("verdict", "reason", "candidates"), [(v, r, k) for (v, r), k in sorted(kw.items())])
            + "<h3>Clips</h3>"
            + _table(("verdict", "clips", "share"), [(r, k, f"{100 * k / n:.1f}%") for r, k in clips.most_common()]))
    return _section("reasons", "Keep and reject reasons", body)


def _scores(d: Output, thresholds: dict[str, Threshold]) -> str:
    parts = []
    for col in SCORES:
        rows = [r for r in d.manifest if r.get(col) is not None]
        if not rows:
            continue
        t = thresholds.get(col)
        kept = [r[col] for r in rows if r["kept"]]
        rejected = [r[col] for r in rows if not r["kept"]]
        png = _histogram(col, kept, rejected, t)
        xs = np.array([r[col] for r in rows], dtype=float)
        stats = [("clips scored", len(rows)), ("min / median / max", f"{xs.min():.3g} / {np.median(xs):.3g} / {xs.max():.3g}")]
        if t is not None:
            stats += [("threshold", f"{t.name} = {t.value:g} (keep {t.keep})"),
                      ("clips on the reject side", sum(t.rejects(x) for x in xs))]
        parts.append(f"<div class=score id=score-{col}><h3>{_e(col)}</h3>"
                     f"{_img(png, f'histogram of {col}')}{_table(('', col), stats)}</div>")
    body = "".join(parts) or "<p class=note>No scored clips.</p>"
    return _section("scores", "Scores", "<p>Kept clips in blue, rejected in orange; the dashed line is "
                                        "the threshold.</p>" + body)


def _clip_counts(d: Output) -> str:
    rows = sorted(_by(d.manifest, "video_key").items(), key=lambda kv: (-len(kv[1]), kv[0]))
    counts = [len(cs) for _, cs in rows]
    top = [(cs[0]["title"], k, len(cs), sum(c["kept"] for c in cs)) for k, cs in rows[:15]]
    games = defaultdict(list)
    for r in d.manifest:
        games[d.game.get(r["video_key"], UNKNOWN)].append(r)
    per_game = [(g, len({c["video_key"] for c in cs}), len(cs), sum(c["kept"] for c in cs),
                 _hms(sum(c["duration_s"] for c in cs if c["kept"])))
                for g, cs in sorted(games.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    body = "<p class=note>No clips.</p>" if not counts else (
        _img(_bars(Counter(counts), "clips per video", "videos"), "clips per video")
        + "<h3>Videos with the most clips</h3>" + _table(("title", "video", "clips", "kept"), top)
        + "<h3>Per game or query</h3>" + _table(("game / query", "videos", "clips", "kept", "time kept"), per_game))
    return _section("clips", "Clips per video and per game", body)


def _duplicates(d: Output) -> str:
    dups = [r for r in d.manifest if r.get("duplicate_of")]
    fingerprinted = sum(bool(r.get("fingerprint")) for r in d.manifest)
    if not dups:
        return _section("duplicates", "Duplicates", f"<p class=note>No clip is marked as a duplicate "
                                                    f"({fingerprinted} of {len(d.manifest)} clips have a fingerprint).</p>")
    titles = {r["key"]: r["title"] for r in d.manifest}
    groups = Counter(r["duplicate_of"] for r in dups)
    rows = [(k, titles.get(k, ""), n) for k, n in groups.most_common(20)]
    return _section("duplicates", "Duplicates",
                    f"<p>{len(dups)} clips duplicate {len(groups)} kept representatives.</p>"
                    + _table(("representative", "title", "duplicates"), rows))


def _failures(d: Output) -> str:
    if not d.failures:
        return _section("failures", "Failures", "<p class=note>No failures.</p>")
    types = _by(d.failures, lambda f: f"{f['stage']}:{f['error_type']}")
    rows = []
    for t, fs_ in sorted(types.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        top = Counter(f["message"][:300] for f in fs_).most_common(3)
        rows.append((t, len(fs_), "\n".join(f"{n}× {m}" for m, n in top)))
    return _section("failures", "Failures by type", _table(("stage:type", "videos", "top messages"), rows))


# ------------------------------------------------------------------------ contact sheets
def _sheets(d: Output, n_clips: int, n_frames: int) -> str:
    if not d.manifest:
        return _section("sheets", "Contact sheets", "<p class=note>No clips to show.</p>")
    if fs.is_remote(d.out):
        return _section("sheets", "Contact sheets", "<p class=note>Contact sheets are drawn for local outputs "
                                                    "only (run the report on a copy).</p>")
    try:
        index = ClipIndex.open(d.out)
    except DataError as e:
        return _section("sheets", "Contact sheets", f"<p class=note>{_e(str(e))}</p>")
    groups = _by(d.manifest, lambda r: "kept" if r["kept"] else (r["reason"] or "(no reason)"))
    parts = []
    for name in sorted(groups, key=lambda g: (g != "kept", g)):
        strips = [_strip(index, r, n_frames) for r in _sample(groups[name], n_clips, index.readable)]
        shown = "".join(strips) or "<p class=note>None of these clips is still stored (the clip store holds " \
                                   "rejected clips; set shards.keep_clip_store to keep it).</p>"
        parts.append(f"<div class=sheet id=\"sheet-{_e(name)}\"><h3>{_e(name)} ({len(groups[name])} clips)</h3>{shown}</div>")
    return _section("sheets", "Contact sheets", "<p>A few clips per verdict, frames evenly spaced.</p>" + "".join(parts))


def _sample(rows: list[dict], n: int, readable: Callable[[str], bool], tries: int = 4) -> list[dict]:
    """Up to n readable rows, from different videos where there are, spread evenly over the
    sorted keys. At most n * tries rows are probed: a large output opens a few tars, not all."""
    firsts: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["key"]):
        firsts.setdefault(r["video_key"], r)
    pool = list(firsts.values()) if len(firsts) >= n else sorted(rows, key=lambda r: r["key"])
    return _even([r for r in _even(pool, n * tries) if readable(r["key"])], n)


def _even(seq: list, n: int) -> list:
    """n items of seq, evenly spaced, first and last included (all of it if it is short)."""
    if len(seq) <= n:
        return list(seq)
    return [seq[i] for i in np.linspace(0, len(seq) - 1, n).round().astype(int)]


def _strip(index: ClipIndex, r: dict, n_frames: int) -> str:
    try:
        frames = decode_clip(index.read(r["key"]))
    except (ClipFormatError, DataError, OSError) as e:
        return f"<p class=note>{_e(r['key'])}: {_e(str(e))}</p>"
    picks = np.linspace(0, len(frames) - 1, n_frames).round().astype(int)
    gap = np.full((frames.shape[1], 2, 3), 255, np.uint8)
    row = np.concatenate([x for i in picks for x in (frames[i], gap)][:-1], axis=1)
    caption = f"{r['title']} · {r['key']} · {r['start_s']:g} s"
    return f"<figure>{_img(_png(row), caption)}<figcaption>{_e(caption)}</figcaption></figure>"


# -------------------------------------------------------------------------- pictures
def _figure():
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(5, 2.4), dpi=100)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.95)
    return fig


def _histogram(col: str, kept: list[float], rejected: list[float], t: Threshold | None) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    xs = np.array(kept + rejected, dtype=float)
    lo, hi = float(xs.min()), float(xs.max())
    if t is not None:
        lo, hi = min(lo, t.value), max(hi, t.value)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    # stacked: rejected on top of kept (stairs draw two patches where bars would draw sixty)
    n_kept, _ = np.histogram(kept, bins)
    n_all = n_kept + np.histogram(rejected, bins)[0]
    ax.stairs(n_all, bins, baseline=n_kept, fill=True, color="#e8863a", label="rejected")
    ax.stairs(n_kept, bins, fill=True, color="#3b7dd8", label="kept")
    if t is not None:
        ax.axvline(t.value, color="#222", linestyle="--", linewidth=1.2, label=f"{t.name} = {t.value:g}")
    ax.set_xlabel(col)
    ax.set_ylabel("clips")
    ax.legend(fontsize=7, loc="best")
    return _save(fig)


def _bars(counts: Counter, xlabel: str, ylabel: str) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    xs = sorted(counts)
    ax.bar(xs, [counts[x] for x in xs], width=0.8, color="#3b7dd8")
    ax.set_xticks(xs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return _save(fig)


def _save(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _png(rgb: np.ndarray) -> bytes:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------------------- HTML
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .6em;text-align:left;
vertical-align:top;white-space:pre-wrap}th{background:#f3f3f3}td.n{text-align:right}
.note{color:#666;font-style:italic}figure{margin:.4em 0}figcaption{font-size:12px;color:#555}
img{image-rendering:pixelated;max-width:100%}.score{display:inline-block;vertical-align:top;width:500px;margin-right:1em}
"""


def _page(out: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta http-equiv=Content-Security-Policy content=\"default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'\">"
            f"<title>ingest report: {_e(out)}</title><style>{_CSS}</style></head><body>"
            f"<h1>Ingest report</h1><p>{_e(out)} · written {time.strftime('%Y-%m-%d %H:%M:%S')}</p>"
            + "".join(sections) + "</body></html>\n")


def _section(id_: str, title: str, body: str) -> str:
    return f"<section id={id_}><h2>{_e(title)}</h2>{body}</section>"


def _table(head: Iterable[str], rows: Iterable[tuple]) -> str:
    rows = list(rows)
    if not rows:
        return "<p class=note>None.</p>"
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(x) for x in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _cell(x: Any) -> str:
    return f"<td class=n>{x}</td>" if isinstance(x, (int, float)) else f"<td>{_e(str(x))}</td>"


def _img(png: bytes, alt: str) -> str:
    return f"<img alt=\"{_e(alt)}\" src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">"


def _e(s: str) -> str:
    """Text from data as HTML: credentials redacted (an output written before redaction at the
    rows still shows none), escaped."""
    return html.escape(redact(s), quote=True)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _by(rows: list[dict], key: str | Callable[[dict], str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        out[r[key] if isinstance(key, str) else key(r)].append(r)
    return dict(out)


if __name__ == "__main__":  # write_report_detached's process: OUT and the thresholds as JSON
    print(f"wrote {write_report(sys.argv[1], {k: Threshold(**v) for k, v in json.loads(sys.argv[2]).items()})}")
