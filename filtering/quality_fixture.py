"""A synthetic ingest output for tests and benchmarks of the quality loop.

`make_fixture(out_dir)` writes what an ingest run writes, in the contract's formats: a clip
store tar per video (`clips/{video_key}.tar`: every clip's `{key}.mp4` + `_video.json`),
WebDataset shards of the kept clips, `manifest.parquet`, and a `catalog.jsonl` with a
per-video `quality_label` like the sample corpus's. Clips are real h264 mp4s (160x90, 10 FPS,
160 frames, keyframe every 16) encoded with the pipeline's own encoder.

"good" videos are game-like: scrolling tiled levels with moving sprites, starfields with
ships. "bad" videos are what the classifier must learn to reject: static title cards,
near-black footage, slideshows of smooth pictures, webcam-like talking heads.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np

H, W, T = 90, 160, 160
GOOD_KINDS = ("platformer", "shooter")
BAD_KINDS = ("static", "black", "slideshow", "webcam")


def _palette(rng, n):
    return rng.integers(30, 256, (n, 3)).astype(np.uint8)


def _platformer(rng, t_frames):
    tile = 10
    cols = W * 3 // tile
    pal = _palette(rng, 6)
    sky = rng.integers(60, 200, 3).astype(np.uint8)
    level_h = rng.integers(3, 7, cols)
    world = np.empty((H, cols * tile, 3), np.uint8)
    world[:] = sky
    for cx in range(cols):
        h = level_h[cx] * tile
        col = pal[(cx // 3) % len(pal)]
        world[H - h:, cx * tile:(cx + 1) * tile] = col
        world[H - h:H - h + 2, cx * tile:(cx + 1) * tile] = 255 - col  # tile edges
        if rng.random() < 0.2:  # floating blocks
            y = rng.integers(15, 45)
            world[y:y + tile, cx * tile:(cx + 1) * tile] = pal[rng.integers(len(pal))]
    speed = rng.uniform(1.0, 3.0)
    sprites = [(rng.uniform(0, W), rng.uniform(20, 60), rng.uniform(-2, 2), _palette(rng, 1)[0]) for _ in range(4)]
    frames = np.empty((t_frames, H, W, 3), np.uint8)
    for t in range(t_frames):
        x0 = int(t * speed) % (world.shape[1] - W)
        f = world[:, x0:x0 + W].copy()
        for i, (sx, sy, vx, c) in enumerate(sprites):
            x = int(sx + vx * t) % (W - 8)
            y = int(sy + 12 * np.sin(t / 5 + i))
            f[y:y + 8, x:x + 8] = c
            f[y + 2:y + 4, x + 2:x + 4] = 0  # eye
        frames[t] = f
    return frames


def _shooter(rng, t_frames):
    stars = rng.integers(0, [H * 4, W], (120, 2))
    pal = _palette(rng, 4)
    base = np.zeros((H, W, 3), np.uint8)
    base[:] = rng.integers(0, 40, 3).astype(np.uint8)
    frames = np.empty((t_frames, H, W, 3), np.uint8)
    ships = [(rng.uniform(10, W - 20), rng.uniform(0, H), rng.uniform(-1.5, 1.5), pal[i % 4]) for i in range(5)]
    for t in range(t_frames):
        f = base.copy()
        ys = (stars[:, 0] + 2 * t) % (H * 4) // 4
        f[ys, stars[:, 1]] = 255
        for i, (sx, sy, vx, c) in enumerate(ships):
            x = int(sx + vx * t) % (W - 12)
            y = int(sy + 1.5 * t) % (H - 10)
            f[y:y + 10, x + 4:x + 8] = c
            f[y + 6:y + 10, x:x + 12] = c
        f[H - 12:H - 4, int(W / 2 + 40 * np.sin(t / 9)) - 6:int(W / 2 + 40 * np.sin(t / 9)) + 6] = (250, 250, 60)
        frames[t] = f
    return frames


def _smooth_picture(rng):
    small = rng.integers(0, 256, (3, 5, 3)).astype(np.float32)
    yy = np.linspace(0, 2, H)[:, None]
    xx = np.linspace(0, 4, W)[None, :]
    y0, x0 = np.floor(yy).astype(int).clip(0, 1), np.floor(xx).astype(int).clip(0, 3)
    fy, fx = (yy - y0)[..., None], (xx - x0)[..., None]
    img = (small[y0, x0] * (1 - fy) * (1 - fx) + small[y0 + 1, x0] * fy * (1 - fx)
           + small[y0, x0 + 1] * (1 - fy) * fx + small[y0 + 1, x0 + 1] * fy * fx)
    return img.clip(0, 255).astype(np.uint8)


def _static(rng, t_frames):
    f = np.empty((H, W, 3), np.uint8)
    f[:] = rng.integers(0, 256, 3).astype(np.uint8)
    for i in range(rng.integers(2, 5)):  # lines of "text"
        y = 15 + i * 15
        f[y:y + 5, 20:20 + rng.integers(40, 120)] = 255 - f[0, 0]
    noise = rng.integers(-2, 3, (t_frames, 1, 1, 1))
    return np.clip(f[None].astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _black(rng, t_frames):
    level = rng.integers(0, 12)
    frames = np.full((t_frames, H, W, 3), level, np.uint8)
    frames += rng.integers(0, 4, frames.shape, dtype=np.uint8)
    return frames


def _slideshow(rng, t_frames):
    hold = int(rng.integers(30, 60))
    pics = [_smooth_picture(rng) for _ in range(t_frames // hold + 1)]
    return np.stack([pics[t // hold] for t in range(t_frames)])


def _webcam(rng, t_frames):
    bg = _smooth_picture(rng) // 2 + 60
    skin = np.array([rng.integers(150, 230), rng.integers(110, 170), rng.integers(80, 140)], np.uint8)
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.empty((t_frames, H, W, 3), np.uint8)
    for t in range(t_frames):
        cx, cy = W / 2 + 4 * np.sin(t / 13), H / 2 + 2 * np.sin(t / 7)
        face = ((xx - cx) / 24) ** 2 + ((yy - cy) / 32) ** 2 < 1
        f = bg.copy()
        f[face] = skin
        frames[t] = f
    return frames


GENERATORS = {"platformer": _platformer, "shooter": _shooter, "static": _static, "black": _black,
              "slideshow": _slideshow, "webcam": _webcam}


def _encode(frames: np.ndarray) -> bytes:
    from genie_pipeline.shards.config import ClipsConfig
    from genie_pipeline.shards.clip import encode_clip

    return encode_clip(frames, ClipsConfig().spec)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_fixture(out_dir: str | Path, n_good: int = 6, n_bad: int = 6, clips_per_video: int = 3,
                 seed: int = 0, sources: tuple[str, ...] = ("sim", "web"), val_every: int = 5,
                 titles: dict[int, str] | None = None) -> dict:
    """Write a synthetic ingest output; returns {"videos": [VideoResult], "catalog": path}.

    Videos alternate good/bad kinds and sources; every `val_every`-th video is in the val
    split. Black clips get the heuristic verdict an ingest would give (kept=False,
    reason="black"), so scoring must keep that reason. `titles` overrides titles by video index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genie_pipeline.shards.records import ClipRow, VideoResult, clip_key, video_key

    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = ["good"] * n_good + ["bad"] * n_bad
    order = rng.permutation(len(labels))
    videos, catalog, manifest = [], [], []
    shard_samples: dict[str, list[tuple[str, bytes, dict]]] = {"train": [], "val": []}
    counts = {"good": 0, "bad": 0}
    for vi, li in enumerate(order):
        label = labels[li]
        kinds = GOOD_KINDS if label == "good" else BAD_KINDS
        kind = kinds[counts[label] % len(kinds)]
        counts[label] += 1
        source = sources[vi % len(sources)]
        vid = f"v{seed:02d}{vi:03d}"
        vkey = video_key(source, vid)
        title = (titles or {}).get(vi, f"{kind} video {vi} ({label})")
        split = "val" if val_every and vi % val_every == val_every - 1 else "train"
        store = out / "clips" / f"{vkey}.tar"
        vr = VideoResult(video_key=vkey, video_id=vid, source=source, title=title, status="done",
                         store=str(store), split=split, seconds_in=16.0 * clips_per_video)
        datas = []
        for ci in range(clips_per_video):
            frames = GENERATORS[kind](rng, T)
            data = _encode(frames)
            key = clip_key(vkey, ci * 16000)
            kept, reason = (False, "black") if kind == "black" else (True, "")
            row = ClipRow(key=key, video_key=vkey, video_id=vid, source=source, title=title,
                          start_s=ci * 16.0, duration_s=16.0, n_frames=T, bytes=len(data), split=split,
                          kept=kept, reason=reason, motion=float(np.abs(np.diff(frames[::8].astype(np.int16), axis=0)).mean()))
            vr.clips.append(row)
            datas.append((key, data))
        vr.seconds_out = 16.0 * clips_per_video
        with tarfile.open(store, "w") as tar:
            for key, data in datas:
                _add(tar, f"{key}.mp4", data)
            _add(tar, "_video.json", json.dumps(vr.to_json(), sort_keys=True).encode())
        for c, (key, data) in zip(vr.clips, datas):
            if c.kept:
                shard_samples[split].append((key, data, {"key": key, "video_id": vid, "title": title}))
        videos.append(vr)
        catalog.append({"id": vid, "title": title, "quality_label": label, "made_how": f"synthetic:{kind}",
                        "source": source})
    for split, samples in shard_samples.items():
        if not samples:
            continue
        name = f"{split}-000000.tar"
        with tarfile.open(out / "shards" / name, "w") as tar:
            for key, data, meta in samples:
                _add(tar, f"{key}.mp4", data)
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        for v in videos:
            for c in v.clips:
                if c.kept and c.split == split:
                    c.shard = name
    for v in videos:
        manifest += [c.row() for c in v.clips]
    try:
        from genie_pipeline.shards.records import SCHEMAS
        schema = SCHEMAS["manifest"]
    except ImportError:  # pragma: no cover
        schema = None
    manifest.sort(key=lambda r: r["key"])
    pq.write_table(pa.Table.from_pylist(manifest, schema=schema), out / "manifest.parquet")
    try:
        from genie_pipeline.shards.records import SCHEMAS as _S
        cand_schema = _S["candidates"]
    except ImportError:  # pragma: no cover
        cand_schema = None
    cands = [{"video_key": v.video_key, "source": v.source, "video_id": v.video_id, "title": v.title,
              "description": "", "url": None, "path": None, "duration_s": v.seconds_in, "start_s": None,
              "end_s": None, "extra": json.dumps({"channel": f"channel{i % 3}", "game": e["made_how"].split(":")[1]}),
              "keyword_verdict": "keep", "keyword_reason": "", "matched_terms": []}
             for i, (v, e) in enumerate(zip(videos, catalog))]
    pq.write_table(pa.Table.from_pylist(cands, schema=cand_schema), out / "candidates.parquet")
    cat_path = out / "catalog.jsonl"
    cat_path.write_text("".join(json.dumps(e) + "\n" for e in catalog))
    return {"videos": videos, "catalog": str(cat_path)}
