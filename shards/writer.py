"""Rolling WebDataset shards: kept clips copied from the clip store into tars of a target size."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import time
import uuid
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
    """Copy the videos' kept clips from their clip stores into rolling shards, interleaved
    (`interleaved_clips`), so a long video is spread over every shard of the roller instead
    of filling one.

    Yields finished ShardRecords (their `keys` say which clips they hold), then each
    VideoResult with `shard` set (to the temporary shard path) on its kept clips."""
    videos = list(videos)
    for _, c, data in interleaved_clips(videos, roller.max_clips, load_clips):
        c.shard = fs.join(roller.tmp_dir, f"{roller.prefix}-{roller.n:04d}.tar")
        rec = roller.add(c, data)
        if rec is not None:
            yield rec
    rec = roller.close()
    if rec is not None:
        yield rec
    yield from videos


def interleaved_clips(videos: list[VideoResult], window: int,
                      load_clips: Callable[[VideoResult], dict[str, bytes]] | None = None
                      ) -> Iterator[tuple[VideoResult, ClipRow, bytes]]:
    """(video, clip, its bytes) for the kept clips of `videos` in `interleave` order. Clip
    bytes are loaded `window` clips at a time, so memory holds the clips of about one shard,
    at the cost of reading a store once per window it has clips in."""
    load_clips = load_clips or (lambda v: read_store(v.store)[1])
    order = interleave(videos)
    for start in range(0, len(order), window):
        win = order[start: start + window]
        data: dict[str, bytes] = {}
        def source(v: VideoResult):  # each file read once per window (an old shard holds many videos)
            return v.store or id(v)

        for first in {source(v): v for v, _ in win}.values():
            wanted = {c.key for w, c in win if source(w) == source(first)}
            data.update((k, b) for k, b in load_clips(first).items() if k in wanted)
        for v, c in win:
            yield v, c, data[c.key]


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


def spread(v: VideoResult, chunk: int) -> Iterator[VideoResult]:
    """A video's kept clips in parts of about `chunk` clips, each part a random-looking subset
    (by clip key) rather than a stretch of time: parts go to different writers, so a long
    video ends up spread over many shards, each holding a sample of it."""
    kept = [c for c in v.clips if c.kept]
    n = max(1, -(-len(kept) // max(1, chunk)))
    parts: dict[int, list[ClipRow]] = {}
    for c in kept:
        parts.setdefault(zlib.crc32(c.key.encode()) % n, []).append(c)
    for _, clips in sorted(parts.items()):
        yield dataclasses.replace(v, clips=clips)


class StreamingShards:
    """Shards of one writer, one rolling tar per split, named
    `{split}-{run_id}-{writer}-{n:04d}.tar` (unique in the output: no renumbering at commit).
    `write` and `close` yield each finished shard with the rows of the clips in it (their
    `shard` set to the shard's name); `leftovers` hands back, instead, the clips of the shards
    still open, as video parts, for another writer to finish (so that many writers do not
    leave many small tails)."""

    def __init__(self, tmp_dir: str, run_id: str, target_bytes: int, max_clips: int, spec: ClipSpec,
                 load_clips: Callable[[VideoResult], dict[str, bytes]] | None = None):
        self.tmp_dir, self.run_id, self.target_bytes, self.max_clips, self.spec = (
            tmp_dir, run_id, target_bytes, max_clips, spec)
        self.load_clips = load_clips
        self.writer = uuid.uuid4().hex[:8]
        self.rollers: dict[str, ShardRoller] = {}
        self.open: dict[str, list[tuple[VideoResult, ClipRow]]] = {}

    def write(self, parts: list[VideoResult]) -> Iterator[tuple[ShardRecord, list[ClipRow]]]:
        """Add the kept clips of `parts`, interleaved (the parts of one video as one)."""
        merged: dict[tuple[str, str | None], VideoResult] = {}
        for v in parts:
            m = merged.get((v.video_key, v.store))
            merged[(v.video_key, v.store)] = v if m is None else dataclasses.replace(m, clips=m.clips + v.clips)
        for v, c, data in interleaved_clips(list(merged.values()), self.max_clips, self.load_clips):
            roller = self.rollers.get(v.split)
            if roller is None:
                roller = self.rollers[v.split] = ShardRoller(
                    self.tmp_dir, f"{v.split}-{self.run_id}-{self.writer}", v.split, self.target_bytes,
                    self.max_clips, self.spec)
            c = dataclasses.replace(c, shard=f"{roller.prefix}-{roller.n:04d}.tar")
            self.open.setdefault(v.split, []).append((v, c))
            rec = roller.add(c, data)
            if rec is not None:
                yield rec, [c for _, c in self.open.pop(v.split)]

    def close(self) -> Iterator[tuple[ShardRecord, list[ClipRow]]]:
        for split, roller in sorted(self.rollers.items()):
            rec = roller.close()
            if rec is not None:
                yield rec, [c for _, c in self.open.pop(split)]

    def leftovers(self) -> list[VideoResult]:
        parts: dict[int, tuple[VideoResult, list[ClipRow]]] = {}
        for pending in self.open.values():
            for v, c in pending:
                parts.setdefault(id(v), (v, []))[1].append(dataclasses.replace(c, shard=None))
        self.open.clear()
        for roller in self.rollers.values():
            roller.writer.close()  # its clips go elsewhere: the half-written tar is dropped
        self.rollers.clear()
        return [dataclasses.replace(v, clips=clips) for v, clips in parts.values()]


class ShardMixer:
    """A writer fed one video at a time, as videos are cut, that still mixes many videos in
    every shard. Each video's kept clips wait in a pool as `spread` parts of `chunk` clips; a
    shard is written as soon as the pool holds a shard's worth (`max_clips`) from at least
    `min_videos` videos, taking one part of every waiting video in turn (round-robin, videos
    in key-hash order), so a shard holds at most `chunk` clips of a video per turn. The pool
    holds clip records, not bytes (the clips stay in their stores); past `hold_clips` a
    shard is written from the fewer videos there are. `leftovers` hands back what is left,
    the pool and the open shard, as video parts for writers that see more videos."""

    def __init__(self, shards: StreamingShards, chunk: int, min_videos: int = 16, hold_clips: int | None = None):
        self.shards, self.chunk, self.min_videos = shards, max(1, chunk), min_videos
        self.hold_clips = hold_clips or 16 * shards.max_clips
        self.pool: dict[str, list[VideoResult]] = {}
        self.waiting = 0

    def add(self, v: VideoResult) -> Iterator[tuple[ShardRecord, list[ClipRow]]]:
        for part in spread(v, self.chunk):
            if part.clips:
                self.pool.setdefault(v.video_key, []).append(part)
                self.waiting += len(part.clips)
        while self.waiting >= self.shards.max_clips and (
                len(self.pool) >= self.min_videos or self.waiting >= self.hold_clips):
            yield from self.shards.write(self._take(self.shards.max_clips))

    def _take(self, n: int) -> list[VideoResult]:
        taken: list[VideoResult] = []
        count = 0
        while count < n and self.pool:
            for vkey in sorted(self.pool, key=lambda k: (zlib.crc32(k.encode()), k)):
                part = self.pool[vkey].pop(0)
                if not self.pool[vkey]:
                    del self.pool[vkey]
                taken.append(part)
                count += len(part.clips)
                if count >= n:
                    break
        self.waiting -= count
        return taken

    def leftovers(self) -> list[VideoResult]:
        parts = [p for ps in self.pool.values() for p in ps] + self.shards.leftovers()
        self.pool.clear()
        self.waiting = 0
        return parts
