"""The curation join as the ingest job runs it (Beam, FnApiRunner): committed manifest parts
read by workers, fingerprints matched by partition, two rounds, caps per group. Its decisions
must equal the one-process `curate` on the same rows."""
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from genie_pipeline.filtering.config import DedupeConfig
from genie_pipeline.ingest.pipeline import CURATE_COLUMNS, curation_decisions
from genie_pipeline.shards.config import ShardsConfig
from genie_pipeline.shards import dedupe as join
from genie_pipeline.shards.dedupe import curate


def clip_rows(rng, n_videos, prefix, base):
    """Clips of `n_videos` videos; about a third copy a random base fingerprint (within 20
    bits), the rest unrelated; channels and queries from small sets so the caps bite."""
    rows = []
    for v in range(n_videos):
        vkey = f"{prefix}{v}"
        for c in range(int(rng.integers(1, 5))):
            if rng.random() < 0.35:
                fp = base[int(rng.integers(len(base)))] ^ sum(1 << int(b) for b in rng.permutation(128)[:rng.integers(0, 21)])
            else:
                fp = int.from_bytes(rng.bytes(16), "little")
            rows.append({"key": f"{vkey}_{c:03d}", "video_key": vkey, "source": f"s{v % 2}", "start_s": 16.0 * c,
                         "duration_s": 16.0, "kept": bool(rng.random() < 0.95),
                         "quality_score": None if rng.random() < 0.3 else float(rng.random()),
                         "fingerprint": f"v3:{fp:032x}" if rng.random() < 0.97 else None,
                         "channel": None if rng.random() < 0.2 else f"ch{int(rng.integers(4))}",
                         "query": f"q{int(rng.integers(3))}"})
    return rows


def write_manifest(out, rows, parts):
    (out / "manifest").mkdir(parents=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(rows)), parts)):
        pq.write_table(pa.Table.from_pylist([rows[j] for j in chunk]), out / "manifest" / f"run{i}-part.parquet")
    (out / "manifest" / "run9-broken.parquet").write_bytes(b"PAR1 not a parquet file")  # logged, skipped


@pytest.mark.parametrize("target", [None, 1])
def test_the_distributed_join_decides_as_curate_does(tmp_path, monkeypatch, target):
    """target 1: partitions aimed at one clip each, so the join takes its first-run layout
    (4 sub-blocks a band, 4 prefix bits: 512 partitions) and splits the ones the copies of
    a base fingerprint crowd."""
    if target is not None:
        monkeypatch.setattr(join, "TARGET_ENTRIES", target)
    rng = np.random.default_rng(7)
    base = [int.from_bytes(rng.bytes(16), "little") for _ in range(12)]
    earlier = clip_rows(rng, 25, "old", base)
    new = clip_rows(rng, 40, "new", base)
    new += [dict(r, key=r["key"].replace("old", "redo"), video_key=r["video_key"].replace("old", "redo"))
            for r in earlier[:3]]  # copies of committed clips
    new += [dict(r, key=r["key"] + "x") for r in earlier if r["video_key"] == "old1"]  # a redone video
    write_manifest(tmp_path, earlier, parts=3)
    dedupe = DedupeConfig()
    shards = ShardsConfig(max_clips_per_channel=14, max_clips_per_query=28, max_clips_per_source=45)
    want = curate(new, earlier, max_distance=dedupe.max_distance, caps=shards.caps)
    reasons = {reason for reason, _ in want.values()}
    assert {"duplicate", "cap:channel", "cap:query", "cap:source"} <= reasons, reasons  # every rule bites
    videos = {}
    for r in new:
        videos.setdefault(r["video_key"], []).append(SimpleNamespace(**{k: r[k] for k in CURATE_COLUMNS}))
    with beam.Pipeline(runner=FnApiRunner()) as p:
        got = curation_decisions(p, p | beam.Create([SimpleNamespace(clips=c) for c in videos.values()]),
                                 str(tmp_path), dedupe, shards)
        assert_that(got, equal_to(sorted(want.items())))


def test_without_dedupe_or_caps_nothing_is_read(tmp_path):
    with beam.Pipeline(runner=FnApiRunner()) as p:
        got = curation_decisions(p, p | beam.Create([]), str(tmp_path / "missing"),
                                 DedupeConfig(enabled=False), ShardsConfig())
        assert_that(got, equal_to([]))


def test_a_part_of_an_older_schema_or_broken_halfway_takes_no_part(tmp_path):
    """A manifest part written before fingerprints and channels existed reads as missing
    those columns; a part whose second row group is damaged gives nothing at all (the
    commit moves it aside), not the clips read before the damage."""
    from genie_pipeline.ingest.pipeline import committed_entries
    from genie_pipeline.shards.dedupe import RunClips

    fp = "v3:" + "0123456789abcdef" * 2
    new = [{"key": "new_0", "video_key": "new", "source": "s", "start_s": 0.0, "duration_s": 16.0, "kept": True,
            "quality_score": None, "fingerprint": fp, "channel": "c", "query": "q"}]
    run = RunClips.of(new, 24)
    old = tmp_path / "old.parquet"
    pq.write_table(pa.Table.from_pylist([{"key": "o_0", "video_key": "o", "source": "s", "start_s": 0.0,
                                          "duration_s": 16.0, "kept": True}]), old)
    out = list(committed_entries(str(old), run, 24, ["channel"]))
    assert [o.value for o in out] == [(("channel", "o"), 1)]  # counted (its own channel), no entry
    rows = [dict(new[0], key=f"old{i}_0", video_key=f"old{i}") for i in range(2000)]
    broken = tmp_path / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(rows), broken, row_group_size=1000, compression="none")
    offset = pq.ParquetFile(broken).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(broken.read_bytes())
    data[offset:offset + 16] = b"\xff" * 16
    broken.write_bytes(bytes(data))
    assert list(committed_entries(str(broken), run, 24, ["channel"])) == []
    assert len(list(committed_entries(str(tmp_path / "old.parquet"), run, 24, []))) == 0


def test_an_unreadable_quality_score_counts_as_unscored():
    """score_only keeps a clip whose frames could not be scored with a NaN score; it ranks as
    unscored, so of two copies the scored one represents."""
    from genie_pipeline.shards.dedupe import duplicates

    fp = "v3:" + "0123456789abcdef" * 2
    rows = [{"key": f"{v}_0", "video_key": v, "duration_s": 16.0, "kept": True, "quality_score": q, "fingerprint": fp}
            for v, q in (("a", float("nan")), ("b", 0.5))]
    assert duplicates(rows, [], 24) == {"a_0": "b_0"}
    assert duplicates([dict(r, quality_score=float("nan")) for r in rows], [], 24) == {"b_0": "a_0"}
