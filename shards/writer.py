"""Rolling WebDataset shards: kept clips copied from the clip store into tars of a target size."""
from __future__ import annotations

import hashlib
import io
import time
from typing import Iterator

from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipSpec
from genie_pipeline.shards.records import ClipRow, ShardRecord, VideoResult, sample_json
from genie_pipeline.shards.store import read_store


class ShardRoller:
    """Writes samples into `{prefix}-{n}.tar` files under `tmp_dir`, starting a new tar when
    the current one reaches `target_bytes` or `max_clips`. Each tar is written whole to a
    local file and only then moved to `tmp_dir` (which readers never list)."""

    def __init__(self, tmp_dir: str, prefix: str, split: str, target_bytes: int, max_clips: int,
                 spec: ClipSpec):
        self.tmp_dir, self.prefix, self.split = tmp_dir, prefix, split
        self.target_bytes, self.max_clips = target_bytes, max_clips
        self.spec = spec
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
        self.writer.write({"__key__": clip.key, "mp4": data, "json": sample_json(clip, self.spec)})
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
