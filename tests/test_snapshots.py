"""Snapshots (issue 26): every commit is an immutable version that readers can pin; gc keeps
what retained snapshots name; triggers run a command per new snapshot."""
import hashlib
import json
import os
import sys

import pytest

from genie_pipeline.cli import main
from genie_pipeline.filtering.quality import refilter
from genie_pipeline.shards import retention, snapshots
from genie_pipeline.shards.config import ShardsConfig
from genie_pipeline.shards.reader import DataError, existing_shards, live_shards, read_rows, resolve_inputs
from genie_pipeline.shards.verify import verify
from tests.fixtures.output import write_quality_output


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def scored(out: str, good_sources=("sim",)) -> list[dict]:
    """The manifest with scores that keep the clips of `good_sources` only."""
    return [dict(m, quality_score=0.9 if m["source"] in good_sources else 0.1) for m in read_rows(out, "manifest")]


@pytest.fixture
def output(tmp_path):
    out = str(tmp_path / "out")
    write_quality_output(out, n_good=4, n_bad=2, clips_per_video=2, val_every=3)
    return out


def test_commits_write_snapshots_that_pin_their_files_and_gc_frees_what_none_names(output):
    out = output
    first = snapshots.read(out)
    assert snapshots.latest_id(out) == first["id"] and first["parent"] is None and first["kind"] == "ingest"
    assert first["counts"]["clips_kept"] == sum(r["kept"] for r in read_rows(out, "manifest"))
    assert first["clip_spec"] and first["tables"]["manifest"]
    for split in ("train", "val"):
        for e in snapshots.shards_of(out, first, split):
            assert sha(e["path"]) == e["sha256"] and os.path.getsize(e["path"]) == e["bytes"]
    before = {e["path"]: e["sha256"] for s in ("train", "val") for e in snapshots.shards_of(out, first, s)}

    r = refilter(out, 0.5, ShardsConfig(), None, rows=scored(out))
    assert r["rejected"] > 0
    second = snapshots.read(out)
    assert second["parent"] == first["id"] and second["kind"] == "refilter" and second["id"] != first["id"]
    # nothing the first snapshot names was modified or deleted: the rewrite made new files
    for path, digest in before.items():
        assert sha(path) == digest
    for relpath in first["tables"]["manifest"]:
        assert os.path.exists(snapshots.part_path(out, relpath))
    new_shards = {e["path"] for s in ("train", "val") for e in snapshots.shards_of(out, second, s)}
    assert new_shards - set(before) and set(before) - new_shards
    assert verify(out) == []  # the current version is consistent; the retained files do not count
    assert set(live_shards(os.path.join(out, "shards"), "train")) == {
        e["path"] for e in snapshots.shards_of(out, second, "train")}

    # pinning: OUT is LATEST, OUT@ID that snapshot, with each shard's hash
    now, then = resolve_inputs([out]), resolve_inputs([f"{out}@{first['id']}"])
    assert now.snapshots == {out: second["id"]} and then.snapshots == {out: first["id"]}
    assert set(then.shards) == {p for p in before if "/train-" in p}
    assert all(then.sha256[p] == before[p] for p in then.shards)

    # the diff: the bad source's clips left, nothing came
    d = retention.diff(out, first["id"], second["id"])
    assert d["added"]["total"] == 0 and d["removed"]["total"] == r["rejected"]
    assert set(d["removed"]["by_source"]) == {"web"} and sum(d["removed"]["by_split"].values()) == r["rejected"]

    # gc: a dry run frees nothing; retention 1 deletes exactly what only the first names
    all_files = set(existing_shards(os.path.join(out, "shards"), "train"))
    dry = retention.gc(out, keep=1, dry_run=True)
    assert dry["files"] > 0 and dry["bytes"] > 0 and all(os.path.exists(p) for p in dry["paths"])
    done = retention.gc(out, keep=1)
    assert done["paths"] == dry["paths"] and done["dropped"] == [first["id"]]
    assert not any(os.path.exists(p) for p in done["paths"])
    assert set(existing_shards(os.path.join(out, "shards"), "train")) == all_files & new_shards
    assert verify(out) == [] and resolve_inputs([out]).snapshots == {out: second["id"]}
    with pytest.raises(DataError, match=first["id"]):
        resolve_inputs([f"{out}@{first['id']}"])
    assert retention.gc(out, keep=1)["files"] == 0  # nothing more to free


def test_a_commit_that_changes_nothing_is_no_new_snapshot(output):
    from genie_pipeline.shards.commit import commit_run
    from genie_pipeline.shards.reader import read_spec

    first = snapshots.latest_id(output)
    commit_run(output, candidates=[], failures=[], videos=[], shard_records=[], stats={}, spec=read_spec(output),
               cleanup=[])
    assert snapshots.latest_id(output) == first and len(snapshots.list_all(output)) == 1


def test_cli_lists_diffs_gcs_and_watch_runs_once_per_new_snapshot(output, tmp_path, capsys):
    out = output
    first = snapshots.latest_id(out)
    refilter(out, 0.5, ShardsConfig(), None, rows=scored(out))
    second = snapshots.latest_id(out)
    assert main(["snapshots", out]) == 0
    listing = capsys.readouterr().out
    assert first in listing and f"{second}" in listing and "refilter" in listing
    assert main(["snapshots", out, "--diff", first, second]) == 0
    diff = capsys.readouterr().out
    assert "clips added" in diff and "web" in diff
    assert main(["snapshots", out, "--latest"]) == 0 and capsys.readouterr().out.strip() == second
    assert main(["snapshots", out, "--diff", "20000101T000000-abcdef"]) == 2  # names the missing one
    assert "20000101T000000-abcdef" in capsys.readouterr().err

    # watch: --after none counts the current snapshot as new; the command gets the env
    log = tmp_path / "hook.jsonl"
    hook = (f"{sys.executable} -c \"import json, os; open({str(log)!r}, 'a').write(json.dumps("
            "{k: v for k, v in os.environ.items() if k.startswith('GENIE_')}) + chr(10))\"")
    assert main(["watch", out, "--every", "1s", "--then", hook, "--after", "none", "--max-runs", "1"]) == 0
    (env,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert env["GENIE_SNAPSHOT"] == second and env["GENIE_OUTPUT"] == out and env["GENIE_PARENT"] == first
    assert int(env["GENIE_CLIPS_KEPT"]) == sum(r["kept"] for r in read_rows(out, "manifest"))
    assert main(["watch", out, "--every", "10x", "--then", "true"]) == 2
    assert main(["watch", out, "--then", "false", "--after", "none", "--max-runs", "1"]) == 1  # reported

    assert main(["gc", out, "--keep", "1", "--dry-run"]) == 0
    assert "would free" in capsys.readouterr().out
    assert main(["gc", out, "--keep", "0"]) == 2
    assert main(["gc", out, "--keep", "1"]) == 0
    assert "freed" in capsys.readouterr().out and main(["snapshots", out, "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [second]


def test_gc_never_runs_while_a_run_holds_the_output(output, capsys):
    from genie_pipeline.shards import fs

    with fs.output_lock(output, "ingest"):
        assert main(["gc", output, "--keep", "1"]) == 1
    assert "in use by another run" in capsys.readouterr().err


def test_the_loader_reads_the_pinned_snapshot_and_checks_every_byte(output):
    """The fast variant of the concurrent test: pin, let a refilter rewrite the shards, read
    one epoch: exactly the pinned clips, every shard's bytes hashing to its record. A pinned
    shard changed on disk is caught and counted as a bad shard."""
    from genie_pipeline.training.loader import WindowDataset, fresh_position

    out = output
    pinned = resolve_inputs([out])
    first = snapshots.read(out)
    keys = {r["key"] for r in read_rows(out, "manifest") if r["kept"] and r["split"] == "train"}
    refilter(out, 0.5, ShardsConfig(), None, rows=scored(out))
    assert snapshots.latest_id(out) != first["id"]
    assert not set(pinned.shards) <= set(live_shards(os.path.join(out, "shards"), "train"))  # the pin matters

    def epoch(ds: WindowDataset) -> tuple[set[str], dict]:
        stats = fresh_position(0)
        return {c.key for c in ds._clips(0, 0, stats)}, stats

    ds = WindowDataset(pinned.shards, 2, 8, sha256=pinned.sha256, max_bad_shard_fraction=1.0)
    got, stats = epoch(ds)
    assert got == keys and stats["bad_shards"] == 0 and stats["shards_read"] == len(pinned.shards)
    victim = pinned.shards[0]
    data = bytearray(open(victim, "rb").read())
    data[-1] ^= 1  # the tar's zero padding: still a readable tar, but not the pinned bytes
    open(victim, "wb").write(bytes(data))
    _, stats = epoch(ds)
    assert stats["bad_shards"] == 1


def test_verify_checks_each_shard_against_the_hash_its_snapshot_recorded(output):
    (shard,) = live_shards(os.path.join(output, "shards"), "val")
    assert verify(output, decode=False) == []
    data = bytearray(open(shard, "rb").read())
    data[-1] ^= 1  # tar padding: the tar still reads, the bytes are not the snapshot's
    open(shard, "wb").write(bytes(data))
    (problem,) = verify(output, decode=False)
    assert os.path.basename(shard) in problem and "sha256" in problem


def test_a_split_the_refilter_empties_has_no_shards_in_the_new_version(output):
    refilter(output, 0.5, ShardsConfig(), None,
             rows=[dict(m, quality_score=0.1 if m["split"] == "val" else 0.9) for m in read_rows(output, "manifest")])
    assert live_shards(os.path.join(output, "shards"), "val") == []
    assert existing_shards(os.path.join(output, "shards"), "val")  # kept for the first snapshot
    assert verify(output, decode=False) == []
    with pytest.raises(DataError, match="no val shards"):
        resolve_inputs([output], "val")
    # the next commit does not bring the retained val shard back into the current version
    from genie_pipeline.shards.commit import commit_run
    from genie_pipeline.shards.reader import read_spec

    commit_run(output, candidates=[], failures=[], videos=[], shard_records=[], stats={}, spec=read_spec(output),
               cleanup=[])
    assert live_shards(os.path.join(output, "shards"), "val") == [] and verify(output, decode=False) == []


def test_eval_reads_the_val_shards_of_the_pinned_snapshot(output, tmp_path):
    """`eval --data OUT@ID`, and eval of a run without --data (the snapshot its run.json pinned)."""
    from genie_pipeline.training.eval import eval_shards

    first = snapshots.read(output)
    val = [e["path"] for e in snapshots.shards_of(output, first, "val")]
    refilter(output, 0.5, ShardsConfig(), None,
             rows=[dict(m, quality_score=0.1 if m["split"] == "val" else 0.9) for m in read_rows(output, "manifest")])
    assert eval_shards(None, [f"{output}@{first['id']}"]) == val
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"inputs": [output], "snapshots": {output: first["id"]}}))
    assert eval_shards(run, None) == val
    with pytest.raises(DataError, match="no val shards"):  # the current version has none
        eval_shards(None, [output])
