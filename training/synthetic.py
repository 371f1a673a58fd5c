"""Synthetic moving-pattern clips and WebDataset shards in the ingest output layout.

Used by the tests, the benchmark and smoke runs when no real shards are at hand: a sprite
that moves with a piecewise-constant "action" (left/right/up/down/stay) over a scrolling
background, encoded exactly like ingest clips (h264, 10 FPS, keyframe every 16 frames).
"""
from __future__ import annotations

import io
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

MOVES = np.array([[0, 0], [0, -3], [0, 3], [-3, 0], [3, 0]])  # (dy, dx): stay, left, right, up, down


def synthetic_frames(seed: int, n_frames: int = 160, height: int = 90, width: int = 160) -> np.ndarray:
    """(n_frames, H, W, 3) uint8: a scrolling striped background and a moving square sprite."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    period = rng.uniform(16, 40)
    speed = rng.choice([-2, -1, 1, 2])
    size = int(rng.integers(10, 18))
    colour = rng.integers(0, 256, size=3)
    colour[int(rng.integers(0, 3))] = 255
    y, x = rng.uniform(10, height - size - 10), rng.uniform(10, width - size - 10)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    move = 0
    for t in range(n_frames):
        if t % 8 == 0:
            move = int(rng.integers(0, len(MOVES)))
        phase = 2 * np.pi * (xx + speed * t) / period
        bg = base[None, None, :] * (0.75 + 0.25 * np.sin(phase)[..., None]) + 0.1 * yy[..., None]
        img = np.clip(bg, 0, 255).astype(np.uint8)
        dy, dx = MOVES[move]
        y = float(np.clip(y + dy, 0, height - size))
        x = float(np.clip(x + dx, 0, width - size))
        iy, ix = int(y), int(x)
        img[iy : iy + size, ix : ix + size] = colour
        frames[t] = img
    return frames


def encode_mp4(frames: np.ndarray, fps: int = 10, gop: int = 16, crf: int = 23) -> bytes:
    """h264 mp4 bytes as ingest writes them (yuv420p, keyframe every `gop` frames, no B-frames)."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps, 1))
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        stream.options = {"crf": str(crf), "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": "0", "preset": "veryfast"}
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_synthetic_shards(
    out_dir: str | os.PathLike,
    n_train_shards: int = 2,
    clips_per_shard: int = 4,
    n_val_shards: int = 1,
    n_frames: int = 160,
    height: int = 90,
    width: int = 160,
    seed: int = 0,
    manifest: bool = True,
) -> list[str]:
    """Write OUT/shards/{train,val}-NNNNNN.tar (+ OUT/manifest.parquet); return the tar paths."""
    import webdataset as wds

    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    clip = 0
    for split, n_shards in (("train", n_train_shards), ("val", n_val_shards)):
        for s in range(n_shards):
            path = out / "shards" / f"{split}-{s:06d}.tar"
            with wds.TarWriter(str(path)) as sink:
                for _ in range(clips_per_shard):
                    video_id = f"vid{clip:04d}"
                    key = f"syn_{video_id}_000000000"
                    meta = {
                        "key": key, "video_key": f"syn_{video_id}", "video_id": video_id, "source": "syn",
                        "title": f"synthetic {clip}", "start_s": 0.0, "fps": 10, "n_frames": n_frames,
                        "width": width, "height": height, "split": split, "scores": {},
                    }
                    mp4 = encode_mp4(synthetic_frames(seed * 100003 + clip, n_frames, height, width))
                    sink.write({"__key__": key, "mp4": mp4, "json": json.dumps(meta).encode()})
                    rows.append({"key": key, "video_key": meta["video_key"], "split": split, "kept": True,
                                 "shard": path.name})
                    clip += 1
            paths.append(str(path))
    if manifest:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    return paths
