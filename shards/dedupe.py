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
few lookups that each find many unrelated clips to verify, wide bands the reverse. Work is
cut into partitions by (version, w, band, top PREFIX_BITS bits of the band value): a
partition holds the entries (committed and new clips) whose band has its prefix and receives,
as queries, the new clips whose band is within r of it (15 of 16 prefixes at r = 3); it looks
up only the values with its prefix. A partition holds 1/16 of the clips' entries for one
band; nothing holds them all.

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
PREFIX_BITS = 4  # partitions per band: 2**PREFIX_BITS
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
def duplicates(new: list[dict], earlier: list[dict], max_distance: int, clips: int | None = None) -> dict[str, str]:
    """{key of a new clip: key of the representative it duplicates}, in one process. `clips`:
    the size the band width is chosen for (default: the clips given)."""
    return decide(neighbour_edges(new, earlier, max_distance, clips))


def neighbour_edges(new: list[dict], earlier: list[dict], max_distance: int,
                    clips: int | None = None) -> dict[str, list[tuple[Rank, str]]]:
    """Every new clip's edges to its neighbours of higher priority, each edge once, from
    every partition of the join in turn (what the job's Match stage does on many workers)."""
    run = RunClips.of(new, max_distance, committed=len(earlier) if clips is None else clips - len(new))
    parts: dict[tuple, list[Batch]] = defaultdict(list)
    queries: dict[tuple, list[Batch]] = defaultdict(list)
    for batch in (*run.batches(new, new=True), *run.batches(earlier, new=False)):
        for key, part in entry_parts(batch):
            parts[key].append(part)
    for batch in run.batches(new, new=True):
        for key, part in query_parts(batch, max_distance):
            queries[key].append(part)
    edges: dict[str, list[tuple[Rank, str]]] = defaultdict(list)
    for key in queries:
        for q, edge in match(key, parts.get(key, []), queries[key], max_distance):
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

    @classmethod
    def of(cls, rows: Iterable[dict], max_distance: int, committed: int = 0) -> "RunClips":
        acc, n = (defaultdict(float), set()), 0
        for r in rows:
            add_clip(acc, r)
            n += 1
        return cls.build(*acc, clips=committed + n, max_distance=max_distance)

    @classmethod
    def build(cls, seconds: Mapping[int, float], versions: set[str], clips: int, max_distance: int) -> "RunClips":
        videos = np.array(sorted(seconds), np.uint64)
        return cls(videos, np.array([seconds[v] for v in videos.tolist()], np.float64), frozenset(versions),
                   clips, max_distance)

    def band_bits(self, bits: int) -> int:
        return band_bits_for(bits, self.clips, self.max_distance)

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
            out.append(Batch(
                version=v, band_bits=self.band_bits(width * 4),
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

    def __len__(self) -> int:
        return len(self.keys)

    def take(self, idx) -> "Batch":
        return Batch(self.version, self.band_bits, self.words[idx], self.video[idx], self.new[idx],
                     self.seconds[idx], self.quality[idx], self.keys[idx])

    @staticmethod
    def concat(batches: list["Batch"]) -> "Batch":
        width = max(b.words.shape[1] for b in batches)
        words = [np.pad(b.words, ((0, 0), (0, width - b.words.shape[1]))) for b in batches]
        return Batch(batches[0].version, batches[0].band_bits, np.concatenate(words),
                     *(np.concatenate([getattr(b, f) for b in batches])
                     for f in ("video", "new", "seconds", "quality", "keys")))

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


def radius(batch: Batch, max_distance: int) -> int:
    return max_distance // batch.bands()


def prefix(values: np.ndarray, band_bits: int) -> np.ndarray:
    return values >> (band_bits - PREFIX_BITS)


def entry_parts(batch: Batch) -> Iterator[tuple[tuple, Batch]]:
    """The batch cut by partition, (version, band width, band, prefix): each clip once per band."""
    for band in range(batch.bands()):
        pre = prefix(batch.band(band), batch.band_bits)
        for p in np.unique(pre).tolist():
            yield (batch.version, batch.band_bits, band, p), batch.take(pre == p)


def query_parts(batch: Batch, max_distance: int) -> Iterator[tuple[tuple, Batch]]:
    """The batch's new clips sent to each partition that may hold a neighbour: per band, the
    prefixes within the radius of their own."""
    batch = batch.take(batch.new)
    r = radius(batch, max_distance) if len(batch) else 0
    for band in range(batch.bands() if len(batch) else 0):
        pre = prefix(batch.band(band), batch.band_bits)
        for p in range(1 << PREFIX_BITS):
            sel = np.bitwise_count(pre ^ p) <= r
            if sel.any():
                yield (batch.version, batch.band_bits, band, p), batch.take(sel)


@functools.lru_cache(maxsize=8)
def _masks(r: int, band_bits: int) -> list[np.ndarray]:
    """Every band_bits-bit mask of at most r set bits, by the prefix it flips."""
    masks = np.array([sum(1 << b for b in flips) for k in range(r + 1)
                      for flips in itertools.combinations(range(band_bits), k)], np.int64)
    return [masks[prefix(masks, band_bits) == t] for t in range(1 << PREFIX_BITS)]


def match(part: tuple, entries: Iterable[Batch], queries: Iterable[Batch], max_distance: int,
          budget: int = 1 << 21) -> Iterator[tuple[str, tuple[Rank, str]]]:
    """Edges of one partition: (query key, (rank, neighbour key)) for each neighbour of higher
    priority among the partition's entries. Each query looks up only the band values within
    the radius that carry the partition's prefix. Memory: the entries, and about `budget`
    probes and candidate pairs at a time."""
    entries = [e for e in entries if len(e)]
    if not entries:
        return
    _, width, band, p = part
    e = Batch.concat(entries)
    values = e.band(band)
    order = np.argsort(values, kind="stable")
    e, values = e.take(order), values[order]
    words = [np.ascontiguousarray(e.words[:, w]) for w in range(e.words.shape[1])]
    # where each band value of this prefix starts among the sorted entries: a probe's
    # entries are first[v] .. first[v + 1] (a gather, not a binary search)
    suffix = width - PREFIX_BITS
    first = np.searchsorted(values, (p << suffix) + np.arange((1 << suffix) + 1))
    low = (1 << suffix) - 1
    for q in queries:
        qband, by_flip = q.band(band), _masks(radius(q, max_distance), width)
        flip = prefix(qband, width) ^ p
        for t in np.unique(flip).tolist():
            masks = by_flip[t]
            matching = np.flatnonzero(flip == t)
            step = max(1, budget // max(len(masks), 1))  # about `budget` probes at a time
            for rows in (matching[i:i + step] for i in range(0, len(matching), step)):
                probes = (qband[rows][:, None] ^ masks[None, :]).ravel()
                lo, hi = first[probes & low], first[(probes & low) + 1]
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
