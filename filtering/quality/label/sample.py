"""The labelling sample: stratified by source/channel/game, spread over videos, and ordered so
that two clips of the same video are never shown back to back.

Drawing: strata (source, plus channel and game where the manifest has them) take turns; in
a stratum, videos take turns; a video gives a random clip each turn. So a stratum with one
huge video gets as many labels as one with many small ones, and inside a stratum every
video is labelled before any video is labelled twice.

Ordering: the drawn clips are re-ordered greedily (at each step the video with the most
clips left that is not the previous one, ties broken by draw order) — the standard
rearrangement that succeeds whenever no video holds more than half the sample; clips that
would break the rule are dropped from the sample.
"""
from __future__ import annotations

import heapq
import random
from collections import defaultdict
from typing import Sequence, TypeVar

T = TypeVar("T")


def stratified_sample(clips: Sequence[T], target: int, seed: int = 0,
                      stratum=lambda c: c.stratum, video=lambda c: c.video_id) -> list[T]:
    rng = random.Random(seed)
    strata: dict[str, dict[str, list[T]]] = defaultdict(lambda: defaultdict(list))
    for c in clips:
        strata[stratum(c)][video(c)].append(c)
    # per stratum: a rotating queue of videos, each with its clips shuffled
    queues = []
    for s in sorted(strata):
        vids = sorted(strata[s])
        rng.shuffle(vids)
        for v in vids:
            rng.shuffle(strata[s][v])
        queues.append([strata[s][v] for v in vids])
    rng.shuffle(queues)
    drawn: list[T] = []
    while len(drawn) < target and queues:
        for q in list(queues):
            if len(drawn) >= target:
                break
            vclips = q.pop(0)
            drawn.append(vclips.pop())
            if vclips:
                q.append(vclips)
            if not q:
                queues.remove(q)
    return spread(drawn, video)


def spread(items: Sequence[T], video=lambda c: c.video_id) -> list[T]:
    """Re-order so no two neighbours share a video (drop what cannot be placed)."""
    groups: dict[str, list[tuple[int, T]]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[video(it)].append((i, it))
    # heap of (-remaining, first draw index, video)
    heap = [(-len(g), g[0][0], v) for v, g in groups.items()]
    heapq.heapify(heap)
    out: list[T] = []
    prev = None
    while heap:
        n, first, v = heapq.heappop(heap)
        if v == prev:
            if not heap:
                break  # only the previous video is left: drop its remaining clips
            n2, first2, v2 = heapq.heappop(heap)
            heapq.heappush(heap, (n, first, v))
            n, first, v = n2, first2, v2
        _, it = groups[v].pop(0)
        out.append(it)
        prev = v
        if groups[v]:
            heapq.heappush(heap, (n + 1, groups[v][0][0], v))
    return out
