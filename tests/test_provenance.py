"""Where each clip came from travels with it: manifest columns and shard JSON (issue 10)."""
import json
import tarfile

import pyarrow.parquet as pq

from genie_pipeline.config import parse_config
from genie_pipeline.ingest.pipeline import run_ingest
from genie_pipeline.shards.records import SCHEMA_VERSION
from tests.conftest import make_video


def test_catalog_provenance_reaches_manifest_and_shards_and_unknown_is_null(tmp_path):
    a = make_video(tmp_path / "a.mp4", 17, size="320x180", fps=10)
    b = make_video(tmp_path / "b.mp4", 17, size="320x180", fps=10, src="mandelbrot")
    rows = [{"id": "a", "path": str(a), "title": "a", "channel": "Speedrunners", "uploader": "ann",
             "upload_date": "2024-05-01", "license": "CC-BY"},
            {"id": "b", "path": str(b), "title": "b"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    run_ingest(parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl"),
                                          "keywords": "none"}],
                             "runner": {"running_mode": "in_memory"}, "output": {"dir": str(out)}}))
    table = pq.read_table(out / "manifest")
    assert table.schema.metadata[b"genie_pipeline.schema_version"] == str(SCHEMA_VERSION).encode()
    by = {r["video_id"]: r for r in table.to_pylist()}
    assert (by["a"]["channel"], by["a"]["uploader"], by["a"]["upload_date"], by["a"]["license"]) == \
        ("Speedrunners", "ann", "2024-05-01", "CC-BY")
    assert by["b"]["channel"] is None and by["b"]["license"] is None
    # not scored: NULL, so SQL's IS NULL and avg tell the truth
    assert table.column("quality_score").null_count == table.num_rows
    samples = {}
    for shard in (out / "shards").glob("*.tar"):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".json"):
                    j = json.loads(tar.extractfile(m).read())
                    samples[j["video_id"]] = j
    assert samples["a"]["provenance"]["license"] == "CC-BY" and samples["b"]["provenance"]["channel"] is None
    assert samples["a"]["scores"]["quality_score"] is None
