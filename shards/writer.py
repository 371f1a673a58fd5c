"""Rolling WebDataset shards: kept clips copied from the clip store into tars of a target size."""
from __future__ import annotations

import hashlib
import io
import time
import zlib
from typing import Callable, Iterable, Iterator

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


def write_shards_for(videos: Iterable[VideoResult], roller: ShardRoller,
                     load_clips: Callable[[VideoResult], dict[str, bytes]] | None = None
                     ) -> Iterator[ShardRecord | VideoResult]:
    """Copy the videos' kept clips from their clip stores into rolling shards, interleaved:
    clips are written in order of their relative position in their video (`interleave`),
    so a long video is spread over every shard of the roller instead of filling one.

    Yields finished ShardRecords (their `keys` say which clips they hold), then each
    VideoResult with `shard` set (to the temporary shard path) on its kept clips. Clip bytes
    are loaded window by window (`roller.max_clips` clips at a time), so memory holds the
    clips of about one shard, at the cost of reading a store once per window it has clips in."""
    load_clips = load_clips or (lambda v: read_store(v.store)[1])
    videos = list(videos)
    order = interleave(videos)
    for start in range(0, len(order), roller.max_clips):
        window = order[start: start + roller.max_clips]
        data: dict[str, bytes] = {}
        for v in {id(v): v for v, _ in window}.values():
            wanted = {c.key for w, c in window if w is v}
            data.update((k, b) for k, b in load_clips(v).items() if k in wanted)
        for _, c in window:
            c.shard = fs.join(roller.tmp_dir, f"{roller.prefix}-{roller.n:04d}.tar")
            rec = roller.add(c, data[c.key])
            if rec is not None:
                yield rec
    rec = roller.close()
    if rec is not None:
        yield rec
    yield from videos


def interleave(videos: list[VideoResult]) -> list[tuple[VideoResult, ClipRow]]:
    """The kept clips of all videos, ordered by (i + 0.5) / n for the i-th of a video's n
    kept clips: every stretch of the order holds each video in proportion to its length.
    Ties (videos of equal length) go by video key, then time."""
    ranked = []
    for v in sorted(videos, key=lambda v: v.video_key):
        kept = sorted((c for c in v.clips if c.kept), key=lambda c: c.start_s)
        ranked += [((i + 0.5) / len(kept), v.video_key, c.start_s, v, c) for i, c in enumerate(kept)]
    ranked.sort(key=lambda x: x[:3])
    return [(v, c) for *_, v, c in ranked]


def writer_of(clip_key: str, parallelism: int) -> int:
    """The shard writer (of `parallelism`) a clip goes to: by clip, not by video, so one
    video's clips are spread over every writer."""
    return zlib.crc32(clip_key.encode()) % parallelism
