"""Training data: random windows of `frames` frames from the clips of ingest's WebDataset shards.

Reading plan (opening and decoding a clip for every window gives about 2.5 times fewer
windows per second than taking all of a clip's windows from one decode: `open_per_window`
vs `clip_once` in benchmarks/results/train.json):

    shards ──(split by rank × worker)──► tar members ──► clip shuffle buffer (compressed clips)
       ──► groups of `clips_per_group` clips ──► each clip decoded ONCE (only the frames its
       `windows_per_clip` random windows need; YUV→RGB in one batch) ──► windows of the group
       shuffled ──► batches (B, T, 3, H, W) uint8, with each window's true actions (B, T - 1)

Shards are read through `genie_pipeline.shards.reader.iter_tar_clips` (local or remote).
Every random choice comes from a generator seeded by (seed, epoch, stream) or (seed, epoch,
clip key), so the order is a pure function of the seed and the shard list. A stream is one
(rank, worker) pair; the streams of all ranks and workers partition the data (by shard when
there are at least as many shards as streams, otherwise by clip).

Position and exact resume: every batch carries its stream's position after that batch
(`epoch`, `group`, `offset` in the group, `windows` consumed, bad counts). A loader built with
`start_positions` replays the clip stream of that epoch *without decoding* up to the group,
decodes that group and drops `offset` windows, so it continues with exactly the next window.
The DataLoader hands out batches from its workers round-robin; `batches_consumed` rotates the
worker ↔ stream mapping so that the stream due next gets the first worker.

Missing or unreadable shards and undecodable samples are skipped and counted (`bad_shards`,
`bad_samples`); past `max_bad_shard_fraction` the loader raises `DataError`.

Evaluation reads without any of this shuffling: `eval_windows` gives every clip of a split's
shards in tar order, cut into windows at fixed starts.
"""
from __future__ import annotations

import logging
import zlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.reader import Clip, DataError, iter_tar_clips

from .decoders import ClipDecoder, DecodeError, make_decoder
from .stop import ignore_sigint

log = logging.getLogger(__name__)

WORKER_TIMEOUT_S = 1800
# a sample's json records its length (`n_frames`); one that does not has the default clip length
DEFAULT_CLIP_FRAMES = ClipsConfig().spec.frames


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]))


def _key_hash(key: str) -> int:
    return zlib.crc32(key.encode())


def fresh_position(stream: int) -> dict:
    return {"stream": stream, "epoch": 0, "group": 0, "offset": 0, "windows": 0, "clips": 0,
            "bad_shards": 0, "bad_samples": 0, "shards_read": 0, "samples_read": 0}


class WindowDataset(torch.utils.data.IterableDataset):
    """Infinite (or one-epoch) stream of window batches for one rank; see the module docstring.

    Yields dicts: `video` uint8 (B, T, 3, H, W), `keys` (clip keys), `starts` (first frame of
    each window), `true_actions` int64 (B, T - 1) (`window_actions`), `action_spaces` (each
    window's, None where unknown), `position` (this stream's position after the batch),
    `worker` (DataLoader worker id) and `stream`.
    """

    def __init__(
        self,
        shards: Sequence[str],
        batch_size: int,
        frames: int = 16,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        windows_per_clip: int = 8,
        clips_per_group: int = 8,
        shuffle_buffer: int = 256,
        resolution: Sequence[int] | None = None,
        decoder: str = "auto",
        max_bad_shard_fraction: float = 0.1,
        infinite: bool = True,
        start_positions: dict[int, dict] | None = None,
        batches_consumed: int = 0,
        sha256: dict[str, str] | None = None,
    ):
        super().__init__()
        if not shards:
            raise DataError("no shards given")
        self.shards = list(shards)
        self.batch_size = batch_size
        self.frames = frames
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.seed = seed
        self.windows_per_clip = windows_per_clip
        self.clips_per_group = clips_per_group
        self.shuffle_buffer = shuffle_buffer
        self.resolution = tuple(resolution) if resolution else None
        self.decoder_name = decoder
        self.max_bad_fraction = max_bad_shard_fraction
        self.infinite = infinite
        self.start_positions = {int(k): dict(v) for k, v in (start_positions or {}).items()}
        self.batches_consumed = batches_consumed
        self.sha256 = dict(sha256 or {})  # shard -> sha256 of a pinned snapshot: a shard that differs is a bad one
        make_decoder(decoder)  # fail in the main process when the backend is missing

    # -- stream layout
    @property
    def workers_per_rank(self) -> int:
        return max(1, self.num_workers)

    @property
    def num_streams(self) -> int:
        return self.world_size * self.workers_per_rank

    def stream_id(self, worker: int) -> int:
        """Logical stream of DataLoader worker `worker` of this rank (rotated on resume)."""
        w = self.workers_per_rank
        return self.rank * w + (worker + self.batches_consumed) % w

    def stream_shards(self, stream: int, epoch: int) -> tuple[list[str], int | None]:
        """(shards this stream reads in `epoch`, clip modulus or None for a shard-level split)."""
        order = list(self.shards)
        _rng(self.seed, epoch, 7).shuffle(order)
        if len(order) >= self.num_streams:
            return order[stream :: self.num_streams], None
        return order, self.num_streams

    # -- raw clip stream (no decoding; replayed on resume, so its counts are deterministic)
    def _clips(self, stream: int, epoch: int, stats: dict) -> Iterator[Clip]:
        shards, modulus = self.stream_shards(stream, epoch)
        allowed_bad = self.max_bad_fraction * len(shards)
        index = 0
        for path in shards:
            for clip in iter_tar_clips(path, stats, self.sha256.get(path)):
                stats["samples_read"] += 1
                if modulus is None or index % modulus == stream:
                    yield clip
                index += 1
            stats["shards_read"] += 1
            if stats["bad_shards"] > allowed_bad:
                raise DataError(
                    f"{stats['bad_shards']} of {len(shards)} shards read by loader stream {stream} are missing "
                    f"or corrupt (max_bad_shard_fraction={self.max_bad_fraction}); last: {path}"
                )

    def _shuffled_clips(self, stream: int, epoch: int, stats: dict) -> Iterator[Clip]:
        rng = _rng(self.seed, epoch, stream, 11)
        buf: list[Clip] = []
        for clip in self._clips(stream, epoch, stats):
            if len(buf) < self.shuffle_buffer:
                buf.append(clip)
                continue
            j = int(rng.integers(len(buf)))
            buf[j], clip = clip, buf[j]
            yield clip
        rng.shuffle(buf)
        yield from buf

    def _groups(self, stream: int, epoch: int, stats: dict) -> Iterator[list[Clip]]:
        group: list[Clip] = []
        for clip in self._shuffled_clips(stream, epoch, stats):
            group.append(clip)
            if len(group) == self.clips_per_group:
                yield group
                group = []
        if group:
            yield group

    # -- decoding
    def window_starts(self, clip: Clip, epoch: int) -> list[int]:
        """`windows_per_clip` random starts of windows that span no hard cut of the clip (its
        json's `cut_frames`), uniform over all such starts; [] when no span between cuts holds
        a window."""
        n = int(clip.meta.get("n_frames") or DEFAULT_CLIP_FRAMES)
        if n < self.frames:
            raise DecodeError(f"clip has {n} frames, fewer than a window ({self.frames})")
        spans = shot_spans(clip.meta, n, self.frames)
        room = [b - a - self.frames + 1 for a, b in spans]
        if not spans:
            return []
        draws = _rng(self.seed, epoch, _key_hash(clip.key), 13).integers(0, sum(room), self.windows_per_clip)
        # the k-th valid start, counted over the spans in order
        ends = np.cumsum(room)
        out = []
        for d in draws:
            i = int(np.searchsorted(ends, d, side="right"))
            out.append(int(spans[i][0] + d - (ends[i] - room[i])))
        return out

    def _decode_group(self, decoder: ClipDecoder, group: list[Clip], epoch: int, stream: int, g: int, stats: dict):
        windows, keys, starts, actions = [], [], [], []
        for clip in group:
            try:
                st = self.window_starts(clip, epoch)
                if not st:  # cut into spans all shorter than a window: nothing to learn from
                    continue
                idx = [s + t for s in st for t in range(self.frames)]
                frames = decoder.decode(clip.data, idx)  # (k*T, 3, H, W)
            except DecodeError as e:
                log.warning("skipping undecodable clip %s: %s", clip.key, e)
                stats["bad_decodes"] += 1
                continue
            video = frames.view(len(st), self.frames, *frames.shape[1:])
            if self.resolution and tuple(video.shape[-2:]) != self.resolution:
                video = resize_video(video, self.resolution)
            windows += list(video)
            keys += [clip.key] * len(st)
            starts += st
            actions += [window_actions(clip.meta, s, self.frames) for s in st]
        order = _rng(self.seed, epoch, stream, g, 17).permutation(len(windows))
        return [(windows[i], keys[i], starts[i], *actions[i]) for i in order]

    COUNTERS = ("bad_shards", "bad_samples", "shards_read", "samples_read")

    def iter_stream(self, stream: int, worker: int = 0) -> Iterator[dict]:
        """Batches of one stream from its start position (what a DataLoader worker runs)."""
        decoder = make_decoder(self.decoder_name)
        pos = {**fresh_position(stream), **(self.start_positions.get(stream) or {}), "stream": stream}
        pos.setdefault("epoch_base", {k: pos[k] for k in self.COUNTERS})
        pos.setdefault("epoch_bad_decodes", 0)
        batch: list = []
        while True:
            epoch = pos["epoch"]
            skip_groups, skip_windows = pos["group"], pos["offset"]
            resumed = skip_groups > 0 or skip_windows > 0
            stats = {"bad_shards": 0, "bad_samples": 0, "shards_read": 0, "samples_read": 0,
                     "bad_decodes": pos["epoch_bad_decodes"] if resumed else 0}
            produced = 0
            for g, group in enumerate(self._groups(stream, epoch, stats)):
                if g < skip_groups:  # resume: replay the clip stream without decoding
                    continue
                items = self._decode_group(decoder, group, epoch, stream, g, stats)
                if not (g == skip_groups and skip_windows > 0):
                    pos["clips"] += len(group)
                for j, item in enumerate(items):
                    if g == skip_groups and j < skip_windows:
                        continue
                    pos["group"], pos["offset"] = (g, j + 1) if j + 1 < len(items) else (g + 1, 0)
                    pos["windows"] += 1
                    produced += 1
                    batch.append(item)
                    if len(batch) == self.batch_size:
                        _sync(pos, stats)
                        yield self._collate(batch, pos, worker, stream)
                        batch = []
                if not items:
                    pos["group"], pos["offset"] = g + 1, 0
            _sync(pos, stats)
            self._check_epoch(stream, epoch, stats, produced, resumed)
            pos.update(epoch=epoch + 1, group=0, offset=0, epoch_bad_decodes=0,
                       epoch_base={k: pos[k] for k in self.COUNTERS})
            if not self.infinite:
                break
        if batch:
            yield self._collate(batch, pos, worker, stream)

    def _check_epoch(self, stream: int, epoch: int, stats: dict, produced: int, resumed: bool) -> None:
        """After a pass over the stream's shards: too many corrupt samples, or no window at all."""
        seen = stats["samples_read"]
        bad = stats["bad_samples"] + stats["bad_decodes"]
        if seen and bad > self.max_bad_fraction * seen:
            raise DataError(f"{bad} of {seen} samples read by loader stream {stream} in epoch {epoch} are "
                            f"corrupt (max_bad_shard_fraction={self.max_bad_fraction})")
        if produced == 0 and not resumed:
            raise DataError(f"loader stream {stream} got no usable window in a whole pass over its shards "
                            f"({stats['bad_shards']} bad shards, {bad} bad samples)")

    @staticmethod
    def _collate(batch, pos, worker, stream) -> dict:
        return {**collate_windows(batch), "position": dict(pos), "worker": worker, "stream": stream}

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers_per_rank:
            raise DataError(f"dataset built for {self.num_workers} workers runs in {info.num_workers}")
        return self.iter_stream(self.stream_id(worker), worker)


def shot_spans(meta: dict, n: int, frames: int) -> list[tuple[int, int]]:
    """The spans [a, b) of a clip of `n` frames between the hard cuts its json records
    (`cut_frames`: the first frame of each new shot) that hold at least one window of `frames`
    frames. A window starting at s spans no cut when s and s + frames - 1 lie in one span."""
    cuts = sorted(int(c) for c in (meta.get("cut_frames") or []) if 0 < int(c) < n)
    bounds = [0, *cuts, n]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b - a >= frames]


def window_actions(meta: dict, start: int, frames: int) -> tuple[list[int], str | None]:
    """The true actions between a window's frames and their action space, from its clip's
    json: action t is the step from frame start + t to start + t + 1 (the clip's
    `true_actions[start + t]`), for t < frames - 1; all -1 (and None) where the clip has none."""
    true, space = meta.get("true_actions"), meta.get("action_space")
    if not isinstance(true, list) or len(true) < start + frames - 1:
        return [-1] * (frames - 1), None
    return [int(a) for a in true[start:start + frames - 1]], space


def collate_windows(items: list[tuple]) -> dict:
    """(video (T, 3, H, W), key, start, actions, action space) items as one batch: `video`,
    `keys`, `starts`, `true_actions` (B, T - 1) int64, `action_spaces`."""
    return {
        "video": torch.from_numpy(np.stack([b[0].numpy() for b in items])),
        "keys": [b[1] for b in items],
        "starts": torch.tensor([b[2] for b in items]),
        "true_actions": torch.tensor([b[3] for b in items], dtype=torch.long),
        "action_spaces": [b[4] for b in items],
    }


def eval_windows(shards: Sequence[str], frames: int = 16, *, step: int | None = None, batch_size: int = 8,
                 resolution: Sequence[int] | None = None, decoder: str = "auto",
                 max_windows: int | None = None) -> Iterator[dict]:
    """Every clip of `shards` in the order given and tar order, each cut into windows of
    `frames` frames starting at 0, `step`, 2 * `step`, … (default step: `frames`, windows
    that do not overlap) counted from the start of each span between its hard cuts
    (`shot_spans`: no window spans a cut), in batches of up to `batch_size` windows as `collate_windows` makes
    them; at most `max_windows` windows. No shuffling and no randomness: what eval reads,
    e.g. `eval_windows(resolve_inputs([OUT], "val").shards)`. Undecodable clips are skipped
    (logged) and unreadable shards counted by `iter_tar_clips`, as in training."""
    dec = make_decoder(decoder)
    stats = {"bad_shards": 0, "bad_samples": 0}
    items: list[tuple] = []
    done = 0
    for clip in (c for path in shards for c in iter_tar_clips(path, stats)):
        n = int(clip.meta.get("n_frames") or DEFAULT_CLIP_FRAMES)
        # fixed starts from the start of each span between the clip's hard cuts: no window spans one
        starts = [s for a, b in shot_spans(clip.meta, n, frames) for s in range(a, b - frames + 1, step or frames)]
        if max_windows is not None:
            starts = starts[: max_windows - done]
        if not starts:
            if max_windows is not None and done >= max_windows:
                break
            continue
        try:
            video = dec.decode(clip.data, [s + t for s in starts for t in range(frames)])
        except DecodeError as e:
            log.warning("skipping undecodable clip %s: %s", clip.key, e)
            continue
        video = video.view(len(starts), frames, *video.shape[1:])
        if resolution and tuple(video.shape[-2:]) != tuple(resolution):
            video = resize_video(video, resolution)
        for s, v in zip(starts, video):
            items.append((v, clip.key, s, *window_actions(clip.meta, s, frames)))
            if len(items) == batch_size:
                yield collate_windows(items)
                items = []
        done += len(starts)
    if items:
        yield collate_windows(items)


def _sync(pos: dict, stats: dict) -> None:
    """A stream position's running counts: the epoch's start counts plus this epoch's."""
    base = pos["epoch_base"]
    pos["bad_shards"] = base["bad_shards"] + stats["bad_shards"]
    pos["bad_samples"] = base["bad_samples"] + stats["bad_samples"] + stats["bad_decodes"]
    pos["shards_read"] = base["shards_read"] + stats["shards_read"]
    pos["samples_read"] = base["samples_read"] + stats["samples_read"]
    pos["epoch_bad_decodes"] = stats["bad_decodes"]


def resize_video(video: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """uint8 (..., 3, H, W) → uint8 (..., 3, h, w), antialiased bilinear (one resizer everywhere)."""
    lead = video.shape[:-3]
    x = video.reshape(-1, *video.shape[-3:]).float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).reshape(*lead, 3, *size)


def _worker_init(_):
    torch.set_num_threads(1)
    ignore_sigint()  # the trainer stops the run (training/stop.py); the worker is closed then


def _identity(x):
    return x


class WindowLoader:
    """DataLoader over a `WindowDataset` that tracks the position of every stream from the
    batches the trainer actually consumed (prefetched batches do not count).

    `state_dict()` → plain ints/dicts (checkpoint-safe); `WindowLoader(..., state=...)` resumes.
    """

    def __init__(self, shards: Sequence[str], batch_size: int, frames: int = 16, *, rank: int = 0,
                 world_size: int = 1, num_workers: int = 0, state: dict | None = None,
                 pin_memory: bool = False, prefetch_factor: int = 2, **kw):
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        state = state or {}
        if state and (state.get("world_size") != world_size or state.get("num_workers") != num_workers):
            log.warning("loader state is for world_size=%s num_workers=%s, now %s/%s: the data order restarts "
                        "at a new epoch (not an exact resume)", state.get("world_size"), state.get("num_workers"),
                        world_size, num_workers)
            epoch = 1 + max([p.get("epoch", 0) for p in state.get("positions", {}).values()] or [0])
            state = {"batches": 0, "positions": {}}
            self._epoch_bump = epoch
        else:
            self._epoch_bump = 0
        self.batches = int(state.get("batches", 0))
        self.positions: dict[int, dict] = {int(k): dict(v) for k, v in state.get("positions", {}).items()}
        start = dict(self.positions)
        if self._epoch_bump:
            w = max(1, num_workers)
            start = {s: {**fresh_position(s), "epoch": self._epoch_bump} for s in range(rank * w, rank * w + w)}
        self.dataset = WindowDataset(shards, batch_size, frames, rank=rank, world_size=world_size,
                                     num_workers=num_workers, start_positions=start,
                                     batches_consumed=self.batches, **kw)
        # A private generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run's masks would differ from the uninterrupted run's.
        gen = torch.Generator()
        gen.manual_seed(int(kw.get("seed", 0)))
        dl_kw: dict[str, Any] = dict(batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                     collate_fn=_identity, generator=gen)
        if num_workers > 0:
            # a worker that hangs (e.g. a decoder deadlock) fails the run instead of stalling it
            dl_kw.update(worker_init_fn=_worker_init, prefetch_factor=prefetch_factor, persistent_workers=False,
                         timeout=WORKER_TIMEOUT_S)
        self.loader = torch.utils.data.DataLoader(self.dataset, **dl_kw)
        self._it = None

    def __iter__(self):
        self._it = iter(self.loader)
        return self

    def __next__(self) -> dict:
        if self._it is None:
            iter(self)
        batch = next(self._it)
        self.batches += 1
        self.positions[int(batch["stream"])] = dict(batch["position"])
        return batch

    def state_dict(self) -> dict:
        return {"batches": self.batches, "world_size": self.world_size, "num_workers": self.num_workers,
                "rank": self.rank, "positions": {int(k): dict(v) for k, v in self.positions.items()}}

    def counts(self) -> dict:
        """Windows consumed, bad shards and samples seen, summed over this rank's streams."""
        keys = ("windows", "clips", "bad_shards", "bad_samples", "shards_read", "samples_read")
        return {k: sum(int(p.get(k, 0)) for p in self.positions.values()) for k in keys}

    def close(self):
        """Stop the worker processes now (not at garbage collection)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
