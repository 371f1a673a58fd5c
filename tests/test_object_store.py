"""Object storage end to end, against real emulators started from registry packages (moto's
S3 server, gcp-storage-emulator): the filesystem layer, the output lease, the writability
probe, an output written to and read from a bucket (verify, the training loader split over
two ranks), and (slow) an ingest into a bucket that is SIGKILLed and resumed, then refiltered
and trained on."""
from __future__ import annotations

import gzip
import json
import time

import pytest

from genie_pipeline.shards import fs, objstore
from genie_pipeline.shards.lease import Lease



# ------------------------------------------------------------------ the filesystem layer
def test_fs_round_trip(bucket):
    out = fs.join(bucket, "out")
    fs.write_bytes(fs.join(out, "a", "one.json"), b'{"x": 1}')
    with fs.atomic_output(fs.join(out, "a", "two.jsonl.gz")) as tmp, open(tmp, "wb") as f:
        f.write(gzip.compress(b'{"y": 2}\n'))
    fs.write_bytes(fs.join(out, "b", "deep", "three.bin"), b"\0" * 10)

    assert fs.read_bytes(fs.join(out, "a", "one.json")) == b'{"x": 1}'
    with fs.open_read(fs.join(out, "a", "two.jsonl.gz")) as f:  # decompressed as it is read
        assert f.read() == b'{"y": 2}\n'
    assert fs.exists(fs.join(out, "a", "one.json")) and not fs.exists(fs.join(out, "a", "nope"))
    assert fs.isdir(out) and fs.isdir(fs.join(out, "b")) and not fs.isdir(fs.join(out, "c"))
    assert [p.rsplit("/", 1)[1] for p in fs.glob(fs.join(out, "a", "*.json"))] == ["one.json"]
    files = fs.list_files(fs.join(out, "**"))
    assert [(p.split("/out/", 1)[1], n) for p, n in files] == [
        ("a/one.json", 8), ("a/two.jsonl.gz", len(gzip.compress(b'{"y": 2}\n'))), ("b/deep/three.bin", 10)]

    fs.rename(fs.join(out, "a", "one.json"), fs.join(out, "c", "one.json"))
    assert not fs.exists(fs.join(out, "a", "one.json")) and fs.read_bytes(fs.join(out, "c", "one.json")) == b'{"x": 1}'
    fs.remove(fs.join(out, "c", "one.json"))
    fs.remove(fs.join(out, "c", "one.json"))  # removing what is gone is no error
    fs.rmtree(fs.join(out, "b"))
    assert [p.split("/out/", 1)[1] for p in fs.glob(fs.join(out, "**"))] == ["a/two.jsonl.gz"]


# ------------------------------------------------------------------ the output lease
def _holder(bucket: str) -> dict:
    return json.loads(fs.read_bytes(fs.join(bucket, "out", ".lock")))


def test_lease_refuses_a_second_holder_and_release_deletes_it(bucket):
    out = fs.join(bucket, "out")
    with fs.output_lock(out, "ingest"):
        holder = _holder(bucket)
        assert holder["what"] == "ingest" and holder["expires"] > time.time()
        with pytest.raises(fs.OutputBusy) as e:
            with fs.output_lock(out, "refilter"):
                pass
        msg = str(e.value)
        assert out in msg and "in use by another run" in msg and f"pid {holder['pid']}" in msg and "ingest" in msg
    assert not fs.exists(fs.join(out, ".lock"))
    with fs.output_lock(out, "refilter"):  # free again
        assert _holder(bucket)["what"] == "refilter"


def test_lease_is_renewed_while_held(bucket):
    out = fs.join(bucket, "out")
    with fs.output_lock(out, "ingest", lease_s=1.5):
        first = _holder(bucket)["expires"]
        time.sleep(2.5)  # past the first expiry: only renewal keeps it
        assert _holder(bucket)["expires"] > first
        with pytest.raises(fs.OutputBusy):
            with fs.output_lock(out, "ingest"):
                pass


def test_expired_lease_of_another_machine_is_taken_over(bucket):
    out = fs.join(bucket, "out")
    dead = {"owner": "x", "what": "ingest", "pid": 1, "host": "elsewhere", "boot": "", "since": "then",
            "expires": time.time() - 1}
    fs.write_bytes(fs.join(out, ".lock"), json.dumps(dead).encode())
    with fs.output_lock(out, "ingest"):
        assert _holder(bucket)["host"] != "elsewhere"
    live = dict(dead, expires=time.time() + 600)
    fs.write_bytes(fs.join(out, ".lock"), json.dumps(live).encode())
    with pytest.raises(fs.OutputBusy, match="on elsewhere"):
        with fs.output_lock(out, "ingest"):
            pass


def test_lease_of_a_dead_process_on_this_machine_is_taken_over(bucket):
    import subprocess
    import sys

    out = fs.join(bucket, "out")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lease = Lease(fs.join(out, ".lock"), "ingest", RuntimeError)
    stale = json.loads(lease._record())
    stale["pid"] = int(gone.stdout)  # a process that has exited, on this machine, lease still running
    fs.write_bytes(fs.join(out, ".lock"), json.dumps(stale).encode())
    with fs.output_lock(out, "ingest"):
        assert _holder(bucket)["pid"] != stale["pid"]


def test_s3_conditional_create_lets_one_writer_win(s3):
    path = fs.join(s3.bucket(), "x")
    assert objstore.write_if(path, b"1", None)
    assert not objstore.write_if(path, b"2", None)
    data, version = objstore.read_versioned(path)
    assert data == b"1"
    assert objstore.write_if(path, b"3", version) and not objstore.write_if(path, b"4", version)


# ------------------------------------------------------------------ bad input
def test_check_writable(bucket, s3):
    fs.check_writable(fs.join(bucket, "out"))
    assert fs.glob(fs.join(bucket, "**")) == []  # the probe is gone
    scheme = bucket.split("://")[0]
    with pytest.raises(fs.StorageError, match=f"{scheme}://no-such-bucket-here/out.*does not exist"):
        fs.check_writable(f"{scheme}://no-such-bucket-here/out")


def test_check_writable_names_an_unreachable_endpoint_and_missing_credentials(s3, monkeypatch):
    from tests.emulators import free_port

    root = s3.bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    objstore.configure()  # new options: clients are made again, from this environment
    with pytest.raises(fs.StorageError, match=f"{root}/out: cannot write there .*endpoint .*cannot be reached"):
        fs.check_writable(f"{root}/out")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.url)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    objstore.configure()
    with pytest.raises(fs.StorageError, match="no AWS credentials"):
        fs.check_writable(f"{root}/out")
    objstore.configure()


def test_ingest_into_a_missing_bucket_exits_2_naming_it(s3, tmp_path, capsys):
    from genie_pipeline.cli import main
    from tests.conftest import make_video

    cat = tmp_path / "c.jsonl"
    cat.write_text(json.dumps({"id": "a", "path": str(make_video(tmp_path / "a.mp4", 2, size="64x36")),
                               "title": "a"}) + "\n")
    cfg = tmp_path / "p.yaml"
    cfg.write_text(json.dumps({"sources": [{"type": "catalog", "name": "c", "path": str(cat), "keywords": "none"}],
                               "runner": {"running_mode": "in_memory", "direct_num_workers": 1}}))
    capsys.readouterr()
    assert main(["ingest", "-c", str(cfg), "--output", "s3://no-such-bucket-here/out"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "s3://no-such-bucket-here/out" in err[0] and "does not exist" in err[0], err


def test_gcs_without_credentials_is_named_at_once(monkeypatch, tmp_path):
    for var in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    objstore.configure()
    with pytest.raises(fs.StorageError, match="gs://some-bucket/out.*(credentials|GOOGLE_APPLICATION_CREDENTIALS)"):
        fs.check_writable("gs://some-bucket/out")
    objstore.configure()


# ------------------------------------------------------------------ an output in a bucket, read back
def _sprite_output(emu) -> dict:
    from tests.fixtures.output import write_sprite_output

    out = fs.join(emu.bucket(), "out")
    shards = write_sprite_output(out, n_train_shards=2, clips_per_shard=2, n_val_shards=1)
    return {"out": out, "shards": shards}


@pytest.fixture(scope="module")
def sprite_out(s3):
    return _sprite_output(s3)


@pytest.fixture(scope="module")
def gs_sprite_out(gcs):
    return _sprite_output(gcs)


# s3 in the slow suite: the same code path as gs (Beam's filesystems), another emulator
@pytest.fixture(params=[pytest.param("s3", marks=pytest.mark.slow), "gs"])
def any_sprite_out(request):
    return request.getfixturevalue("sprite_out" if request.param == "s3" else "gs_sprite_out")


def test_output_written_to_a_bucket_verifies(any_sprite_out):
    sprite_out = any_sprite_out
    from genie_pipeline.shards.reader import read_rows
    from genie_pipeline.shards.verify import verify

    out = sprite_out["out"]
    assert [p.rsplit("/", 1)[1] for p in sprite_out["shards"]] == ["train-000000.tar", "train-000001.tar",
                                                                    "val-000000.tar"]
    assert len(read_rows(out, "manifest")) == 6 and fs.exists(fs.join(out, "stats.json"))
    assert verify(out) == []


def test_label_and_train_quality_read_clips_from_a_bucket(any_sprite_out):
    """`label` and `train-quality` find an output's clips through ClipIndex: in a bucket it
    indexes the manifest and reads each clip's bytes with a ranged read of its tar."""
    from genie_pipeline.shards.reader import ClipIndex, read_rows

    index = ClipIndex.open(any_sprite_out["out"])
    rows = read_rows(any_sprite_out["out"], "manifest")
    assert index.kind == "ingest" and len(index) == len(rows) == 6
    key = rows[0]["key"]
    data = index.read(key)
    assert data[4:8] == b"ftyp" and index.readable(key)
    with pytest.raises(Exception, match="not an ingest output"):
        ClipIndex.open(fs.join(any_sprite_out["out"], "shards"))


RANK_SCRIPT = """
import json, sys
from genie_pipeline.shards.reader import resolve_inputs
from genie_pipeline.training.loader import WindowDataset
import os
shards = resolve_inputs([sys.argv[1]], "train").shards
ds = WindowDataset(shards, batch_size=1, frames=4, rank=int(os.environ["RANK"]),
                   world_size=int(os.environ["WORLD_SIZE"]), windows_per_clip=1, infinite=False)
print(json.dumps(sorted({k for b in ds.iter_stream(ds.stream_id(0)) for k in b["keys"]})))
"""


@pytest.mark.slow  # two torchrun-style processes on the emulator; the node split is tested locally in the fast suite
def test_two_ranks_read_disjoint_clips_that_cover_the_bucket(sprite_out, tmp_path):
    """The loader's node split, torchrun-style (RANK, WORLD_SIZE in each process's
    environment), reading shards from the bucket: every train clip once, on exactly one rank."""
    import os
    import subprocess
    import sys

    from genie_pipeline.shards.reader import read_rows
    from tests.conftest import ROOT

    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, sprite_out["out"]], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"}) for r in range(2)]
    keys = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        keys.append(set(json.loads(stdout.strip().splitlines()[-1])))
    train = {r["key"] for r in read_rows(sprite_out["out"], "manifest") if r["split"] == "train"}
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert keys[0] | keys[1] == train


def test_quality_model_is_read_from_a_bucket(bucket, tmp_path):
    import torch

    from genie_pipeline.filtering.quality import QualityError, load_quality_model, save_quality_model
    from genie_pipeline.filtering.quality.model import QualityNet

    torch.manual_seed(0)
    local = save_quality_model(QualityNet(frames_per_clip=3).eval(), tmp_path / "model.pt", {"threshold": 0.25})
    for name in ("model.pt", "model.json"):
        fs.write_bytes(f"{bucket}/models/{name}", (tmp_path / name).read_bytes())
    remote, meta = load_quality_model(f"{bucket}/models/model.pt", bf16="off")
    mine, _ = load_quality_model(str(local), bf16="off")
    assert meta["threshold"] == 0.25
    assert all(torch.equal(a, b) for a, b in zip(remote.state_dict().values(), mine.state_dict().values()))
    with pytest.raises(QualityError, match=f"{bucket}/models/nope.pt does not exist"):
        load_quality_model(f"{bucket}/models/nope.pt")


# ------------------------------------------------------------------ an ingest into a bucket (slow)
def _bucket_ingest_config(tmp_path, root: str) -> dict:
    """A catalog and its videos in the bucket (relative paths resolve against the catalog's
    folder there), the output in the bucket too."""
    from tests.conftest import make_video

    rows = []
    for i, seconds in enumerate((35, 35, 17)):  # 2 + 2 + 1 clips
        local = make_video(tmp_path / f"v{i}.mp4", seconds)
        fs.write_bytes(f"{root}/in/videos/v{i}.mp4", local.read_bytes())
        rows.append({"id": f"v{i}", "path": f"videos/v{i}.mp4", "title": f"video {i}"})
    fs.write_bytes(f"{root}/in/catalog.jsonl.gz", gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    return {"sources": [{"type": "catalog", "name": "c", "path": f"{root}/in/catalog.jsonl.gz", "format": "jsonl",
                         "keywords": "none"}],
            "download": {"allowed_schemes": ["http", "https", "s3"]},
            "runner": {"direct_num_workers": 2}, "shards": {"val_fraction": 0.0, "max_clips": 2, "keep_clip_store": True},
            "output": {"dir": f"{root}/out"}}


@pytest.mark.slow
def test_ingest_into_a_bucket_is_killed_resumes_and_reads_back(s3, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from genie_pipeline.shards.reader import read_rows
    from genie_pipeline.shards.verify import verify
    from tests.conftest import ROOT

    root = s3.bucket()
    out = f"{root}/out"
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(_bucket_ingest_config(tmp_path, root)))
    cmd = [sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(cfg_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not fs.glob(f"{out}/clips/*.tar") and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "ingest finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert fs.exists(f"{out}/.lock") and not read_rows(out, "manifest")  # killed: a lease left, nothing committed

    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = read_rows(out, "manifest")
    assert sorted(m["video_id"] for m in manifest) == ["v0", "v0", "v1", "v1", "v2"]
    assert [v["status"] for v in read_rows(out, "videos")] == ["done"] * 3
    assert fs.exists(f"{out}/stats.json") and fs.glob(f"{out}/shards/train-*.tar")
    assert not fs.exists(f"{out}/.lock")  # released
    assert verify(out) == []

    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "verify", out], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-2000:]

    # refilter in the bucket, with scores given as `score_manifest` returns them: the shards
    # are rewritten from the bucket's clip store to hold exactly the clips now kept
    from genie_pipeline.filtering.quality import refilter
    from genie_pipeline.shards.config import ShardsConfig
    from genie_pipeline.shards.reader import iter_tar_samples, live_shards

    rows = [dict(m, quality_score=1.0 if m["video_id"] == "v2" else 0.0) for m in manifest]
    result = refilter(out, 0.5, ShardsConfig(), None, rows=rows)
    kept = {m["key"] for m in read_rows(out, "manifest") if m["kept"]}
    in_shards = {k for p in live_shards(f"{out}/shards", "train") for k, _ in iter_tar_samples(p)}
    assert in_shards == kept and result["kept_after"] == len(kept)
    assert all(m["video_id"] == "v2" for m in read_rows(out, "manifest") if m["kept"])
    assert verify(out) == []


def test_tiny_training_reads_its_shards_from_a_bucket(any_sprite_out, tmp_path):
    from genie_pipeline.training.config import TrainConfig
    from genie_pipeline.training.run import train_main
    from tests.test_training_loop import TINY

    summary = train_main(TrainConfig(**TINY, tokenizer_steps=2, dynamics_steps=2), stage="all",
                         inputs=[any_sprite_out["out"]], out_dir=tmp_path / "run")
    assert summary["shards"] == 2 and set(summary["phases"]) == {"tokenizer", "dynamics"}


# ------------------------------------------------------------------ training into a bucket
def _bucket_files(run: str) -> list[str]:
    return [p[len(run) + 1:] for p, _ in fs.list_files(fs.join(run, "**"))]


def _load_weights_only(path: str) -> dict:
    """A checkpoint in the bucket, read the way a user's own code would: bytes, then
    torch.load(weights_only=True), no help from our loader."""
    import io

    import torch

    return torch.load(io.BytesIO(fs.read_bytes(path)), map_location="cpu", weights_only=True)


def test_training_into_a_bucket_resumes_from_it(any_sprite_out, tmp_path, monkeypatch):
    """`train --out BUCKET/run`: checkpoints (keep-last pruned in the bucket too), metrics,
    run.json, TensorBoard, samples and genie.pt land in the bucket; a second invocation
    with a fresh staging folder (as on another machine) resumes from the bucket's
    latest.pt; the staging copy is gone after each run; play/export read the bucket run."""
    from genie_pipeline.training import checkpoint as ckpt_lib
    from genie_pipeline.training.bundle import export_bundle, load_genie
    from genie_pipeline.training.config import TrainConfig
    from genie_pipeline.training.errors import TrainingError
    from genie_pipeline.training.metrics import read_metrics
    from genie_pipeline.training.run import train_main
    from tests.test_training_loop import TINY

    monkeypatch.setenv(ckpt_lib.STAGING_ENV, str(tmp_path / "staging"))
    root = any_sprite_out["out"].rsplit("/", 1)[0]
    run = f"{root}/run-{time.time_ns()}"  # the sprite output's bucket is shared by the module
    cfg = dict(TINY, checkpoint_every=1, keep_checkpoints=1, sample_every=2)
    first = train_main(TrainConfig(**cfg, tokenizer_steps=2, dynamics_steps=2), stage="all",
                       inputs=[any_sprite_out["out"]], out_dir=run)
    assert first["out_dir"] == run and first["genie_checkpoint"] == f"{run}/genie.pt"
    assert first["phases"]["dynamics"]["checkpoint"] == f"{run}/checkpoints/dynamics/latest.pt"
    files = _bucket_files(run)
    for phase in ("tokenizer", "dynamics"):  # step-1 was uploaded, then pruned (keep 1)
        assert [f for f in files if f.startswith(f"checkpoints/{phase}/")] == [
            f"checkpoints/{phase}/latest.pt", f"checkpoints/{phase}/step-00000002.pt"]
    assert {"genie.pt", "metrics.csv", "run.json"} <= set(files)
    assert any(f.startswith("tensorboard/events.out.tfevents") for f in files)
    assert any(f.startswith("samples/dynamics-step00000002") for f in files)
    assert json.loads(fs.read_bytes(f"{run}/run.json"))["summary"]["out_dir"] == run
    assert not any((tmp_path / "staging").rglob("*.pt"))  # the staging copy is deleted

    # without --resume a run with checkpoints is refused, naming the bucket's file
    with pytest.raises(TrainingError, match=f"{run}/checkpoints/tokenizer/latest.pt.*--resume"):
        train_main(TrainConfig(**cfg, tokenizer_steps=2, dynamics_steps=4), stage="all",
                   inputs=[any_sprite_out["out"]], out_dir=run)
    second = train_main(TrainConfig(**cfg, tokenizer_steps=2, dynamics_steps=4), stage="all",
                        inputs=[any_sprite_out["out"]], out_dir=run, resume=True)
    assert second["phases"]["tokenizer"]["skipped"] and second["phases"]["tokenizer"]["resumed_from"] == 2
    assert second["phases"]["dynamics"]["resumed_from"] == 2 and second["phases"]["dynamics"]["steps"] == 4
    latest = _load_weights_only(f"{run}/checkpoints/dynamics/latest.pt")
    assert latest["step"] == 4 and latest["format"] == ckpt_lib.FORMAT and "dynamics" in latest["model"]
    assert [f for f in _bucket_files(run) if f.startswith("checkpoints/dynamics/")] == [
        "checkpoints/dynamics/latest.pt", "checkpoints/dynamics/step-00000004.pt"]
    local = tmp_path / "metrics.csv"
    local.write_bytes(fs.read_bytes(f"{run}/metrics.csv"))
    # one row per step of both invocations: the resumed run appended to the bucket's file
    assert [s for _, s, _ in read_metrics(local, "loss", "dynamics")] == [1, 2, 3, 4]
    assert [s for _, s, _ in read_metrics(local, "loss", "tokenizer")] == [1, 2]
    assert _load_weights_only(f"{run}/genie.pt")["steps"]["dynamics"] == 4

    # play/export/eval take the bucket run dir or a checkpoint file in it
    genie = load_genie(run)
    assert genie.cfg.image_height == 48
    assert export_bundle(f"{run}/checkpoints/dynamics/latest.pt", f"{run}/bundle.pt") == f"{run}/bundle.pt"
    assert _load_weights_only(f"{run}/bundle.pt")["kind"] == "bundle"
    assert load_genie(f"{run}/bundle.pt").cfg.lam.num_actions == genie.cfg.lam.num_actions


def test_eval_reads_a_bucket_run_and_writes_its_report_there(any_sprite_out, tmp_path, capsys):
    """`eval --checkpoint BUCKET/run`: the run's inputs from its run.json in the bucket, the
    report into BUCKET/run/eval."""
    from genie_pipeline.cli import main
    from genie_pipeline.training.config import TrainConfig
    from genie_pipeline.training.run import train_main
    from tests.test_training_loop import TINY

    root = any_sprite_out["out"].rsplit("/", 1)[0]
    run = f"{root}/eval-run-{time.time_ns()}"
    train_main(TrainConfig(**TINY, tokenizer_steps=1, dynamics_steps=1), stage="all",
               inputs=[any_sprite_out["out"]], out_dir=run)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", run, "--clips", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"{run}/eval/eval.json" in printed
    report = json.loads(fs.read_bytes(f"{run}/eval/eval.json"))
    assert report["clips"] == 2 and all(s.startswith(any_sprite_out["out"]) for s in report["data"])
    assert report["checkpoint"] == run  # as given, not the local copy it was read from
    assert fs.exists(f"{run}/eval/eval.html") and fs.exists(f"{run}/eval/rollout.gif")


def test_train_into_a_missing_bucket_exits_2_naming_it(sprite_out, tmp_path, capsys):
    """Before any step: the message names the bucket, nothing is trained."""
    from genie_pipeline.cli import main

    capsys.readouterr()
    rc = main(["train", sprite_out["out"], "--out", "s3://no-such-bucket-here/run",
               "--set", "train.model=tiny", "--set", "train.tokenizer_steps=1", "--set", "train.dynamics_steps=1"])
    captured = capsys.readouterr()
    assert rc == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "s3://no-such-bucket-here/run" in err[0] and "does not exist" in err[0], err
    assert "[train" not in captured.out + captured.err  # no step was logged


def _train_cmd(config, out: str, resume: bool = False) -> list[str]:
    import sys

    return [sys.executable, "-m", "genie_pipeline.cli", "train", "-c", str(config), "--set",
            f"train.out_dir={out}", *(["--resume"] if resume else [])]


@pytest.mark.slow
def test_training_into_a_bucket_is_killed_and_resumes_from_it(sprite_out, tmp_path):
    """SIGKILL a `genie-pipeline train` writing to a bucket once a phase-2 checkpoint is there;
    the same command with --resume continues from that checkpoint, not from step 0."""
    import os
    import signal
    import subprocess

    from tests.conftest import ROOT
    from tests.test_training_loop import TINY

    run = f"{sprite_out['out'].rsplit('/', 1)[0]}/killed-run"
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"train": dict(TINY, data=[sprite_out["out"]], tokenizer_steps=2,
                                                dynamics_steps=400, checkpoint_every=2, keep_checkpoints=1)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENIE_PIPELINE_STAGING": str(tmp_path / "staging")}
    proc = subprocess.Popen(_train_cmd(config, run), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while (time.time() < deadline and proc.poll() is None
           and not fs.exists(f"{run}/checkpoints/dynamics/latest.pt")):
        time.sleep(0.2)
    assert proc.poll() is None, "training finished or failed before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _load_weights_only(f"{run}/checkpoints/dynamics/latest.pt")["step"]
    assert killed_at >= 2

    config.write_text(json.dumps({"train": dict(TINY, data=[sprite_out["out"]], tokenizer_steps=2,
                                                dynamics_steps=killed_at + 2, checkpoint_every=2,
                                                keep_checkpoints=1)}))
    r = subprocess.run(_train_cmd(config, run, resume=True), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(fs.read_bytes(f"{run}/run.json"))["summary"]  # the CLI prints a few lines
    assert summary["phases"]["dynamics"]["resumed_from"] == killed_at > 0
    assert _load_weights_only(f"{run}/checkpoints/dynamics/latest.pt")["step"] == killed_at + 2
    assert [f for f in _bucket_files(run) if f.startswith("checkpoints/dynamics/step-")] == [
        f"checkpoints/dynamics/step-{killed_at + 2:08d}.pt"]


@pytest.mark.slow
def test_two_ranks_train_into_a_bucket_and_resume_from_it(sprite_out, tmp_path):
    """torchrun with 2 processes and a bucket out_dir: rank 0 writes and uploads, rank 1 has
    only its own staging folder and must fetch phase 1's tokenizer from the bucket for phase
    2 (else it fails: no tokenizer checkpoint); then both resume from the bucket."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_training_loop import TINY

    run = f"{sprite_out['out'].rsplit('/', 1)[0]}/two-rank-run"
    config = tmp_path / "train.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENIE_PIPELINE_STAGING": str(tmp_path / "staging")}
    summaries = []
    for dynamics_steps, resume in ((2, False), (3, True)):
        config.write_text(json.dumps({"train": dict(TINY, data=[sprite_out["out"]], tokenizer_steps=2,
                                                    dynamics_steps=dynamics_steps, checkpoint_every=1,
                                                    keep_checkpoints=1)}))
        cmd = _train_cmd(config, run, resume)
        # its own process group: on a timeout the ranks go too, not only torchrun
        proc = subprocess.Popen([cmd[0], "-m", "torch.distributed.run", "--nproc_per_node", "2", *cmd[1:]],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, stderr[-3000:]
        summaries.append(json.loads(stdout[stdout.index("{"):]))
    assert summaries[0]["world_size"] == 2 and summaries[0]["phases"]["dynamics"]["steps"] == 2
    assert summaries[1]["phases"]["dynamics"]["resumed_from"] == 2
    latest = _load_weights_only(f"{run}/checkpoints/dynamics/latest.pt")
    assert latest["step"] == 3 and len(latest["ranks"]) == 2
    assert not any((tmp_path / "staging").rglob("*.pt"))


# ------------------------------------------------------------------ train-quality into a bucket
# torch_threads=1: scoring sets its thread count for the process, and a second training after
# it (the next bucket's) with two OpenMP threads on a shared 2-core machine runs ~7x slower
QUALITY_TINY = dict(epochs=2, min_epochs=1, patience=2, frames_per_clip=2, train_batch_size=8, train_frame_pool=4,
                    steps_per_epoch=2, torch_threads=1)


@pytest.fixture(params=[pytest.param("s3", marks=pytest.mark.slow), "gs"])
def any_bucket(request):
    """A fresh bucket; s3 in the slow suite (the same filesystem code as gs, another emulator)."""
    return request.getfixturevalue("s3" if request.param == "s3" else "gcs").bucket()


def test_train_quality_writes_its_model_to_a_bucket_and_scoring_reads_it(any_bucket, tmp_path, capsys):
    """`train-quality --out BUCKET/q/model.pt`: model, metadata and pictures in the bucket;
    the scoring stage (refilter --rescore's) scores every clip with the model from there."""
    bucket = any_bucket
    import math

    from genie_pipeline.cli import main
    from genie_pipeline.filtering.quality import load_quality_model
    from genie_pipeline.filtering.quality.config import QualityConfig
    from genie_pipeline.filtering.quality.model import INT8_CALIBRATION
    from genie_pipeline.filtering.quality.score import score_manifest
    from tests.fixtures.output import write_quality_output

    out = tmp_path / "out"
    info = write_quality_output(out, n_good=2, n_bad=2, clips_per_video=2, seed=5)
    model = f"{bucket}/q/model.pt"
    sets = [a for k, v in QUALITY_TINY.items() for a in ("--set", f"filters.quality.{k}={v}")]
    assert main(["train-quality", str(out), "--reference-catalog", str(info["catalog"]), "--no-progress",
                 "--out", model, *sets]) == 0
    assert f"wrote {model} (+ model.json" in capsys.readouterr().out
    meta = json.loads(fs.read_bytes(f"{bucket}/q/model.json"))
    assert sorted(_bucket_files(f"{bucket}/q")) == sorted(["model.pt", "model.json", *meta["pictures"].values()])
    # the file holds the weights and the int8 calibration frames, nothing that needs unpickling
    assert set(_load_weights_only(model)) == {*load_quality_model(model, bf16="off")[0].state_dict(), INT8_CALIBRATION}
    rows = score_manifest(str(out), QualityConfig(model=model, bf16="off", torch_threads=1))
    assert rows and all(0.0 <= r["quality_score"] <= 1.0 and not math.isnan(r["quality_score"]) for r in rows)


def test_train_quality_into_a_missing_bucket_exits_2_naming_it(tmp_path, s3, capsys):
    from genie_pipeline.cli import main
    from tests.fixtures.output import write_quality_output

    out = tmp_path / "out"
    info = write_quality_output(out, n_good=2, n_bad=2, clips_per_video=1, seed=5)
    capsys.readouterr()
    assert main(["train-quality", str(out), "--reference-catalog", str(info["catalog"]), "--no-progress",
                 "--out", "s3://no-such-bucket-here/q/model.pt"]) == 2
    err = capsys.readouterr().err
    assert "s3://no-such-bucket-here/q" in err and "does not exist" in err, err


def test_an_ingest_job_writes_into_a_gcs_bucket_and_runs_again_on_it(gcs, tmp_path):
    """The whole job (local runner) into the GCS emulator: clip store, staged parts, shards,
    the commit's journal and renames, the lease; then a second run finds every video done."""
    from genie_pipeline.config import parse_config
    from genie_pipeline.ingest.pipeline import run_ingest
    from genie_pipeline.shards.reader import read_rows
    from genie_pipeline.shards.verify import verify
    from tests.conftest import make_video

    out = fs.join(gcs.bucket(), "out")
    rows = []
    for i, seconds in enumerate((35, 17)):
        make_video(tmp_path / f"v{i}.mp4", seconds, src=("testsrc2", "testsrc")[i])  # not duplicates
        rows.append(json.dumps({"id": f"v{i}", "path": str(tmp_path / f"v{i}.mp4"), "title": f"v{i}"}))
    (tmp_path / "c.jsonl").write_text("\n".join(rows) + "\n")
    cfg = parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(tmp_path / "c.jsonl"),
                                     "keywords": "none"}],
                        "runner": {"running_mode": "in_memory", "direct_num_workers": 1},
                        "shards": {"val_fraction": 0.0, "max_clips": 2}, "output": {"dir": out}})
    stats = run_ingest(cfg)
    assert stats["videos_done"] == 2 and stats["clips_kept"] == 3
    assert all(r["kept"] and r["shard"] for r in read_rows(out, "manifest"))
    assert len(fs.glob(fs.join(out, "shards", "train-*.tar"))) == 2  # 2 clips per shard
    assert verify(out) == []
    assert not fs.exists(fs.join(out, ".lock"))
    again = run_ingest(cfg)
    assert again["videos_done"] == 2 and len(read_rows(out, "manifest")) == 3  # nothing cut twice
    assert verify(out) == []
