"""Near duplicates: the clip fingerprint on real (corpus) footage and its copies, and the
grouping over the whole output (this run and committed runs)."""
import itertools
import json
import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from genie_pipeline.filtering.config import DedupeConfig
from genie_pipeline.filtering.fingerprint import fingerprint
from genie_pipeline.ingest.decode import iter_frames
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.dedupe import band_bits_for, curate, duplicates, hamming, neighbour_edges
from tests.fixtures.footage import sprite_frames

CLIPS = ClipsConfig()
MAX_DISTANCE = DedupeConfig().max_distance  # the default, which the footage tests hold to
GROUPING = 10  # the distance the grouping tests' hand-made fingerprints are laid out for


def first_clip(path) -> np.ndarray:
    frames = []
    for f in iter_frames(str(path), CLIPS):
        frames.append(f)
        if len(frames) == CLIPS.frames:
            return np.stack(frames)
    raise AssertionError(f"{path}: shorter than one clip")


def ffmpeg(src, dst, *args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), *args,
                    "-c:v", "libx264", "-an", str(dst)], check=True)
    return dst


def clean_games(corpus):
    rows = [json.loads(line) for line in (corpus / "catalog.jsonl").read_text().splitlines()]
    return [r for r in rows if r["made_how"] == "clean" and r["expect_failure"] is None]


@pytest.fixture(scope="module")
def copies(small_corpus, tmp_path_factory):
    """For three clean corpus games: the original's first clip and those of a byte copy, a
    small low-bitrate and a large re-encode, an 8 % centred crop and a 5 % corner crop."""
    tmp = tmp_path_factory.mktemp("copies")
    out = {}
    for r in clean_games(small_corpus)[:3]:
        src = small_corpus / r["file"]
        byte_copy = tmp / f"{r['id']}_copy.mp4"
        byte_copy.write_bytes(src.read_bytes())
        variants = {
            "byte copy": byte_copy,
            "320x180 150k": ffmpeg(src, tmp / f"{r['id']}_small.mp4", "-vf", "scale=320:180", "-b:v", "150k"),
            "1280x720 3M": ffmpeg(src, tmp / f"{r['id']}_big.mp4", "-vf", "scale=1280:720", "-b:v", "3000k"),
            "crop 8%": ffmpeg(src, tmp / f"{r['id']}_crop.mp4", "-vf", "crop=iw*0.92:ih*0.92", "-crf", "28"),
            "corner crop 5%": ffmpeg(src, tmp / f"{r['id']}_corner.mp4", "-vf", "crop=iw*0.95:ih*0.95:0:0"),
        }
        out[r["id"]] = (fingerprint(first_clip(src)), {k: fingerprint(first_clip(p)) for k, p in variants.items()})
    return out


@pytest.mark.slow
def test_copies_reencodes_and_crops_are_within_the_distance(copies):
    """Measured on the small corpus's clean games: copies 0-24 bits of 128 from their original
    (median 8), the 5 % corner crop the farthest."""
    for vid, (original, variants) in copies.items():
        for name, fp in variants.items():
            assert hamming(original, fp) <= MAX_DISTANCE, (vid, name, hamming(original, fp))
        assert variants["byte copy"] == original


def test_different_levels_of_one_game_are_far_apart():
    """Sprite footage of one generator with other seeds (another level of the same game)."""
    fps = [fingerprint(sprite_frames(seed, CLIPS.spec)) for seed in range(8)]
    assert min(hamming(a, b) for a, b in itertools.combinations(fps, 2)) > MAX_DISTANCE


def test_collision_rate_between_different_corpus_videos(small_corpus):
    """Every 16 s window (2 s apart) of every clean or flawed corpus video against every window
    of the other videos: none is within the distance. (Measured: 0 of 539 pairs; the closest
    are 36 bits apart, median 64. On the full corpus, 1 of 18,002 pairs is within 24 bits, two
    runs of one game on the same screen; version 2's 64 bits had 4 within its 12.)"""
    rows = [json.loads(line) for line in (small_corpus / "catalog.jsonl").read_text().splitlines()]
    windows = []
    for r in rows:
        if r["expect_failure"] is not None:
            continue
        frames = np.stack(list(iter_frames(str(small_corpus / r["file"]), CLIPS)))
        windows += [(r["id"], fingerprint(frames[s: s + CLIPS.frames]))
                    for s in range(0, len(frames) - CLIPS.frames + 1, 20)]
    pairs = [hamming(a, b) for (va, a), (vb, b) in itertools.combinations(windows, 2) if va != vb]
    assert len(pairs) > 300
    assert sum(d <= MAX_DISTANCE for d in pairs) == 0, sorted(pairs)[:5]


def test_fingerprint_is_versioned_128_bits_and_survives_tiny_clips():
    fp = fingerprint(np.zeros((3, 8, 8, 3), np.uint8))
    version, _, bits = fp.partition(":")
    assert version == "v3" and len(bits) == 32 and int(bits, 16) >= 0
    with pytest.raises(ValueError):
        fingerprint(np.zeros((0, 8, 8, 3), np.uint8))


# ------------------------------------------------------------------------------ grouping
def row(key, video, fp, *, kept=True, quality=None, seconds=16.0, **extra):
    return {"key": key, "video_key": video, "source": "t", "start_s": 0.0, "duration_s": seconds, "kept": kept,
            "quality_score": quality, "fingerprint": fp, "channel": None, "query": None, **extra}


def flip(fp: str, bits) -> str:
    return f"{int(fp, 16) ^ sum(1 << b for b in bits):016x}"


FP = "0123456789abcdef"


def test_one_representative_per_group_by_the_documented_rule():
    """The longest video represents; a duplicate names its highest-priority representing
    neighbour, so no chain joins footage further apart."""
    new = [row("a_0", "a", FP), row("b_0", "b", flip(FP, [1, 20, 40, 63]), quality=0.9),
           row("c_0", "c", flip(FP, range(0, 64, 2))),       # 32 bits away: other footage
           row("d_0", "d", flip(FP, range(10)), seconds=160)]  # the longest video, 10 bits from a
    # d first (longest), then b (scored) then a; b is 12 bits from d: a representative too;
    # a is within reach of both and joins d, the first
    assert duplicates(new, [], GROUPING) == {"a_0": "d_0"}


def test_a_chain_keeps_the_clip_whose_only_neighbour_above_is_a_duplicate():
    """a > b > c in priority; b is near a and c, a and c are far apart: b duplicates a, and c
    (whose only neighbour above it is b, no representative) is kept."""
    new = [row("a_0", "a", FP, seconds=300), row("b_0", "b", flip(FP, range(8)), seconds=200),
           row("c_0", "c", flip(FP, range(16)), seconds=100)]
    assert duplicates(new, [], GROUPING) == {"b_0": "a_0"}
    # with a committed neighbour, the nearest committed clip is named
    earlier = [row("x_0", "x", flip(FP, range(60, 64))), row("y_0", "y", flip(FP, [63]))]
    assert duplicates(new[:1], earlier, GROUPING) == {"a_0": "y_0"}


def test_quality_then_key_break_ties_and_clips_of_one_video_never_group():
    new = [row("a_0", "a", FP), row("b_0", "b", FP, quality=0.8), row("b_1", "b", FP, quality=0.9)]
    dup = duplicates(new, [], GROUPING)
    assert dup == {"a_0": "b_1"}  # b_1 best quality; b_0 is b_1's own video: not a duplicate


def test_a_later_run_never_rejects_a_committed_clip_and_rejects_its_copies():
    earlier = [row("old_0", "old", FP, seconds=16)]
    new = [row("new_0", "new", flip(FP, [3, 9]), seconds=1600, quality=1.0)]
    assert curate(new, earlier, max_distance=GROUPING, caps={}) == {"new_0": ("duplicate", "old_0")}
    # rejected committed clips do not represent; a redone video's old rows are ignored
    assert curate(new, [row("old_0", "old", FP, kept=False)], max_distance=GROUPING, caps={}) == {}
    assert curate(new, [row("x_0", "new", FP)], max_distance=GROUPING, caps={}) == {}
    assert curate(new, earlier, max_distance=None, caps={}) == {}


@pytest.mark.parametrize("clips, width", [(None, 16), (30_000_000, 25)])
def test_lookup_by_bands_finds_every_pair_within_the_distance(clips, width):
    """At the default distance, against brute force on random 128-bit fingerprints with
    planted near copies at 0..MAX_DISTANCE+3 bits, split between this run and committed
    clips, some flips spread evenly over the bands (the pigeonhole's worst case); with the
    bands chosen for this handful of clips and for 30M (wider bands, a larger radius)."""
    assert band_bits_for(128, clips or 300, MAX_DISTANCE) == width
    bands = 128 // width
    rng = np.random.default_rng(0)
    base = [int.from_bytes(rng.bytes(16), "little") for _ in range(150)]
    earlier = [row(f"v{i}_0", f"v{i}", f"v3:{fp:032x}") for i, fp in enumerate(base) if i % 2]
    new = [row(f"v{i}_0", f"v{i}", f"v3:{fp:032x}") for i, fp in enumerate(base) if not i % 2]
    dist = {}
    for i in range(150):
        n = int(rng.integers(0, MAX_DISTANCE + 4))
        # a third spread evenly over the bands, as many flips in each
        pool = rng.permutation(128)[:n] if i % 3 else [width * (j % bands) + j // bands for j in range(n)]
        fp = base[i] ^ sum(1 << int(b) for b in pool)
        new.append(row(f"w{i}_0", f"w{i}", f"v3:{fp:032x}", seconds=1.0))
        dist[i] = n
    dup = duplicates(new, earlier, MAX_DISTANCE, clips=clips)
    for i in range(150):
        near = dup.get(f"w{i}_0")
        assert (near == f"v{i}_0") == (dist[i] <= MAX_DISTANCE), (i, dist[i], near)
    assert sum(d <= MAX_DISTANCE for d in dist.values()) > 100


def test_fingerprints_of_different_versions_never_group():
    """An output written before the fingerprint changed holds version-1 values (16 bare hex
    digits): the same 64 bits under another version are another measurement, not a copy."""
    bits = FP
    assert hamming(bits, flip(bits, [5])) == 1 and hamming("v2:" + bits, "v2:" + flip(bits, [5])) == 1
    with pytest.raises(ValueError, match="versions v1 and v2"):
        hamming(bits, "v2:" + bits)
    earlier = [row("old_0", "old", bits)]
    assert curate([row("new_0", "new", "v2:" + bits)], earlier, max_distance=GROUPING, caps={}) == {}
    assert curate([row("new_0", "new", bits)], earlier, max_distance=GROUPING, caps={}) == \
        {"new_0": ("duplicate", "old_0")}


def test_refilter_reelects_a_representative_the_threshold_rejects():
    """A duplicate group must not lose its last kept clip when refilter rejects the one it kept:
    the best member that passes the new threshold (longest video, then score) takes its place."""
    from genie_pipeline.filtering.quality.threshold import apply_threshold
    from genie_pipeline.shards.dedupe import apply_reelections, reelect

    def row(key, video, seconds, score, kept=True, reason="", dup=None):
        return {"key": key, "video_key": video, "duration_s": seconds, "quality_score": score, "kept": kept,
                "reason": reason, "duplicate_of": dup}

    rows = [row("a", "va", 16, 0.40),  # the representative; a threshold of 0.5 rejects it
            row("b", "vb", 16, 0.90, False, "duplicate", "a"),
            row("c", "vc", 16, 0.95, False, "duplicate", "a"),
            row("d", "vd", 16, 0.20, False, "duplicate", "a"),
            row("x", "vx", 16, 0.30),  # a group where no member passes: nothing restored
            row("y", "vy", 16, 0.10, False, "duplicate", "x")]
    apply_threshold(rows, 0.5)
    passes = lambda r: r["quality_score"] >= 0.5  # noqa: E731
    assert apply_reelections(rows, reelect(lambda: rows, passes)) == 1
    by = {r["key"]: r for r in rows}
    assert by["a"]["reason"] == "quality" and not by["a"]["kept"] and by["a"]["duplicate_of"] == "c"  # still a member
    assert by["c"]["kept"] and by["c"]["reason"] == "" and by["c"]["duplicate_of"] is None
    assert by["b"]["duplicate_of"] == "c" and by["d"]["duplicate_of"] == "c" and not by["b"]["kept"]
    assert not by["x"]["kept"] and by["y"]["duplicate_of"] == "x" and not by["y"]["kept"]
    assert reelect(lambda: rows, passes) == {}  # idempotent

    # a lower threshold lets the first representative back in: one kept clip per group, still
    apply_threshold(rows, 0.3)
    assert by["a"]["kept"] and by["c"]["kept"]  # the threshold alone would keep both copies
    passes = lambda r: r["quality_score"] >= 0.3  # noqa: E731
    apply_reelections(rows, reelect(lambda: rows, passes))
    assert [k for k in "abcd" if by[k]["kept"]] == ["c"]  # c (0.95) outranks a (0.40) at equal length
    assert by["a"]["reason"] == "duplicate" and by["a"]["duplicate_of"] == "c"
    assert by["x"]["kept"] and not by["y"]["kept"]  # x passes 0.3 again; y (0.10) does not


def test_refilter_never_reelects_past_a_cap():
    """A group whose representative a cap rejected keeps no clip: electing a member would
    bypass the cap that refilter does not re-evaluate."""
    from genie_pipeline.shards.dedupe import reelect

    rows = [{"key": "a", "video_key": "va", "duration_s": 16, "quality_score": 0.9, "kept": False,
             "reason": "cap:channel", "duplicate_of": None},
            {"key": "b", "video_key": "vb", "duration_s": 16, "quality_score": 0.9, "kept": False,
             "reason": "duplicate", "duplicate_of": "a"}]
    assert reelect(lambda: rows, lambda r: True) == {}
    rows[1].update(kept=True, reason="")  # a kept member of a capped group: the cap still stands
    assert reelect(lambda: rows, lambda r: True) == {}


def test_each_neighbour_pair_is_one_edge_however_many_bands_match():
    """Identical copies match in every band; the join still sends each pair once (a crowd of
    n look-alikes is n²/2 edges, not bands times that)."""
    new = [row(f"v{i}_0", f"v{i}", "v3:" + FP * 2, seconds=float(i + 1)) for i in range(40)]
    edges = neighbour_edges(new, [], MAX_DISTANCE)
    assert sum(len(e) for e in edges.values()) == 40 * 39 // 2
    assert duplicates(new, [], MAX_DISTANCE) == {f"v{i}_0": "v39_0" for i in range(39)}


def brute_pairs(new, earlier, max_distance):
    """Every pair (new clip, other clip) of different videos within the distance, as sorted
    key pairs; committed clips of a video this run redoes take no part."""
    redone = {r["video_key"] for r in new}
    rows = new + [r for r in earlier if r["video_key"] not in redone]
    return {tuple(sorted((a["key"], b["key"]))) for a in new for b in rows
            if a is not b and a["video_key"] != b["video_key"]
            and hamming(a["fingerprint"], b["fingerprint"]) <= max_distance}


@pytest.mark.parametrize("layout", [(25, 5, 5), (24, 2, 6), (18, 4, 4), (25, 1, 8)])
def test_wide_partitions_find_exactly_the_pairs_within_the_distance(layout):
    """At first-run and wide layouts (w bits a band, s sub-blocks, P prefix bits: 800
    partitions at (25, 5, 5)), with a crowd of identical look-alikes that overfills its
    partitions (so they are split, its queries sent to every share): the join's edges are
    exactly the pairs within the distance (brute force), each once."""
    rng = np.random.default_rng(3)
    base = [int.from_bytes(rng.bytes(16), "little") for _ in range(60)]
    width, bands = layout[0], 128 // layout[0]
    rows = []
    for i in range(240):
        n = int(rng.integers(0, MAX_DISTANCE + 5))
        # a third spread evenly over the bands (the pigeonhole's worst case)
        pool = rng.permutation(128)[:n] if i % 3 else [width * (j % bands) + j // bands for j in range(n)]
        fp = base[i % 60] ^ sum(1 << int(b) for b in pool)
        rows.append(row(f"c{i}_0", f"v{i % 200}", f"v3:{fp:032x}", seconds=float(rng.integers(1, 4)),
                        quality=float(rng.random())))
    crowd = [row(f"k{i}_0", f"k{i}", f"v3:{base[0] ^ (1 << i):032x}") for i in range(30)]
    new, earlier = rows[:150] + crowd, rows[150:]
    from genie_pipeline.shards.dedupe import RunClips, entries_in, join_parts, salts

    counts: dict[tuple, int] = {}
    run = RunClips.of(new, MAX_DISTANCE, committed=len(earlier), layout=layout)
    for batch in (*run.batches(new, new=True), *run.batches(earlier, new=False)):
        for key, value in join_parts(batch, MAX_DISTANCE):
            counts[key] = counts.get(key, 0) + entries_in(value)
    assert salts(counts)  # the crowd's partitions are split
    edges = neighbour_edges(new, earlier, MAX_DISTANCE, layout=layout)
    found = [tuple(sorted((q, k))) for q, es in edges.items() for _, k in es]
    assert len(found) == len(set(found))  # each pair once
    want = brute_pairs(new, earlier, MAX_DISTANCE)
    assert set(found) == want and len(want) > 30 * 29 // 2


def test_a_first_run_reaches_a_bounded_number_of_partitions_that_grow_with_the_output():
    """A first run (every clip new) cuts each band in r + 1 sub-blocks, one of which a pair
    matches exactly: a query reaches B·(r + 1) partitions, its own, and the partitions grow
    with the output up to the sub-blocks' width. A later run onto many more committed clips
    copies no entry (s = 1) and spreads its few queries instead."""
    from genie_pipeline.shards.dedupe import RunClips, entries_in, entry_counts, join_parts, layout_for, salts

    layouts = {n: layout_for(128, n, n, MAX_DISTANCE) for n in (10 ** 5, 3 * 10 ** 5, 10 ** 6, 10 ** 7)}
    # 10^5 clips fit one partition a band (7 records a clip); past that, sub-blocks
    assert layouts == {10 ** 5: (18, 1, 0), 3 * 10 ** 5: (18, 4, 2), 10 ** 6: (18, 4, 3), 10 ** 7: (25, 5, 5)}
    assert layout_for(128, 30_000_000, 30_000, MAX_DISTANCE)[1] == 1
    rng = np.random.default_rng(5)
    new = [row(f"v{i}_0", f"v{i}", f"v3:{int.from_bytes(rng.bytes(16), 'little'):032x}") for i in range(500)]
    run = RunClips.of(new, MAX_DISTANCE, committed=10 ** 7 - 500)
    run.new = 10 ** 7  # sized as a first run of 10^7 clips
    (batch,) = run.batches(new, new=True)
    parts = list(join_parts(batch, MAX_DISTANCE))
    reached: dict[str, int] = {}
    for _, (tag, b) in parts:
        for k in b.keys.tolist():
            reached[k] = reached.get(k, 0) + 1
    assert set(reached.values()) == {5 * 5}  # 5 bands × 5 sub-blocks, each once (BOTH)
    counted: dict[tuple, int] = {}
    for key, value in parts:
        counted[key] = counted.get(key, 0) + entries_in(value)
    assert dict(entry_counts(batch)) == counted  # what the job counts to split partitions
    assert len({key for key, _ in parts}) > 400  # of 800
    # a crowd's partitions are split into shares of about the mean; the others are not
    counts = {("p", i): 100 for i in range(100)} | {("crowd", 0): 1100}
    assert salts(counts) == {("crowd", 0): 11}
