"""The curation join as the ingest job runs it (Beam, FnApiRunner): committed manifest parts
read by workers, fingerprints matched by partition, two rounds, caps per group. Its decisions
must equal the one-process `curate` on the same rows."""
from types import SimpleNamespace

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from genie_pipeline.filtering.config import DedupeConfig
from genie_pipeline.ingest.pipeline import CURATE_COLUMNS, curation_decisions
from genie_pipeline.shards.config import ShardsConfig
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


def test_the_distributed_join_decides_as_curate_does(tmp_path):
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
