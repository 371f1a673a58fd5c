"""Curation over the whole output: near-duplicate groups and balance caps, decided once per
run over this run's clips and every clip already committed.

Both rules are pure functions of manifest rows (dicts with ClipRow's columns) and return
what to reject: {clip key: (reason, duplicate_of)}. The ingest runs `curate` as one global
step once the run's clips are cut; the shards it wrote meanwhile are purged of the rejected
clips before the commit publishes them, so a rejected clip never reaches a published shard
and committed shards are never rewritten: a clip already in the output is never rejected by
a later run.

Near duplicates. Only kept clips with a fingerprint take part. A clip duplicates another
when their fingerprints are of one version (the "vN:" before the 64 bits; 16 bare hex digits
are version 1), differ in at most `max_distance` bits and they come from different videos
(neighbouring clips of one video look alike but are different footage). Clips are visited
in priority order, and each either joins the first representative it matches or becomes
one; so every duplicate is within `max_distance` of its representative (no chains).
Priority: already in the output first, then the longer video (more seconds cut), then the
higher quality_score (unscored last), then the smaller key. Candidates are found without
comparing all pairs: the 64 bits are cut into BANDS bands of 16; two fingerprints within
`max_distance` agree within `max_distance // BANDS` bits on at least one band (pigeonhole),
so each clip looks up only the band values that close to its own: whatever `max_distance`,
no pair within it is missed (at the default 12, 697 values per band). Fingerprints of another
version than a clip's are other measurements, never compared: an output holding clips of
an older version keeps them, and only a rerun of their videos makes them comparable.

Caps. Clips over `max_clips_per_{channel,query,source}` (None: no cap) get "cap:channel",
"cap:query" or "cap:source". Committed kept clips count first and always stay. New clips
are taken round-robin over videos (videos in a fixed hash order, each video's clips in an
order that spreads any prefix evenly over the video), so a cap keeps a little of every
video rather than all of the first ones. A video without a channel (or query) counts as its
own channel (query).
"""
from __future__ import annotations

import itertools
import zlib
from collections import defaultdict
from typing import Callable, Iterable, Mapping

BITS = 64
BANDS = 4
BAND_BITS = BITS // BANDS
CAPS = ("channel", "query", "source")

Decision = tuple[str, "str | None"]  # (reason, duplicate_of)


def parse(fp: str) -> tuple[str, int]:
    """(version, 64 bits) of a fingerprint: "vN:" and 16 hex digits, or 16 bare hex digits (v1)."""
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
    `caps` maps "channel", "query", "source" to a limit or None."""
    redone = {r["video_key"] for r in new}
    earlier = [r for r in earlier if r["video_key"] not in redone]
    decisions: dict[str, Decision] = {}
    if max_distance is not None:
        decisions.update((k, ("duplicate", rep)) for k, rep in duplicates(new, earlier, max_distance).items())
    if any(v is not None for v in caps.values()):
        survivors = [r for r in new if r["kept"] and r["key"] not in decisions]
        decisions.update((k, (reason, None)) for k, reason in over_caps(survivors, earlier, caps).items())
    return decisions


# ---------------------------------------------------------------------------- duplicates
def duplicates(new: list[dict], earlier: list[dict], max_distance: int) -> dict[str, str]:
    """{key of a new clip: key of the representative it duplicates}."""
    rank = representative_rank(itertools.chain(earlier, new))
    pool = [(True, r) for r in earlier if r["kept"] and r.get("fingerprint")]
    pool += [(False, r) for r in new if r["kept"] and r.get("fingerprint")]
    pool.sort(key=lambda x: (not x[0], rank(x[1])))
    radius = max_distance // BANDS
    # keyed by (fingerprint version, band, band value): versions never meet
    buckets: dict[tuple[str, int, int], list[tuple[int, str, int, str]]] = defaultdict(list)
    out: dict[str, str] = {}
    for order, (committed, r) in enumerate(pool):
        (version, fp), vkey = parse(r["fingerprint"]), r["video_key"]
        rep = None if committed else _first_match(version, fp, vkey, buckets, radius, max_distance)
        if rep is not None:
            out[r["key"]] = rep
            continue
        for band, value in enumerate(_bands(fp)):
            buckets[(version, band, value)].append((order, r["key"], fp, vkey))
    return out


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


def _bands(fp: int) -> list[int]:
    return [(fp >> (band * BAND_BITS)) & ((1 << BAND_BITS) - 1) for band in range(BANDS)]


def _near(value: int, radius: int) -> Iterable[int]:
    """Every band value within `radius` bits of `value`."""
    for r in range(radius + 1):
        for flips in itertools.combinations(range(BAND_BITS), r):
            yield value ^ sum(1 << b for b in flips)


def _first_match(version: str, fp: int, vkey: str, buckets, radius: int, max_distance: int) -> str | None:
    """The representative of highest priority within `max_distance` of `fp` (of `version`)
    from another video."""
    best = None
    for band, value in enumerate(_bands(fp)):
        for near in _near(value, radius):
            for order, key, rep_fp, rep_video in buckets.get((version, band, near), ()):
                if rep_video != vkey and (best is None or order < best[0]) \
                        and (rep_fp ^ fp).bit_count() <= max_distance:
                    best = (order, key)
    return None if best is None else best[1]


# ---------------------------------------------------------------------------------- caps
def over_caps(new: list[dict], earlier: list[dict], caps: Mapping[str, int | None]) -> dict[str, str]:
    """{key of a new clip: "cap:channel" | "cap:query" | "cap:source"} for the kept clips of
    `new` beyond a cap, counting the kept clips of `earlier` first."""
    active = {name: caps[name] for name in CAPS if caps.get(name) is not None}
    used: dict[tuple[str, str], int] = defaultdict(int)
    for r in earlier:
        if r["kept"]:
            for name in active:
                used[(name, _group(r, name))] += 1
    out = {}
    for r in round_robin(new):
        full = next((name for name in active if used[(name, _group(r, name))] >= active[name]), None)
        if full is not None:
            out[r["key"]] = f"cap:{full}"
            continue
        for name in active:
            used[(name, _group(r, name))] += 1
    return out


def _group(r: dict, name: str) -> str:
    return r["source"] if name == "source" else (r.get(name) or r["video_key"])


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
