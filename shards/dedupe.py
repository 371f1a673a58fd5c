"""Curation over the whole output: near-duplicate groups and balance caps, decided once per
run over this run's clips and every clip already committed, as a join that a Beam job spreads
over its workers (ingest/pipeline.py) and that `curate` runs in one process.

Decisions are {clip key: (reason, duplicate_of)}. The shards a run wrote meanwhile are purged
of the rejected clips before the commit publishes them, so a rejected clip never reaches a
published shard and a clip already in the output is never rejected by a later run.

Near duplicates. Only kept clips with a fingerprint of a version this run produces take part.
Two clips are neighbours when their fingerprints differ in at most `max_distance` bits and
they come from different videos (neighbouring clips of one video look alike but are other
footage). Priority: committed clips first, then the longer video (its clips' seconds in this
run), then the higher quality_score (unscored last), then the smaller key. The rule:

- a committed clip represents; a new clip with no neighbour of higher priority represents;
- a new clip with a committed neighbour duplicates the nearest one (then the smaller key);
- otherwise it duplicates its highest-priority neighbour that represents, among its
  NEIGHBOURS (8) highest-priority new neighbours; with none (each of them duplicates
  another) it represents itself. The bound keeps a crowd of look-alikes from sending every
  pair to the second round.

So every duplicate is within `max_distance` of the clip it names, which represents. The rule
needs two rounds over the neighbour lists, not a walk in priority order: in a chain of four
or more clips each near the next but not the ones beyond, two kept clips can be neighbours.

The join (no all-pairs): cut into B = bits // w bands of w bits, a fingerprint within d
bits of another differs in at most r = d // B bits on some band (pigeonhole), so every pair
within d is found by looking up, for each band, the band values within r of a clip's own.
The width is chosen per run from the number of clips (`band_bits_for`): narrow bands mean
few lookups that each find many unrelated clips to verify, wide bands the reverse.

Work is cut into partitions, one GroupByKey key each (`layout_for` picks s and P per run):
each band is cut into s sub-blocks, and a pair within r on the band is within r_s = r // s
on one of them (pigeonhole again); a partition is (version, w, s, P, band, sub-block j, the
top P bits of sub-block j, salt). A clip is an entry of one partition per (band, j), and a
new clip queries the partitions whose prefix is within r_s of its own. With s = r + 1 the
sub-block matches exactly (r_s = 0): a query reaches B·s partitions, its own, whatever P,
and P grows with the output so that the partitions do too (up to a sub-block's 4 or 5
bits: 800 partitions from 10^7 clips; past MAX_ENTRIES a partition is split); with
s = 1 the entries are not copied but a query reaches every prefix within r. The layout with the fewest shuffled
records wins: s = r + 1 for a first run (every clip is new), s = 1 with a few prefix bits
when the committed clips far outnumber the new ones. A new clip that is an entry where it
queries is sent once (BOTH). A pair is found in one partition only: its first band within
r, that band's first sub-block within r_s. A partition whose entries exceed HOT × the mean
or MAX_ENTRIES (a crowd of look-alikes lands in one) is split by clip over several salts,
and its queries go to each (`salts`, `salted`).

Caps. Clips over `max_clips_per_{source,query,channel}` (None: no cap) get "cap:source",
"cap:query" or "cap:channel", applied in that order (broadest first), each group on its own.
Committed kept clips count first and always stay. Within a group new clips are taken
round-robin over videos (videos in a fixed hash order, each video's clips in an order that
spreads any prefix evenly over the video), so a cap keeps a little of every video rather
than all of the first ones. A video without a channel (or query) counts as its own channel
(query).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

BAND_BITS = range(16, 26)  # band widths the join chooses from (`band_bits_for`)
TARGET_ENTRIES = 1 << 17  # clips per partition the prefix width aims at (partitions grow with the output)
MAX_TABLE_BITS = 21  # a partition's lookup table has 2**(w - P) slots: P >= w - 21 keeps it to 16 MiB
HOT = 1.5  # a partition above HOT × the mean entries is split (`salts`)...
MAX_ENTRIES = 1 << 21  # ... and so is one above this many entries (about 120 MiB), whatever the mean
ENTRY, QUERY, BOTH = 0, 1, 2  # a part's role in its partition (BOTH: a new clip, entry and query)
NEIGHBOURS = 8  # higher-priority new neighbours a clip keeps for the second round
CAPS = ("source", "query", "channel")  # the order caps apply in

Decision = tuple[str, "str | None"]  # (reason, duplicate_of)
Rank = tuple  # an edge's sort key: (0, distance, 0.0, key) to a committed clip, (1, -seconds, -quality, key) else


def parse(fp: str) -> tuple[str, int]:
    """(version, bits) of a fingerprint: "vN:" and hex digits, or 16 bare hex digits (v1)."""
    version, _, bits = fp.rpartition(":")
    return version or "v1", int(bits, 16)


def hamming(a: str, b: str) -> int:
    """Bits in which two fingerprints of one version differ; ValueError across versions."""
    (va, x), (vb, y) = parse(a), parse(b)
    if va != vb:
        raise ValueError(f"fingerprints of versions {va} and {vb} cannot be compared")
    return (x ^ y).bit_count()


def curate(new: list[dict], earlier: Iterable[dict], *, max_distance: int | None,
           caps: Mapping[str, int | None]) -> dict[str, Decision]:
    """Which of `new` (this run's clip rows) to reject, given `earlier` (the committed
    manifest; rows of videos this run redoes are ignored). `max_distance` None: no dedupe.
    `caps` maps "channel", "query", "source" to a limit or None. The same steps the ingest
    job runs distributed, in one process."""
    run = RunClips.of(new, max_distance or 0)
    earlier = [r for r in earlier if not run.redoes(r["video_key"])]
    decisions: dict[str, Decision] = {}
    if max_distance is not None:
        decisions.update((k, ("duplicate", rep)) for k, rep in duplicates(new, earlier, max_distance).items())
    survivors = [r for r in new if r["kept"] and r["key"] not in decisions]
    for name in CAPS:
        if caps.get(name) is None:
            continue
        used = cap_counts(earlier, name)
        groups: dict[str, list[dict]] = defaultdict(list)
        for r in survivors:
            groups[cap_group(r, name)].append(r)
        over = {k for g, rows in groups.items() for k in over_cap(rows, used.get(g, 0), caps[name])}
        decisions.update((k, (f"cap:{name}", None)) for k in over)
        survivors = [r for r in survivors if r["key"] not in over]
    return decisions


# ---------------------------------------------------------------------------- duplicates
def duplicates(new: list[dict], earlier: list[dict], max_distance: int, clips: int | None = None,
               **join) -> dict[str, str]:
    """{key of a new clip: key of the representative it duplicates}, in one process. `clips`:
    the size the join's layout is chosen for (default: the clips given); `join`: see
    `neighbour_edges`."""
    return decide(neighbour_edges(new, earlier, max_distance, clips, **join))


def neighbour_edges(new: list[dict], earlier: list[dict], max_distance: int, clips: int | None = None, *,
                    layout: tuple[int, int, int] | None = None,
                    max_entries: int = MAX_ENTRIES) -> dict[str, list[tuple[Rank, str]]]:
    """Every new clip's edges to its neighbours of higher priority, each edge once, from
    every partition of the join in turn (what the job's Match stage does on many workers).
    `layout` (w, s, P) replaces `layout_for`'s choice; `max_entries` the split threshold."""
    run = RunClips.of(new, max_distance, committed=len(earlier) if clips is None else clips - len(new), layout=layout)
    items = [item for batch in (*run.batches(new, new=True), *run.batches(earlier, new=False))
             for item in join_parts(batch, max_distance)]
    counts: dict[tuple, int] = defaultdict(int)
    for key, value in items:
        counts[key] += entries_in(value)
    split = salts(counts, max_entries)
    parts: dict[tuple, list[tuple[int, Batch]]] = defaultdict(list)
    for item in items:
        for key, value in salted(item, split):
            parts[key].append(value)
    edges: dict[str, list[tuple[Rank, str]]] = defaultdict(list)
    for key, values in parts.items():
        for q, edge in match(key, [b for tag, b in values if tag != QUERY], [b for tag, b in values if tag != ENTRY],
                             max_distance):
            edges[q].append(edge)
    return edges


def decide(edges: Mapping[str, list[tuple[Rank, str]]]) -> dict[str, str]:
    """{clip: the representative it duplicates} from every clip's edges, both rounds in one
    process (the job runs them as `first_round`, `nearest_new` and `second_round` by key)."""
    out, asks = {}, defaultdict(list)
    for q, found in edges.items():
        decided = first_round(q, found)
        if decided is not None:
            out[q] = decided
        else:
            for rank, nbr in nearest_new(found):
                asks[nbr].append((q, rank))
    answers = defaultdict(list)
    for nbr, askers in asks.items():
        for q, edge in second_round(nbr, askers, nbr in edges):
            answers[q].append(edge)
    out.update((q, min(found)[1]) for q, found in answers.items())
    return out


@dataclass
class RunClips:
    """What every partition of a run's join needs to know of the run: its videos (whose
    committed rows it redoes) and the seconds each cut, as sorted 64-bit hashes."""
    videos: np.ndarray  # sorted uint64 hashes of this run's video keys
    seconds: np.ndarray  # float64, seconds of clips cut per video, aligned with `videos`
    versions: frozenset[str]  # fingerprint versions of this run's clips
    clips: int  # clips in the join (this run's and the committed ones): sizes the bands
    max_distance: int
    new: int = 0  # this run's clips (with `clips`, they choose the layout)
    layout: tuple[int, int, int] | None = None  # (w, s, P) instead of `layout_for`'s (tests, benchmarks)

    @classmethod
    def of(cls, rows: Iterable[dict], max_distance: int, committed: int = 0,
           layout: tuple[int, int, int] | None = None) -> "RunClips":
        acc, n = (defaultdict(float), set()), 0
        for r in rows:
            add_clip(acc, r)
            n += 1
        return cls.build(*acc, clips=committed + n, max_distance=max_distance, new=n, layout=layout)

    @classmethod
    def build(cls, seconds: Mapping[int, float], versions: set[str], clips: int, max_distance: int, new: int = 0,
              layout: tuple[int, int, int] | None = None) -> "RunClips":
        videos = np.array(sorted(seconds), np.uint64)
        return cls(videos, np.array([seconds[v] for v in videos.tolist()], np.float64), frozenset(versions),
                   clips, max_distance, new, layout)

    def layout_of(self, bits: int) -> tuple[int, int, int]:
        return self.layout or layout_for(bits, self.clips, self.new, self.max_distance)

    def redoes(self, video_key: str) -> bool:
        return bool(self.redone(np.array([video_hash(video_key)], np.uint64))[0])

    def redone(self, vids: np.ndarray) -> np.ndarray:
        """Per video hash: whether this run redoes (cuts again) that video."""
        if not len(self.videos):
            return np.zeros(len(vids), bool)
        i = np.minimum(np.searchsorted(self.videos, vids), len(self.videos) - 1)
        return self.videos[i] == vids

    def batches(self, rows: Iterable[dict] | None = None, *, new: bool,
                columns: Mapping[str, list] | None = None) -> list["Batch"]:
        """The kept, fingerprinted clips as join batches (one per version this run has), from
        rows or from columns (JOIN_COLUMNS, as a table part's record batch gives them);
        committed clips of a video this run redoes are left out."""
        cols = columns if columns is not None else {k: [r.get(k) for r in rows] for k in JOIN_COLUMNS}
        n = len(cols["key"])
        vids = np.fromiter((video_hash(v) for v in cols["video_key"]), np.uint64, n)
        fps = cols["fingerprint"]
        version = np.array([(f.rpartition(":")[0] or "v1") if f else "" for f in fps])
        ok = np.fromiter((bool(k) for k in cols["kept"]), bool, n)
        if not new:
            ok &= ~self.redone(vids)
        pos = np.minimum(np.searchsorted(self.videos, vids), max(len(self.videos) - 1, 0))
        out = []
        for v in sorted(self.versions):
            idx = np.flatnonzero(ok & (version == v))
            if not len(idx):
                continue
            digits = [fps[i].rpartition(":")[2] for i in idx.tolist()]
            width = -(-max(len(d) for d in digits) // 16) * 16
            raw = np.frombuffer(bytes.fromhex("".join(d.rjust(width, "0") for d in digits)), ">u8")
            w, s, p = self.layout_of(width * 4)
            out.append(Batch(
                version=v, band_bits=w, sub_blocks=s, prefix_bits=p,
                words=raw.reshape(len(idx), width // 16)[:, ::-1].astype(np.uint64),
                video=vids[idx], new=np.full(len(idx), new),
                seconds=self.seconds[pos[idx]] if new and len(self.videos) else np.zeros(len(idx)),
                quality=np.array([-1.0 if q is None or q != q else q  # unscored (None, or NaN: unreadable)
                                  for q in (cols["quality_score"][i] for i in idx.tolist())], np.float64),
                keys=np.array([cols["key"][i].encode() for i in idx.tolist()], dtype=bytes)))
        return out


# what the join reads of a clip row
JOIN_COLUMNS = ("key", "video_key", "kept", "fingerprint", "quality_score")


def band_bits_for(bits: int, clips: int, max_distance: int) -> int:
    """The band width that makes the join cheapest for `clips` fingerprints of `bits` bits:
    bits // w bands of w bits, each looked up within r = max_distance // bands bits. A query
    costs its probes (bands × the masks of at most r bits) and its candidates (probes ×
    clips / 2**w, each verified): narrow bands give few probes and many candidates, wide
    ones the reverse. For 128 bits at 24: 18 bits up to about 1M clips, 24 at 3M, 25 at 30M
    (24 times fewer operations per query than 16-bit bands there)."""
    def cost(w: int) -> float:
        bands = bits // w
        probes = bands * sum(math.comb(w, k) for k in range(max_distance // bands + 1))
        return probes * (1 + 2 * clips / 2 ** w)
    return min((w for w in BAND_BITS if w <= bits // 2), key=cost)


def layout_for(bits: int, clips: int, new: int, max_distance: int) -> tuple[int, int, int]:
    """The join's layout (w, s, P) for `clips` fingerprints of `bits` bits, `new` of them
    this run's: bands of w bits (`band_bits_for`), each cut into s sub-blocks, partitions by
    the top P bits of a sub-block. P aims at TARGET_ENTRIES clips a partition (at most a
    sub-block's width; at least w - MAX_TABLE_BITS). Of the s from 1 to r + 1, the one that
    shuffles the fewest records: per band, s per committed clip and s × (the prefixes
    within r_s of its own) per new clip; on a tie the larger s (a query reaches fewer
    partitions)."""
    w = band_bits_for(bits, clips, max_distance)
    r = max_distance // (bits // w)
    want = max(0, math.ceil(math.log2(max(clips, 1) / TARGET_ENTRIES)))
    best: tuple[float, tuple[int, int, int]] | None = None
    for s in range(1, r + 2):
        p = min(max(want, w - MAX_TABLE_BITS), min(_widths(w, s)))
        if p < w - MAX_TABLE_BITS:
            continue
        cost = s * (max(clips - new, 0) + new * sum(math.comb(p, k) for k in range(r // s + 1)))
        if best is None or cost <= best[0]:
            best = (cost, (w, s, p))
    assert best is not None, (w, r)
    return best[1]


@functools.lru_cache(maxsize=64)
def _widths(w: int, s: int) -> tuple[int, ...]:
    """Widths of the s sub-blocks of a w-bit band (the first w % s one bit wider)."""
    return tuple(w // s + (j < w % s) for j in range(s))


def _sub_block(w: int, s: int, j: int) -> tuple[int, int]:
    """(lowest bit, width) of sub-block j of a w-bit band."""
    widths = _widths(w, s)
    return sum(widths[:j]), widths[j]


def add_clip(acc: tuple[dict[int, float], set[str]], row: dict) -> None:
    """Count one clip row of the run into (seconds per video hash, versions)."""
    seconds, versions = acc
    seconds[video_hash(row["video_key"])] += row["duration_s"] or 0.0
    if row.get("fingerprint"):
        versions.add(parse(row["fingerprint"])[0])


def video_hash(video_key: str) -> int:
    return int.from_bytes(hashlib.blake2b(video_key.encode(), digest_size=8).digest(), "little")


@dataclass
class Batch:
    """Clips in the near-duplicate join, as columns; all of one fingerprint version, cut in
    bands of one width."""
    version: str
    band_bits: int
    words: np.ndarray  # (n, W) uint64: the fingerprint's bits, least significant word first
    video: np.ndarray  # (n,) uint64 video hashes: clips of one video never pair
    new: np.ndarray  # (n,) bool: of this run (committed clips represent and never lose)
    seconds: np.ndarray  # (n,) float64: seconds its video cut in this run
    quality: np.ndarray  # (n,) float64; -1 when unscored
    keys: np.ndarray  # (n,) bytes: clip keys are ASCII, and a byte a character halves what is shuffled
    sub_blocks: int = 1  # s: sub-blocks a band is cut into (`layout_for`)
    prefix_bits: int = 0  # P: bits of a sub-block that name its partition

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx) -> "Batch":
        return Batch(self.version, self.band_bits, self.words[idx], self.video[idx], self.new[idx],
                     self.seconds[idx], self.quality[idx], self.keys[idx], self.sub_blocks, self.prefix_bits)

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        width = max(b.words.shape[1] for b in batches)
        words = [np.pad(b.words, ((0, 0), (0, width - b.words.shape[1]))) for b in batches]
        first = batches[0]
        return Batch(first.version, first.band_bits, np.concatenate(words),
                     *(np.concatenate([getattr(b, f) for b in batches])
                     for f in ("video", "new", "seconds", "quality", "keys")), first.sub_blocks, first.prefix_bits)

    def __reduce__(self):
        # one buffer instead of six arrays: a first run cuts a batch into B·s·2**P parts of a
        # few clips each, and each array pickled alone carries about 100 bytes of header
        n, width = len(self), self.words.shape[1]
        buf = b"".join(np.ascontiguousarray(a).tobytes() for a in
                       (self.words, self.video, self.new, self.seconds, self.quality, self.keys))
        return _unpack, (self.version, self.band_bits, self.sub_blocks, self.prefix_bits, n, width,
                         self.keys.dtype.itemsize, buf)

    def bands(self) -> int:
        return self.words.shape[1] * 64 // self.band_bits

    def band(self, i: int) -> np.ndarray:
        """Bits i·w .. (i+1)·w - 1 of each fingerprint (w = band_bits), a band that may
        straddle two words."""
        word, shift = divmod(i * self.band_bits, 64)
        value = self.words[:, word] >> np.uint64(shift)
        if shift + self.band_bits > 64:
            value |= self.words[:, word + 1] << np.uint64(64 - shift)
        return (value & np.uint64((1 << self.band_bits) - 1)).astype(np.int64)

    def outranks(self, i: np.ndarray, other: "Batch", j: np.ndarray) -> np.ndarray:
        """Whether clip i of self comes before clip j of `other` in priority order."""
        a = (self.new[i], -self.seconds[i], -self.quality[i])
        b = (other.new[j], -other.seconds[j], -other.quality[j])
        before, tied = np.zeros(len(i), bool), np.ones(len(i), bool)
        for x, y in zip(a, b):
            before |= tied & (x < y)
            tied &= x == y
        return before | (tied & (self.keys[i] < other.keys[j]))


def _unpack(version, band_bits, sub_blocks, prefix_bits, n, width, key_size, buf) -> Batch:
    cols, at = [], 0
    for dtype, shape in ((np.uint64, (n, width)), (np.uint64, (n,)), (bool, (n,)), (np.float64, (n,)),
                         (np.float64, (n,)), (f"S{max(key_size, 1)}", (n,))):
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize if n else 0
        cols.append(np.frombuffer(buf, dtype, int(np.prod(shape)), at).reshape(shape).copy() if n
                    else np.zeros(shape, dtype))
        at += size
    return Batch(version, band_bits, *cols, sub_blocks, prefix_bits)


def radius(batch: Batch, max_distance: int) -> int:
    return max_distance // batch.bands()


def sub_prefix(values: np.ndarray, w: int, s: int, p: int, j: int) -> np.ndarray:
    """The top p bits of sub-block j of each band value: the partition it is an entry of."""
    lo, width = _sub_block(w, s, j)
    return (values >> (lo + width - p)) & ((1 << p) - 1)


def squeeze(values: np.ndarray, w: int, s: int, p: int, j: int) -> np.ndarray:
    """Band values without the partition's p prefix bits (which all its entries share): an
    index into a table of 2**(w - p) slots."""
    lo, width = _sub_block(w, s, j)
    cut = lo + width - p
    return (values & ((1 << cut) - 1)) | ((values >> (cut + p)) << cut)


def entries_in(value: tuple[int, Batch]) -> int:
    """Entries a tagged part adds to its partition."""
    tag, batch = value
    return 0 if tag == QUERY else len(batch)


def join_parts(batch: Batch, max_distance: int) -> Iterator[tuple[tuple, tuple[int, Batch]]]:
    """The batch by partition, (version, w, s, P, band, sub-block, prefix): per band and
    sub-block, each clip is an entry of the partition of its own prefix (ENTRY), and a new
    clip queries it and every partition whose prefix is within r_s of its own (BOTH where
    it is an entry too, else QUERY)."""
    if not len(batch):
        return
    w, s, p = batch.band_bits, batch.sub_blocks, batch.prefix_bits
    rs = radius(batch, max_distance) // s
    new = batch.new
    flips = _ball(p, rs)
    for band in range(batch.bands()):
        values = batch.band(band)
        for j in range(s):
            pre = sub_prefix(values, w, s, p, j)
            targets = np.unique(pre if rs == 0 or not new.any() else
                                np.concatenate([pre, (pre[new][:, None] ^ flips[None, :]).ravel()]))
            for t in targets.tolist():
                own = pre == t
                key = (batch.version, w, s, p, band, j, t)
                near = (np.bitwise_count(pre ^ t) <= rs) & new & ~own if rs else None
                for tag, sel in ((ENTRY, own & ~new), (BOTH, own & new), (QUERY, near)):
                    if sel is not None and sel.any():
                        yield key, (tag, batch.take(sel))


def entry_counts(batch: Batch) -> Iterator[tuple[tuple, int]]:
    """(partition, entries) of the batch: what `join_parts` sends as entries, counted
    without cutting the batch (`salts` needs every partition's count before any is cut)."""
    if not len(batch):
        return
    w, s, p = batch.band_bits, batch.sub_blocks, batch.prefix_bits
    for band in range(batch.bands()):
        values = batch.band(band)
        for j in range(s):
            pres, counts = np.unique(sub_prefix(values, w, s, p, j), return_counts=True)
            for t, n in zip(pres.tolist(), counts.tolist()):
                yield (batch.version, w, s, p, band, j, t), n


@functools.lru_cache(maxsize=16)
def _ball(p: int, r: int) -> np.ndarray:
    """Every p-bit value of at most r set bits."""
    return np.array([sum(1 << b for b in flips) for k in range(min(r, p) + 1)
                     for flips in itertools.combinations(range(p), k)], np.int64)


def salts(counts: Mapping[tuple, int], max_entries: int = MAX_ENTRIES) -> dict[tuple, int]:
    """{partition: ways} for the partitions to split, from the entries each holds: one above
    HOT × the mean, into about mean-sized shares, and one above `max_entries`, into shares
    of at most that. A crowd of look-alikes lands in the same partitions; split, no key
    holds much more than the mean."""
    if not counts:
        return {}
    mean = sum(counts.values()) / len(counts)
    out = {}
    for key, n in counts.items():
        ways = max(math.ceil(n / mean) if n > HOT * mean else 1, math.ceil(n / max_entries))
        if ways > 1:
            out[key] = ways
    return out


def salted(item: tuple[tuple, tuple[int, Batch]],
           split: Mapping[tuple, int]) -> Iterator[tuple[tuple, tuple[int, Batch]]]:
    """A tagged part under its GroupByKey key, (partition, salt): in a split partition each
    entry goes to one share (by a hash of its key) and each query to every share."""
    key, (tag, batch) = item
    ways = split.get(key, 1)
    if ways == 1:
        yield key + (0,), (tag, batch)
        return
    home = np.fromiter((zlib.crc32(k) % ways for k in batch.keys.tolist()), np.int64, len(batch))
    for share in range(ways):
        mine = home == share
        if tag == QUERY:
            yield key + (share,), (QUERY, batch)
            continue
        if mine.any():
            yield key + (share,), (tag, batch.take(mine))
        if tag == BOTH and not mine.all():
            yield key + (share,), (QUERY, batch.take(~mine))


@functools.lru_cache(maxsize=64)
def _masks(r: int, w: int, s: int, p: int, j: int) -> dict[int, np.ndarray]:
    """The w-bit masks of at most r set bits that partition j of the band probes, by the
    prefix bits they flip: at most r_s = r // s in sub-block j, more than r_s in each
    sub-block before it (a pair is found at its first sub-block within r_s)."""
    masks = np.array([sum(1 << b for b in flips) for k in range(r + 1)
                      for flips in itertools.combinations(range(w), k)], np.int64)
    rs, keep = r // s, np.ones(len(masks), bool)
    for i in range(j + 1):
        lo, width = _sub_block(w, s, i)
        n = np.bitwise_count((masks >> lo) & ((1 << width) - 1))
        keep &= (n <= rs) if i == j else (n > rs)
    masks = masks[keep]
    flip = sub_prefix(masks, w, s, p, j)
    return {t: masks[flip == t] for t in np.unique(flip).tolist()}


def match(part: tuple, entries: Iterable[Batch], queries: Iterable[Batch], max_distance: int,
          budget: int = 1 << 21) -> Iterator[tuple[str, tuple[Rank, str]]]:
    """Edges of one partition: (query key, (rank, neighbour key)) for each neighbour of higher
    priority among the partition's entries. Each query looks up only the band values within
    the radius that carry the partition's prefix and match at sub-block j first. Memory: the
    entries, a table of 2**(w - P) slots, and about `budget` probes and candidate pairs at a
    time."""
    entries = [e for e in entries if len(e)]
    if not entries:
        return
    _, w, s, p, band, j, t0 = part[:7]
    e = Batch.concat(entries)
    slots = squeeze(e.band(band), w, s, p, j)
    order = np.argsort(slots, kind="stable")
    e, slots = e.take(order), slots[order]
    words = [np.ascontiguousarray(e.words[:, i]) for i in range(e.words.shape[1])]
    if (1 << (w - p)) <= 16 * len(slots):
        # where each slot starts among the sorted entries: a probe's entries are first[v] ..
        # first[v + 1] (a gather, several times faster than a binary search)
        first = np.searchsorted(slots, np.arange((1 << (w - p)) + 1))
        span = lambda probes: (first[probes], first[probes + 1])  # noqa: E731
    else:  # a small partition (a small output, a share of a split one): no table to fill
        span = lambda probes: (np.searchsorted(slots, probes), np.searchsorted(slots, probes, "right"))  # noqa: E731
    for q in queries:
        if not len(q):
            continue
        qband, by_flip = q.band(band), _masks(radius(q, max_distance), w, s, p, j)
        flip = sub_prefix(qband, w, s, p, j) ^ t0
        for t in np.unique(flip).tolist():
            masks = by_flip.get(t)
            if masks is None:
                continue
            matching = np.flatnonzero(flip == t)
            step = max(1, budget // max(len(masks), 1))  # about `budget` probes at a time
            for rows in (matching[i:i + step] for i in range(0, len(matching), step)):
                probes = squeeze((qband[rows][:, None] ^ masks[None, :]).ravel(), w, s, p, j)
                lo, hi = span(probes)
                keep = hi > lo
                owner, lo, count = np.repeat(rows, len(masks))[keep], lo[keep], (hi - lo)[keep]
                ends = np.cumsum(count)
                start = 0
                while start < len(count):  # slices of about `budget` candidate pairs
                    stop = max(int(np.searchsorted(ends, ends[start] - count[start] + budget, "right")), start + 1)
                    yield from _verify(e, words, q, owner[start:stop], lo[start:stop], count[start:stop],
                                       max_distance, band)
                    start = stop


def _verify(e: Batch, words: list[np.ndarray], q: Batch, owner, lo, count, max_distance: int, band: int):
    """The candidate pairs (query owner[i], entries lo[i] .. lo[i] + count[i]) that are
    neighbours, the entry above the query, as edges; a pair that an earlier band's partition
    also finds is left to it, so each edge is sent once. `words`: e's fingerprint words, each
    contiguous (gathers from 1-D arrays are several times faster than from rows)."""
    qi = np.repeat(owner, count)
    ei = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(count.sum())
    dist = np.zeros(len(qi), np.uint8)
    for w, ew in enumerate(words[:q.words.shape[1]]):
        dist += np.bitwise_count(q.words[:, w][qi] ^ ew[ei])
    ok = dist <= max_distance
    qi, ei, dist = qi[ok], ei[ok], dist[ok]
    ok = q.video[qi] != e.video[ei]
    qi, ei, dist = qi[ok], ei[ok], dist[ok]
    ok = e.outranks(ei, q, qi)
    r = radius(q, max_distance)
    for earlier in range(band):
        ok &= np.bitwise_count(q.take(qi).band(earlier) ^ e.take(ei).band(earlier)) > r
    for a, b, d in zip(qi[ok].tolist(), ei[ok].tolist(), dist[ok].tolist()):
        key = e.keys[b].decode()
        rank = (1, -float(e.seconds[b]), -float(e.quality[b]), key) if e.new[b] else (0, d, 0.0, key)
        yield q.keys[a].decode(), (rank, key)


def first_round(q: str, edges: Iterable[tuple[Rank, str]]) -> str | None:
    """A clip's decision from its edges where it needs no second round: the nearest committed
    neighbour it duplicates, else None (its neighbours are new: `nearest_new`)."""
    best = min(edges)
    return best[1] if best[0][0] == 0 else None


def nearest_new(edges: Iterable[tuple[Rank, str]]) -> list[tuple[Rank, str]]:
    """The NEIGHBOURS highest-priority new neighbours (an edge found in several bands once)."""
    return sorted(set(edges))[:NEIGHBOURS]


def second_round(nbr: str, askers: Iterable[tuple[str, Rank]], has_edges: bool) -> Iterator[tuple[str, tuple[Rank, str]]]:
    """A neighbour answers the clips that asked it: one without edges of its own (nothing
    above it) represents, and each asker may name it."""
    if not has_edges:
        for q, rank in askers:
            yield q, (rank, nbr)


def representative_rank(rows: Iterable[dict], seconds: dict[str, float] | None = None):
    """The documented rule for which clip of a duplicate group is kept, as a sort key (lowest
    first): the clip of the longest video (its clips' seconds in `rows`, or `seconds` by video
    key), then the highest quality score, then the key."""
    if seconds is None:
        seconds = defaultdict(float)
        for r in rows:
            seconds[r["video_key"]] += r["duration_s"] or 0.0
    return lambda r: (-seconds.get(r["video_key"], 0.0), -(r.get("quality_score") or -1.0), r["key"])


def reelect(rows_of: Callable[[], Iterable[dict]], eligible: Callable[[dict], bool]) -> dict[str, str]:
    """After kept flags changed (refilter): the duplicate groups that no longer hold exactly
    one kept clip, each with its representative, as {group: representative}. A group is keyed
    by the key its members' `duplicate_of` name (its representative when it was formed or last
    re-elected); its members are that clip and every clip naming it, a former representative
    rejected by quality included (`apply_reelections` keeps it in the group).

    - A group whose representative is no longer kept gets the best member by
      `representative_rank` among those `eligible` (e.g. passing the new threshold) and not
      rejected for another reason; with none, it is not listed and keeps no clip.
    - A group with a kept member besides its kept representative (a former representative a
      lower threshold lets back in) keeps its representative; the others become duplicates.
    - A group whose representative was rejected for another reason than quality (a cap) is
      not listed: re-electing would bypass a cap that refilter does not re-evaluate.

    Groups that hold one kept clip are left alone, so a refilter moves no clip it need not.
    `rows_of()` gives the manifest rows afresh for each of its three passes (a stream: memory
    holds the groups' keys, not the rows). Apply the answer with `apply_reelections`."""
    seconds: dict[str, float] = defaultdict(float)
    groups: set[str] = set()
    for r in rows_of():
        seconds[r["video_key"]] += r["duration_s"] or 0.0
        if r.get("duplicate_of"):
            groups.add(r["duplicate_of"])
    failing, crowded, blocked = set(groups), set(), set()
    for r in rows_of():
        if r["key"] in groups:
            if r["kept"] or r.get("reason") not in REELECTABLE:
                failing.discard(r["key"])
            if not r["kept"] and r.get("reason") not in REELECTABLE:
                blocked.add(r["key"])
        elif r["kept"] and r.get("duplicate_of") in groups:
            crowded.add(r["duplicate_of"])
    rank = representative_rank((), seconds)
    best: dict[str, tuple] = {}
    for r in rows_of():
        group = r["key"] if r["key"] in failing else r.get("duplicate_of")
        if group in failing and r.get("reason") in REELECTABLE and eligible(r):
            key = rank(r)
            if group not in best or key < best[group]:
                best[group] = key
    return {**{group: group for group in crowded - failing - blocked},
            **{group: key[-1] for group, key in best.items()}}


# a clip rejected for one of these reasons may become its group's representative
REELECTABLE = ("", None, "quality", "duplicate")


def apply_reelections(rows: Iterable[dict], new_rep_of: dict[str, str]) -> int:
    """Update rows (in place) by `reelect`'s answer: each new representative is kept; every
    other member of its group names it in `duplicate_of`, and one that would be kept
    becomes a duplicate (one failing quality keeps that reason). Returns the number of
    clips restored."""
    restored = 0
    for r in rows:
        group = r["key"] if r["key"] in new_rep_of else r.get("duplicate_of")
        if group not in new_rep_of:
            continue
        elected = new_rep_of[group]
        if r["key"] == elected:
            restored += not r["kept"]
            r.update(kept=True, reason="", duplicate_of=None)
        elif r.get("reason") == "quality":
            r["duplicate_of"] = elected
        else:
            r.update(kept=False, reason="duplicate", duplicate_of=elected)
    return restored


# ---------------------------------------------------------------------------------- caps
def cap_group(r: dict, name: str) -> str:
    return r["source"] if name == "source" else (r.get(name) or r["video_key"])


def cap_counts(rows: Iterable[dict], name: str) -> dict[str, int]:
    """Kept clips per group of cap `name` among committed rows."""
    used: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["kept"]:
            used[cap_group(r, name)] += 1
    return dict(used)


def over_cap(rows: list[dict], used: int, cap: int) -> list[str]:
    """Keys of one group's new clips beyond `cap`, with `used` committed clips counted first."""
    return [r["key"] for r in round_robin(rows)[max(cap - used, 0):]]


def round_robin(rows: list[dict]) -> list[dict]:
    """Rows in caps order: the first pick of every video, then the second of every video, …;
    videos in a fixed pseudo-random order (a hash of their key, not the alphabet), each
    video's clips in `spread_order`."""
    by_video: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_video[r["video_key"]].append(r)
    videos = sorted(by_video, key=lambda v: (zlib.crc32(v.encode()), v))
    ranked = []
    for vi, vkey in enumerate(videos):
        clips = sorted(by_video[vkey], key=lambda r: (r["start_s"], r["key"]))
        ranked += [(turn, vi, clips[i]) for turn, i in enumerate(spread_order(len(clips)))]
    return [r for _, _, r in sorted(ranked, key=lambda x: (x[0], x[1]))]


def spread_order(n: int) -> list[int]:
    """0..n-1 in an order whose every prefix is spread over the range: the first clip, the
    middle one, the quarters, … (bit-reversed positions), so taking the first k picks clips
    across the whole video, not its first k."""
    if n <= 1:
        return list(range(n))
    width = (n - 1).bit_length()
    order = sorted(range(1 << width), key=lambda i: int(f"{i:0{width}b}"[::-1], 2))
    return [i for i in order if i < n]
