"""Faults swept over the job's steps, on the object-store emulators.

The real ingest job (Beam's FnApiRunner, in this process so the fault-injecting filesystem of
tests/faults.py sees every object operation) writes into a bucket. Each named step runs
twice on the same input, as a retried bundle would (CutOrLoad, WriteAsCut, PurgeShards,
CommitRun: the first attempt's outputs are dropped, its side effects stay). At the k-th
object operation a request fails, or the worker dies (no handler of the step runs); the job
stops. Then `recover()` and a rerun, and the output must be what a clean run gives: the same
kept clip keys, every shard holding exactly the clips the manifest puts in it, `verify`
clean, nothing left in staging, the clip stores deleted after the commit.

The fast test sweeps a few k; the slow one every step more widely, on GCS and S3.
"""
from __future__ import annotations

import json
import os
import threading

import pytest

from genie_pipeline.ingest import pipeline
from genie_pipeline.shards import fs

from tests import faults
from tests.conftest import make_video

STEPS = ("CutOrLoad", "WriteAsCut", "PurgeShards", "CommitRun")
ORIG = {"CutOrLoad": pipeline.CutOrLoad, "WriteAsCut": pipeline.WriteAsCut, "purge_shard": pipeline.purge_shard,
        "commit_job": pipeline.commit_job}


# ------------------------------------------------------------------ each step twice
def _attempts(step: str, fn):
    """fn() twice, as a retried bundle; the second attempt's result. A Killed worker stops
    the job as a failed step (Beam's runner needs an Exception to report it)."""
    with faults.step(step):
        try:
            fn()
            return fn()
        except faults.Killed as e:
            raise RuntimeError(f"worker killed: {e}") from None


class TwiceCutOrLoad:
    def __init__(self, cut, count):
        self.inner = ORIG["CutOrLoad"](cut, count)

    def __call__(self, item):
        return _attempts("CutOrLoad", lambda: self.inner(item))


class TwiceWriteAsCut(ORIG["WriteAsCut"]):
    """The bundle's videos written twice at its end, by fresh writers; the second attempt's
    shards and rows go on (WriteAsCut's outputs, windowed as finish_bundle must)."""

    def start_bundle(self):
        self.items = []

    def process(self, v):
        self.items.append(v)
        return []

    def finish_bundle(self):
        from apache_beam.pvalue import TaggedOutput
        from apache_beam.transforms.window import GlobalWindow
        from apache_beam.utils.timestamp import MIN_TIMESTAMP
        from apache_beam.utils.windowed_value import WindowedValue

        def attempt():
            super(TwiceWriteAsCut, self).start_bundle()
            out = [o for v in self.items for o in super(TwiceWriteAsCut, self).process(v)]
            return out + list(super(TwiceWriteAsCut, self).finish_bundle())

        for o in _attempts("WriteAsCut", attempt):
            if isinstance(o, TaggedOutput):
                value = o.value if isinstance(o.value, WindowedValue) else WindowedValue(o.value, MIN_TIMESTAMP,
                                                                                         [GlobalWindow()])
                yield TaggedOutput(o.tag, value)
            else:
                yield WindowedValue(o, MIN_TIMESTAMP, [GlobalWindow()])


def twice_purge_shard(item):
    return _attempts("PurgeShards", lambda: list(ORIG["purge_shard"](item)))


def twice_commit_job(*args, **kw):
    return _attempts("CommitRun", lambda: list(ORIG["commit_job"](*args, **kw)))


# ------------------------------------------------------------------ the job
@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    """5 videos of 4 clips each; v4 is a byte copy of v0 (its clips are duplicates, which
    curation takes out of the shards WriteAsCut already wrote: PurgeShards has work)."""
    tmp = tmp_path_factory.mktemp("catalog")
    rows = []
    for i, src in enumerate(("testsrc2", "testsrc", "mandelbrot", "life")):  # four unlike videos
        make_video(tmp / f"v{i}.mp4", 8.5, "160x90", 10, src=src)
        rows.append({"id": f"v{i}", "path": f"v{i}.mp4", "title": f"video {i}"})
    (tmp / "v4.mp4").write_bytes((tmp / "v0.mp4").read_bytes())
    rows.append({"id": "v4", "path": "v4.mp4", "title": "video 4"})
    (tmp / "catalog.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp / "catalog.jsonl")


def _config(catalog: str, out: str):
    from genie_pipeline.config import parse_config

    return parse_config({
        "sources": [{"type": "catalog", "name": "c", "path": catalog, "format": "jsonl", "keywords": "none"}],
        "clips": {"seconds": 2},
        # one clip a shard: WriteAsCut writes shards once 16 clips wait (ShardMixer.hold_clips)
        "shards": {"val_fraction": 0.0, "max_clips": 1, "keep_clip_store": False},
        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
        "output": {"dir": out}})


def _run(catalog: str, out: str) -> None:
    import contextlib
    import io

    with contextlib.redirect_stderr(io.StringIO()):
        pipeline.run_ingest(_config(catalog, out))


def _twice(monkeypatch) -> None:
    monkeypatch.setattr(pipeline, "CutOrLoad", TwiceCutOrLoad)
    monkeypatch.setattr(pipeline, "WriteAsCut", TwiceWriteAsCut)
    monkeypatch.setattr(pipeline, "purge_shard", twice_purge_shard)
    monkeypatch.setattr(pipeline, "commit_job", twice_commit_job)


def check_output(out: str, kept: set[str]) -> None:
    """The invariants after a fault, `recover()` and a rerun."""
    from genie_pipeline.shards.reader import JOURNAL, SPLITS, iter_tar_samples, live_shards, read_rows
    from genie_pipeline.shards.verify import verify

    manifest = read_rows(out, "manifest")
    keys = [m["key"] for m in manifest]
    assert len(keys) == len(set(keys)), "a clip key twice in the manifest"
    assert {m["key"] for m in manifest if m["kept"]} == kept
    rows_of: dict[str, set[str]] = {}
    for m in manifest:
        if m["kept"]:
            rows_of.setdefault(m["shard"], set()).add(m["key"])
    in_shards = {os.path.basename(p): {k for k, _ in iter_tar_samples(p)}
                 for split in SPLITS for p in live_shards(fs.join(out, "shards"), split)}
    assert in_shards == rows_of  # no shard without its rows, none with rows missing
    assert verify(out, decode=False) == []
    staged = [p for d in ("_runs", "_commit", "shards/_tmp", "clips") for p in fs.glob(fs.join(out, d, "**"))]
    assert not staged and not fs.exists(fs.join(out, JOURNAL)), staged[:5]
    assert [v["status"] for v in read_rows(out, "videos")] == ["done"] * 5


def sweep(emu, catalog: str, monkeypatch, per_step: int, modes=("fail", "kill")) -> list[tuple]:
    """A clean run (its kept keys and each step's operations), then one faulted run per k
    picked in each step, each followed by recover() and a rerun; returns the (step, k, mode)
    swept. Every run's steps run twice (`_twice`)."""
    from genie_pipeline.shards.commit import recover
    from genie_pipeline.shards.reader import read_rows

    _twice(monkeypatch)
    with faults.FaultyFs(monkeypatch) as ffs:
        clean = fs.join(emu.bucket(), "out")
        _run(catalog, clean)
        kept = {m["key"] for m in read_rows(clean, "manifest") if m["kept"]}
        assert kept and len(kept) < len(read_rows(clean, "manifest"))  # duplicates were taken out
        check_output(clean, kept)
        steps = {s: ffs.in_step(s) for s in STEPS}
        print(f"object operations of a clean run: {len(ffs.ops)}, per step: {({s: len(k) for s, k in steps.items()})}")
        assert all(steps.values()), {s: len(k) for s, k in steps.items()}
        swept = []
        for i, (name, ks) in enumerate(steps.items()):
            for j, k in enumerate(faults.spread(ks, per_step)):
                mode = modes[(i + j) % len(modes)]
                out = fs.join(emu.bucket(), "out")
                ffs.reset(fail_at=k, mode=mode)
                try:  # the job stops, or (a failed lookup: a clip store looked for) goes on
                    _run(catalog, out)
                except Exception:  # noqa: BLE001 — whatever the runner makes of the fault
                    pass
                assert ffs.fired, (name, k, mode)
                ffs.reset()
                recover(out)
                _run(catalog, out)
                check_output(out, kept)
                swept.append((name, k, mode))
    return swept


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 9 ingest runs
def test_a_fault_in_each_step_then_recover_and_rerun_gives_the_clean_output(gcs, catalog, monkeypatch):
    swept = sweep(gcs, catalog, monkeypatch, per_step=1)
    print(f"gcs: faults swept (step, k, mode): {swept}")
    assert {s for s, _, _ in swept} == set(STEPS)


@pytest.mark.slow
@pytest.mark.timeout(5400)  # 25 ingest runs
@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_faults_swept_over_every_step(store, catalog, monkeypatch, request):
    swept = sweep(request.getfixturevalue(store), catalog, monkeypatch, per_step=3)
    print(f"{store}: {len(swept)} faults swept: {swept}")
    assert len(swept) == 4 * 3


# ------------------------------------------------------------------ the commit alone (fast)
def _shard(path: str, split: str, keys: list[str]):
    """A staged shard of `keys` (tiny fake clips: the commit decodes nothing) and its stats."""
    import hashlib
    import io

    import webdataset as wds

    from genie_pipeline.shards.commit import shard_stats_file
    from genie_pipeline.shards.records import ShardRecord

    buf = io.BytesIO()
    with wds.TarWriter(buf) as tw:
        for k in keys:
            vkey = k.rsplit("_", 1)[0]
            meta = {"key": k, "video_key": vkey, "video_id": vkey.split("_", 1)[1], "source": "c", "start_s": 0.0,
                    "fps": 10, "n_frames": 20, "width": 160, "height": 90, "split": split, "scores": {}}
            tw.write({"__key__": k, "mp4": b"\0" * 64, "json": json.dumps(meta).encode()})
    data = buf.getvalue()
    fs.write_bytes(path, data)
    rec = ShardRecord(path=path, split=split, order=os.path.basename(path), stats={
        "n_samples": len(keys), "n_videos": len({k.rsplit("_", 1)[0] for k in keys}), "bytes": len(data),
        "seconds": 2.0 * len(keys), "sha256": hashlib.sha256(data).hexdigest()})
    fs.write_bytes(*shard_stats_file(rec, os.path.basename(path)))
    return rec


def _stage_run(out: str, run_id: str, videos: dict[str, int]):
    """A run's staged table parts and shards as the job leaves them for its commit: `videos`
    {video id: clips (0: the video failed)}, every clip kept, two clips a shard."""
    from genie_pipeline.shards.commit import write_parts

    keys = [f"c_{v}_{i * 2000:09d}" for v, n in videos.items() for i in range(n)]
    tmp = fs.join(out, "shards", "_tmp", run_id)
    records, shard_of = [], {}
    for j in range(0, len(keys), 2):
        name = f"train-{run_id}-00000000-{j // 2:04d}.tar"
        records.append(_shard(fs.join(tmp, name), "train", keys[j: j + 2]))
        shard_of.update((k, name) for k in keys[j: j + 2])
    manifest = [{"key": k, "video_key": k.rsplit("_", 1)[0], "video_id": k.split("_")[1], "source": "c",
                 "kept": True, "reason": "", "split": "train", "duration_s": 2.0, "shard": shard_of[k]} for k in keys]
    vrows = [{"video_key": f"c_{v}", "video_id": v, "source": "c", "status": "done" if n else "failed",
              "n_clips": n, "n_kept": n,
              "seconds_in": 10.0, "split": "train"} for v, n in videos.items()]
    run_dir = fs.join(out, "_runs", run_id)
    half = len(manifest) // 2  # two parts: a listing mid-commit could hold one and not the other
    parts = {"manifest": write_parts(fs.join(run_dir, "manifest"), "manifest", run_id, manifest[:half])
             + write_parts(fs.join(run_dir, "manifest"), "manifest", run_id, manifest[half:]),
             "videos": write_parts(fs.join(run_dir, "videos"), "videos", run_id, vrows)}
    return records, parts, [run_dir, tmp, fs.join(out, "_commit", run_id)]


RUN_A, RUN_B = "20261207T000000-aaaaaa", "20261207T010000-bbbbbb"


def _commit(out: str, run_id: str, staged) -> None:
    from genie_pipeline.shards.commit import commit_parts
    from genie_pipeline.shards.config import ClipsConfig

    records, parts, cleanup = staged
    with faults.step("CommitRun"):
        commit_parts(out, run_id=run_id, parts=parts, shard_records=records, spec=ClipsConfig().spec,
                     run_stats={"run_id": run_id}, cleanup=cleanup, redone={"c_a1"} if run_id == RUN_B else set())


def _keys(out: str) -> list[str]:
    from genie_pipeline.shards.reader import read_rows

    return sorted(m["key"] for m in read_rows(out, "manifest"))


def _snapshot(out: str) -> tuple[list, list]:
    """What a reader sees of the tables a commit changes: the manifest's keys and the
    videos' (id, status)."""
    from genie_pipeline.shards.reader import read_rows

    return _keys(out), sorted((v["video_id"], v["status"]) for v in read_rows(out, "videos"))


def commit_sweep(emu, monkeypatch, n: int | None) -> int:
    """Run A committed (a1 failed); run B (which retried a1: its row in A's videos part is
    replaced, so that part is rewritten; and adds b0, b1) is committed with a fault at the
    k-th object operation of its commit, for `n` k spread over them (None: every k), the
    fault a failed request or a killed worker in turn. Meanwhile a reader sees the manifest
    of A or of B, never a mix (mid-commit, with the journal there, B's). Then recover() and
    the commit again (a retried step): the output is B's, as a clean commit leaves it."""
    from genie_pipeline.shards.commit import recover
    from genie_pipeline.shards.reader import JOURNAL

    def fresh() -> str:
        out = fs.join(emu.bucket(), "out")
        _commit(out, RUN_A, _stage_run(out, RUN_A, {"a0": 2, "a1": 0, "a2": 1}))
        return out

    with faults.FaultyFs(monkeypatch) as ffs:
        out = fresh()
        before = _snapshot(out)
        staged = _stage_run(out, RUN_B, {"a1": 1, "b0": 1, "b1": 2})
        ffs.reset()
        _commit(out, RUN_B, staged)
        ks = ffs.in_step("CommitRun")
        # the operations between the journal's write and its removal: the output mid-commit
        [written] = [i + 1 for i, (_, name, path) in enumerate(ffs.ops) if name == "write" and path.endswith(JOURNAL)]
        [removed] = [i + 1 for i, (_, name, path) in enumerate(ffs.ops) if name == "remove" and path.endswith(JOURNAL)]
        applying = [k for k in ks if written < k <= removed]
        after = _snapshot(out)
        assert len(before[0]) == 3 and len(after[0]) == 3 + 4 and len(set(after[0])) == len(after[0])
        _commit(out, RUN_B, staged)  # the commit step retried after it finished: nothing changes
        check_commit(out, after[0])
        # n of them: the first mid-commit operation on, not the journal's removal (the last)
        picked = ks if n is None else faults.spread(applying, n + 1)[:n]
        for i, k in enumerate(picked):
            out = fresh()
            staged = _stage_run(out, RUN_B, {"a1": 1, "b0": 1, "b1": 2})
            ffs.reset(fail_at=k, mode=("fail", "kill")[i % 2])
            try:  # stops the commit, or (a failed read of the journal or stats, taken as a
                _commit(out, RUN_B, staged)  # change under a listing: it lists again) not
            except (faults.InjectedFault, faults.Killed):
                pass
            assert ffs.fired
            ffs.reset()
            seen = _snapshot(out)
            assert seen in (before, after), f"k={k}: a reader saw neither A's tables nor B's: {seen}"
            if fs.exists(fs.join(out, JOURNAL)):
                assert seen == after, f"k={k}: mid-commit the reader must see the commit's result"
            recover(out)
            _commit(out, RUN_B, staged)
            check_commit(out, after[0])
    return len(picked)


def check_commit(out: str, keys: list[str]) -> None:
    from genie_pipeline.shards.reader import JOURNAL, iter_tar_samples, live_shards, read_rows, read_stats
    from genie_pipeline.shards.verify import verify

    assert _keys(out) == keys
    rows_of: dict[str, set[str]] = {}
    for m in read_rows(out, "manifest"):
        rows_of.setdefault(m["shard"], set()).add(m["key"])
    in_shards = {os.path.basename(p): {k for k, _ in iter_tar_samples(p)}
                 for p in live_shards(fs.join(out, "shards"), "train")}
    assert in_shards == rows_of  # no shard without its rows, none with rows missing
    assert verify(out, decode=False) == []
    videos = sorted((v["video_id"], v["status"]) for v in read_rows(out, "videos"))
    assert videos == [("a0", "done"), ("a1", "done"), ("a2", "done"), ("b0", "done"), ("b1", "done")]
    assert read_stats(out)["last_run"]["run_id"] == RUN_B
    staged = [p for d in ("_runs", "_commit", "shards/_tmp") for p in fs.glob(fs.join(out, d, "**"))]
    assert not staged and not fs.exists(fs.join(out, JOURNAL)), staged[:5]


def test_commit_faults_leave_readers_consistent_and_recover_to_a_clean_commit(s3, monkeypatch):
    assert commit_sweep(s3, monkeypatch, n=2) == 2


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_commit_faults_at_every_operation(store, monkeypatch, request):
    swept = commit_sweep(request.getfixturevalue(store), monkeypatch, n=None)
    print(f"{store}: a fault at each of {swept} object operations of the commit")
    assert swept > 30


# ------------------------------------------------------------------ the shard purge alone (fast)
@pytest.mark.parametrize("drop", [1, 3])
def test_purge_shard_faulted_at_every_operation_then_retried_twice(s3, monkeypatch, drop):
    """PurgeShards on one staged shard of 3 clips, `drop` of them rejected (3: the shard
    goes): a fault at each object operation, then the step twice more on the same input. The
    shard ends holding exactly the clips kept, its stats file agreeing with it."""
    import hashlib

    from genie_pipeline.shards.reader import iter_tar_samples

    keys = [f"c_p0_{i * 2000:09d}" for i in range(3)]
    with faults.FaultyFs(monkeypatch) as ffs:
        out = fs.join(s3.bucket(), "out")
        probe = _shard(fs.join(out, "probe.tar"), "train", keys)
        ffs.reset()
        list(ORIG["purge_shard"](("s", {"shard": [probe], "drop": keys[:drop]})))
        n_ops = len(ffs.ops)  # the clean purge's object operations
        assert n_ops >= 3
        for k in range(1, n_ops + 1):
            ffs.reset()
            path = fs.join(out, f"s{k}.tar")
            rec = _shard(path, "train", keys)
            ffs.reset(fail_at=k, mode=("fail", "kill")[k % 2])
            item = ("s", {"shard": [rec], "drop": keys[:drop]})
            with pytest.raises((faults.InjectedFault, faults.Killed)):
                list(ORIG["purge_shard"](item))
            ffs.reset()
            list(ORIG["purge_shard"](item))
            recs = list(ORIG["purge_shard"](item))
            stats_path = path[: -len(".tar")] + ".stats.json"
            if drop == 3:
                assert recs == [] and not fs.exists(path) and not fs.exists(stats_path), k
                continue
            [new] = recs
            data = fs.read_bytes(path)
            assert [key for key, _ in iter_tar_samples(path)] == keys[drop:]
            st = json.loads(fs.read_bytes(stats_path))
            assert st["n_samples"] == new.stats["n_samples"] == 3 - drop
            assert st["sha256"] == hashlib.sha256(data).hexdigest() and st["bytes"] == len(data)


# ------------------------------------------------------------------ a reader during a commit
def test_a_reader_during_a_commit_on_gcs_sees_the_table_before_or_after_it(gcs):
    """A reader reads the manifest over and over while run B commits on GCS (copy + delete
    per file, so the listing changes object by object): every read is A's manifest or B's."""
    from genie_pipeline.shards.reader import JOURNAL

    out = fs.join(gcs.bucket(), "out")
    _commit(out, RUN_A, _stage_run(out, RUN_A, {"a0": 2, "a1": 0, "a2": 1}))
    before = _snapshot(out)
    staged = _stage_run(out, RUN_B, {"a1": 1, "b0": 1, "b1": 2})
    done = threading.Event()
    errors: list[BaseException] = []

    def commit():
        try:
            _commit(out, RUN_B, staged)
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=commit)
    t.start()
    seen, mid = [], 0
    while not done.is_set():
        journal = fs.exists(fs.join(out, JOURNAL))
        seen.append(_snapshot(out))
        mid += journal and fs.exists(fs.join(out, JOURNAL))
    t.join()
    assert not errors, errors
    after = _snapshot(out)
    assert len(after[0]) == len(before[0]) + 4
    # each table as one commit state (two tables are two reads: the commit may end between them)
    for i, table in enumerate(("manifest", "videos")):
        wrong = [s[i] for s in seen if s[i] not in (before[i], after[i])]
        assert not wrong, (table, wrong[:2])
    print(f"{len(seen)} reads during the commit, {mid} of them with its journal there")
