"""The labelling sample: stratified by source/channel/game, spread over videos, and ordered so
that two clips of the same video are never shown back to back. With a model (`label
--active`), part of it is the clips the model is least sure of (`active_sample`).

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


def active_sample(clips: Sequence[T], target: int, margin: dict[str, float], share: float, seed: int = 0,
                  stratum=lambda c: c.stratum, video=lambda c: c.video_id, key=lambda c: c.key,
                  per_video: int = 2) -> list[T]:
    """Active labelling: `share` of the target are the clips the current model is least sure
    of (smallest `margin`: |score - threshold|), at most `per_video` of a video (a hundred
    uncertain clips of one long video teach one thing); the rest a stratified sample of the
    other clips, so the labels still show the whole input and keep the estimate of precision
    honest. Clips without a margin are only drawn in the stratified part."""
    scored = sorted((c for c in clips if key(c) in margin), key=lambda c: (margin[key(c)], key(c)))
    n_active = min(int(round(target * share)), target)
    taken: dict[str, int] = defaultdict(int)
    active = []
    for c in scored:
        if len(active) >= n_active:
            break
        if taken[video(c)] < per_video:
            taken[video(c)] += 1
            active.append(c)
    chosen = {key(c) for c in active}
    rest = stratified_sample([c for c in clips if key(c) not in chosen], target - len(active), seed, stratum, video)
    # the least sure first (a labeller who stops early has labelled what helps most), then the rest
    head, tail = spread(active, video), spread(rest, video)
    if head and tail and video(head[-1]) == video(tail[0]):  # no two clips of a video back to back
        swap = next((i for i in range(2, len(tail) - 1) if video(tail[i]) not in (video(head[-1]), video(tail[1]))
                     and video(tail[0]) not in (video(tail[i - 1]), video(tail[i + 1]))), None)
        if swap is None:
            tail = tail[1:]
        else:
            tail[0], tail[swap] = tail[swap], tail[0]
    return head + tail


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
