"""The job's commit on GCS at scale: publish a run of N shards (each a `.tar` and its
`.stats.json`, so 2N objects to move) and N manifest rows, on the GCS emulator
(gcp-storage-emulator, in memory, on this machine). GCS has no rename: each move is a copy
and a delete, so the commit's time is its object requests and how many it has in flight.

    python benchmarks/commit_gcs.py --shards 10000 --label after

Staging is uploaded first (not timed); then `commit_parts` is timed whole, and the output is
checked: every shard in place, the index lists N, no staged object left. The result is merged
into benchmarks/results/commit_gcs.json under `--label` (before: the commit as it was, one
`exists` request per moved object and one delete request per replaced object, batches of 100
moves one after another; after: listings instead of `exists`, batched deletes, batches in
parallel). Run from the repository root with the project's venv.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's code (a copy of an older one for `before`)


def stage(root: str, run_id: str, n: int) -> tuple[list, dict]:
    """N tiny shards and their stats files under OUT/shards/_tmp/RUN, and one manifest part
    naming them. One shard and one stats file are uploaded, the rest are copies of them made
    by the store in batch requests (uploading 2N objects one request each takes the emulator
    far longer than the commit); the commit never reads them, so their content is no matter."""
    from apache_beam.io.gcp.gcsio import GcsIO

    from genie_pipeline.shards import fs, objstore
    from genie_pipeline.shards.commit import shard_stats_file, write_parts
    from genie_pipeline.shards.records import ShardRecord

    out = fs.join(root, "out")
    tmp = fs.join(out, "shards", "_tmp", run_id)
    records = [ShardRecord(path=fs.join(tmp, f"train-{run_id}-00000000-{i:04d}.tar"), split="train",
                           order=f"{i:08d}", stats={"n_samples": 1, "n_videos": 1, "bytes": 1024, "seconds": 16.0,
                                                    "sha256": "0" * 64}) for i in range(n)]
    tar_t, stats_t = fs.join(out, "_template.tar"), fs.join(out, "_template.stats.json")
    fs.write_bytes(tar_t, b"\0" * 1024)
    fs.write_bytes(stats_t, shard_stats_file(records[0], os.path.basename(records[0].path))[1])
    pairs = [(tar_t, r.path) for r in records] + [(stats_t, shard_stats_file(r, "")[0]) for r in records]

    def copy(chunk):
        failed = [p for p in GcsIO(pipeline_options=objstore.options()).copy_batch(chunk) if p[2]]
        assert not failed, failed[:3]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(copy, [pairs[i: i + 100] for i in range(0, len(pairs), 100)]))
    for p in (tar_t, stats_t):
        fs.remove(p)
    rows = [{"key": f"k{i:08d}", "video_key": f"v{i:08d}", "kept": True, "split": "train", "duration_s": 16.0,
             "shard": os.path.basename(r.path)} for i, r in enumerate(records)]
    parts = {"manifest": write_parts(fs.join(out, "_runs", run_id, "manifest"), "manifest", run_id, rows)}
    return records, parts


# gcp-storage-emulator writes its whole metadata (every object) as JSON after each change, so
# a request costs O(objects in the store) and 10k shards (20k objects, 40k requests) would
# time the emulator, not the commit. In memory that JSON is never read back (it is read only
# at start), so the benchmark's emulator skips writing it; requests then cost what they do.
LAUNCH = ("import sys; from gcp_storage_emulator import storage; "
          "storage.Storage._write_config_to_file = lambda self: None; "
          "from gcp_storage_emulator.__main__ import main; main(sys.argv[1:])")


@contextlib.contextmanager
def gcs_emulator():
    """tests/emulators.py's GCS emulator, started with the metadata write skipped."""
    from tests import emulators

    real = emulators._bin
    emulators._bin = lambda name: name if name != "gcp-storage-emulator" else "__launch__"
    real_server = emulators._server

    @contextlib.contextmanager
    def server(cmd, url):
        if cmd[0] == "__launch__":
            cmd = [sys.executable, "-c", LAUNCH, *cmd[1:]]
        with real_server(cmd, url) as proc:
            yield proc

    emulators._server = server
    try:
        with emulators.gcs_emulator() as emu:
            yield emu
    finally:
        emulators._bin, emulators._server = real, real_server


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=10_000)
    ap.add_argument("--label", required=True, help="the result's name in the JSON (before / after)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "commit_gcs.json"))
    args = ap.parse_args()

    from genie_pipeline.shards import fs
    from genie_pipeline.shards.config import ClipsConfig
    from genie_pipeline.shards.commit import commit_parts
    from genie_pipeline.shards.reader import existing_shards, read_rows

    with gcs_emulator() as emu:
        root = emu.bucket()
        run_id = "20261207T000000-abcdef"
        t0 = time.time()
        records, parts = stage(root, run_id, args.shards)
        staged_s = time.time() - t0
        out = fs.join(root, "out")
        t0 = time.time()
        commit_parts(out, run_id=run_id, parts=parts, shard_records=records, spec=ClipsConfig().spec,
                     run_stats={"run_id": run_id}, cleanup=[fs.join(out, "_runs", run_id),
                                                          fs.join(out, "shards", "_tmp", run_id)], redone=set())
        commit_s = time.time() - t0
        shards = existing_shards(fs.join(out, "shards"), "train")
        index = json.loads(fs.read_bytes(fs.join(out, "shards", "train.index.json")))
        left = fs.glob(fs.join(out, "shards", "_tmp", "**")) + fs.glob(fs.join(out, "_runs", "**"))
        assert len(shards) == args.shards, len(shards)
        assert len(index["shardlist"]) == args.shards
        assert len(read_rows(out, "manifest")) == args.shards
        assert not left, left[:3]
    result = {"shards": args.shards, "objects_moved": 2 * args.shards + len(parts["manifest"]),
              "commit_s": round(commit_s, 1), "staging_upload_s": round(staged_s, 1),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
              "store": "gcp-storage-emulator, in memory, same machine, its metadata JSON write skipped (LAUNCH)", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result))
    path = Path(args.out)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[args.label] = result
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
