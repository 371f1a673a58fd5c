"""The clip store (one tar per video, every clip kept or not) and rolling WebDataset shards."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from typing import Iterator

from genie_pipeline.ingest.records import ClipRow, VideoResult
from genie_pipeline.shards import fs

VIDEO_JSON = "_video.json"


# --------------------------------------------------------------------------- clip store
def store_path(out_dir: str, vkey: str) -> str:
    return fs.join(out_dir, "clips", f"{vkey}.tar")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: re-runs write equal bytes
    tar.addfile(info, io.BytesIO(data))


def write_store(path: str, result: VideoResult, clips: list[tuple[str, bytes]]) -> None:
    """All clips of one video plus its result, in one atomic file: the unit of resume."""
    with fs.atomic_output(path) as tmp, tarfile.open(tmp, "w") as tar:
        for key, data in clips:
            _add(tar, f"{key}.mp4", data)
        _add(tar, VIDEO_JSON, json.dumps(result.to_json(), sort_keys=True).encode())


def read_store(path: str) -> tuple[VideoResult, dict[str, bytes]]:
    with fs.open_read(path) as f, tarfile.open(fileobj=io.BytesIO(f.read()), mode="r") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    result = VideoResult.from_json(json.loads(files.pop(VIDEO_JSON)))
    return result, {name[: -len(".mp4")]: data for name, data in files.items() if name.endswith(".mp4")}


def read_store_result(path: str) -> VideoResult:
    """Only the result record, without holding every clip in memory."""
    with fs.open_read(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            if m.name == VIDEO_JSON:
                return VideoResult.from_json(json.loads(tar.extractfile(m).read()))
    raise ValueError(f"{path}: no {VIDEO_JSON}")


# ------------------------------------------------------------------------------- shards
def sample_json(c: ClipRow, fps: int, width: int, height: int) -> dict:
    return {
        "key": c.key, "video_key": c.video_key, "video_id": c.video_id, "source": c.source,
        "title": c.title, "start_s": c.start_s, "duration_s": c.duration_s, "fps": fps,
        "n_frames": c.n_frames, "width": width, "height": height, "split": c.split,
        "scores": {"motion": c.motion, "dark_fraction": c.dark_fraction,
                   "unique_fraction": c.unique_fraction, "cuts_per_min": c.cuts_per_min,
                   "quality_score": None if c.quality_score != c.quality_score else c.quality_score},
    }


@dataclass
class ShardRecord:
    """A finished shard under its temporary name, with the stats written beside it."""

    path: str  # temporary location
    split: str
    order: str  # sort key for final numbering (deterministic across runs)
    keys: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"path": self.path, "split": self.split, "order": self.order, "keys": self.keys, "stats": self.stats}


class ShardRoller:
    """Writes samples into `{prefix}-{n}.tar` files under `tmp_dir`, starting a new tar when
    the current one reaches `target_bytes` or `max_clips`. Each tar is written whole to a
    local file and only then moved to `tmp_dir` (which readers never list)."""

    def __init__(self, tmp_dir: str, prefix: str, split: str, target_bytes: int, max_clips: int,
                 fps: int, width: int, height: int):
        self.tmp_dir, self.prefix, self.split = tmp_dir, prefix, split
        self.target_bytes, self.max_clips = target_bytes, max_clips
        self.spec = (fps, width, height)
        self.n = 0
        self._open()

    def _open(self):
        self.buf = io.BytesIO()
        import webdataset as wds

        self.writer = wds.TarWriter(self.buf)
        self.keys: list[str] = []
        self.videos: set[str] = set()
        self.seconds = 0.0
        self.started = time.time()

    def add(self, clip: ClipRow, data: bytes) -> ShardRecord | None:
        self.writer.write({"__key__": clip.key, "mp4": data, "json": sample_json(clip, *self.spec)})
        self.keys.append(clip.key)
        self.videos.add(clip.video_key)
        self.seconds += clip.duration_s
        if self.buf.tell() >= self.target_bytes or len(self.keys) >= self.max_clips:
            return self.close()
        return None

    def close(self) -> ShardRecord | None:
        if not self.keys:
            return None
        self.writer.close()
        data = self.buf.getvalue()
        name = f"{self.prefix}-{self.n:04d}"
        path = fs.join(self.tmp_dir, name + ".tar")
        fs.write_bytes(path, data)
        rec = ShardRecord(path=path, split=self.split, order=name, keys=list(self.keys), stats={
            "n_samples": len(self.keys), "n_videos": len(self.videos), "bytes": len(data),
            "seconds": round(self.seconds, 3), "sha256": hashlib.sha256(data).hexdigest(),
        })
        self.n += 1
        self._open()
        return rec


def write_shards_for(videos: Iterator[VideoResult], roller: ShardRoller,
                     load_clips=None) -> Iterator[ShardRecord | VideoResult]:
    """Copy each video's kept clips from its clip store into rolling shards.

    Yields finished ShardRecords, and each VideoResult with `shard` set (to the temporary
    shard path) on its kept clips."""
    load_clips = load_clips or (lambda v: read_store(v.store)[1])
    for v in videos:
        kept = [c for c in v.clips if c.kept]
        data = load_clips(v) if kept else {}
        for c in kept:
            c.shard = fs.join(roller.tmp_dir, f"{roller.prefix}-{roller.n:04d}.tar")
            rec = roller.add(c, data[c.key])
            if rec is not None:
                yield rec
        yield v
    rec = roller.close()
    if rec is not None:
        yield rec


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


def stats_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".stats.json"


def existing_shards(shard_dir: str, split: str) -> list[str]:
    return [p for p in fs.glob(fs.join(shard_dir, f"{split}-*.tar"))
            if os.path.basename(p)[len(split) + 1: -4].isdigit()]
