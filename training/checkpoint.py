"""Checkpoints: atomic writes, `weights_only=True` loading, RNG states as plain types.

A checkpoint is one file holding model and optimizer state dicts (full, unsharded), the
schedule position, every rank's RNG states and loader position, and the configs. It is
written to `NAME.tmp.PID` and moved into place with `os.replace`, so a crash never leaves a
half-written checkpoint under the real name. Only tensors, dicts, lists, strings and
numbers are stored, so `torch.load(..., weights_only=True)` reads it.

A run directory on an object store (`gs://…/run`, `s3://…/run`) is trained into a local
staging copy (`RunMirror`): the trainer writes there exactly as it does locally, and each
finished checkpoint is uploaded through the one filesystem layer (`shards.fs`), after the
logs written before it, with `latest.pt` copied by the store from the uploaded step file
and the bucket's old step files pruned like the local ones. The bucket is the truth: a run
started again with the same out_dir resumes from the bucket's `latest.pt`.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from genie_pipeline.training.config import PHASES
from genie_pipeline.training.errors import TrainingError

FORMAT = 1
STEP_RE = re.compile(r"^step-(\d+)\.pt$")


# ----------------------------------------------------------------- the filesystem layer
def is_remote(path: str | os.PathLike) -> bool:
    """`shards.fs.is_remote`, without importing shards.fs: it loads Apache Beam (~1 s), which
    play and export of a local checkpoint never need."""
    p = str(path)
    return "://" in p and not p.startswith("file://")


def _fs():
    """shards.fs, imported when a path on an object store is first met."""
    from genie_pipeline.shards import fs

    return fs


# ------------------------------------------------------------------------ RNG states
def get_rng_state() -> dict:
    """Python, NumPy, torch CPU (and CUDA) RNG states as tensors / plain types."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": {"version": int(version), "state": torch.tensor(state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(np_state[0]), "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- files
def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """torch.save `obj` to `path` (local, or `gs://`/`s3://` given as a string) so that the
    file appears whole or not at all."""
    if is_remote(str(path)):
        with _fs().atomic_output(str(path)) as tmp:
            torch.save(obj, tmp)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint at `path`; TrainingError (key `checkpoint`) for a missing file, a file
    that is not a checkpoint, or one that needs more than weights-only unpickling."""
    try:
        if is_remote(str(path)):  # bytes through the filesystem layer, unpickled the same way
            fs = _fs()
            if not fs.exists(str(path)):
                if fs.isdir(str(path)):
                    raise IsADirectoryError(str(path))
                raise FileNotFoundError(str(path))
            ckpt = torch.load(io.BytesIO(fs.read_bytes(str(path))), map_location=map_location, weights_only=True)
        else:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise TrainingError("checkpoint", f"{path} does not exist") from None
    except IsADirectoryError:
        raise TrainingError("checkpoint", f"{path} is a directory, not a checkpoint file") from None
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # garbage rather than a payload
            raise TrainingError("checkpoint", f"{path} is not a checkpoint (not a torch.save file)") from None
        # torch's own message advises weights_only=False: never, for a file from elsewhere
        raise TrainingError("checkpoint", f"{path} holds Python objects beyond tensors and plain data "
                            "(a pickle payload that could run code); refused, it is not a genie-pipeline "
                            "checkpoint") from None
    except Exception as e:  # noqa: BLE001 — torch raises many types for a bad or hostile file
        raise TrainingError("checkpoint", f"{path} is not a readable weights-only checkpoint "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise TrainingError("checkpoint", f"{path} is not a genie-pipeline training checkpoint (format {FORMAT})")
    return ckpt


def phase_dir(out_dir: str | os.PathLike, phase: str) -> Path:
    return Path(out_dir) / "checkpoints" / phase


def latest_path(out_dir: str | os.PathLike, phase: str) -> Path:
    return phase_dir(out_dir, phase) / "latest.pt"


def save_phase_checkpoint(ckpt: dict, out_dir: str | os.PathLike, phase: str, keep: int = 2) -> Path:
    """Write step-NNNNNNNN.pt and latest.pt (both atomically); keep the newest `keep` step files."""
    d = phase_dir(out_dir, phase)
    step_path = d / f"step-{int(ckpt['step']):08d}.pt"
    save_atomic(ckpt, step_path)
    tmp = d / f"latest.pt.tmp.{os.getpid()}"
    try:
        os.link(step_path, tmp)  # same bytes, no second write
    except OSError:
        save_atomic(ckpt, d / "latest.pt")
    else:
        os.replace(tmp, d / "latest.pt")
    steps = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := STEP_RE.match(p.name)))
    for _, p in steps[:-keep]:
        p.unlink(missing_ok=True)
    for p in d.glob("*.tmp.*"):  # leftovers of killed writers
        try:
            if p.stat().st_mtime < os.path.getmtime(step_path) - 60:
                p.unlink()
        except OSError:
            pass
    mirror = _MIRRORS.get(Path(out_dir).resolve())
    if mirror is not None:
        mirror.push_checkpoint(step_path, phase, keep)
    return step_path


# ------------------------------------------------------------- run dirs on object stores
STAGING_ENV = "GENIE_PIPELINE_STAGING"
_MIRRORS: dict[Path, "RunMirror"] = {}


def staging_root() -> Path:
    """Where staging copies of bucket run dirs live: $GENIE_PIPELINE_STAGING, else a folder of
    this user's in the temp dir (it must hold a few checkpoints: point TMPDIR or that variable
    at a big disk). The temp dir's folder is made private, and refused when another user owns
    it or it is a link: checkpoints are read back from there."""
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV])
    root = Path(tempfile.gettempdir()) / f"genie-pipeline-staging-{os.getuid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    st = root.lstat()
    if root.is_symlink() or st.st_uid != os.getuid():
        raise TrainingError(STAGING_ENV, f"{root} is not a folder of this user's: remove it or set {STAGING_ENV}")
    return root


class RunMirror:
    """The local staging copy of the run directory `remote` (gs:// or s3://) for one rank.

    The folder is keyed by the URL and the rank and emptied when made: what a killed run left
    there may be newer than the bucket (written, never uploaded), and the bucket is what a
    restarted run resumes from. `pull` fetches files of the bucket's run; `push` uploads what
    changed since the last push or pull, except checkpoints, which go by `push_checkpoint`
    (called by `save_phase_checkpoint` for a registered mirror, see `staged_run_dir`)."""

    def __init__(self, remote: str, rank: int = 0):
        self.fs = _fs()
        self.remote = remote.rstrip("/")
        key = hashlib.sha256(self.remote.encode()).hexdigest()[:16]
        self.local = staging_root() / key / f"rank-{rank}"
        shutil.rmtree(self.local, ignore_errors=True)
        self.local.mkdir(parents=True)
        self._seen: dict[Path, tuple[int, int]] = {}  # local file -> (size, mtime_ns) the bucket holds

    def remote_path(self, local_path: str | os.PathLike) -> str:
        return self.fs.join(self.remote, *Path(local_path).relative_to(self.local).parts)

    def to_remote(self, value: Any) -> Any:
        """`value` with the staging folder's paths in its strings (nested in dicts and lists)
        replaced by the bucket's: what a summary or an error message reports."""
        if isinstance(value, str):
            return value.replace(str(self.local), self.remote)
        if isinstance(value, dict):
            return {k: self.to_remote(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.to_remote(v) for v in value)
        return value

    def _mark(self, path: Path) -> None:
        st = path.stat()
        self._seen[path] = (st.st_size, st.st_mtime_ns)

    def pull(self, rel: str, refresh: bool = False) -> bool:
        """Fetch RUN/`rel` from the bucket into the staging copy (again with `refresh`, else
        only when missing here); False when the bucket has no such file."""
        dst = self.local / rel
        if dst.exists() and not refresh:
            return True
        src = self.fs.join(self.remote, *rel.split("/"))
        if not self.fs.exists(src):
            return False
        self.fs.copy(src, str(dst))
        self._mark(dst)
        return True

    def push(self) -> list[str]:
        """Upload every staged file that is new or changed since it was last pushed or pulled,
        other than checkpoints and files still being written; their bucket paths."""
        done = []
        for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = path.relative_to(self.local)
            if rel.parts[0] == "checkpoints" or ".tmp" in path.name or path.name.endswith(".part"):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:  # replaced meanwhile: the next push takes the new one
                continue
            if self._seen.get(path) == (st.st_size, st.st_mtime_ns):
                continue
            self.fs.copy(str(path), self.remote_path(path))
            self._seen[path] = (st.st_size, st.st_mtime_ns)
            done.append(self.remote_path(path))
        return done

    def push_checkpoint(self, step_path: Path, phase: str, keep: int) -> str:
        """Upload a checkpoint just written to `step_path`: first the logs written before it (a
        resumed run truncates logs past its step, it cannot restore missing ones), then the
        step file, then `latest.pt` as the store's own copy of it (a resume reads the old
        `latest.pt` until this one is whole); then delete the bucket's step files older than
        the newest `keep`. The bucket path of the step file."""
        self.push()
        remote_step = self.remote_path(step_path)
        self.fs.copy(str(step_path), remote_step)
        self.fs.copy(remote_step, self.remote_path(step_path.with_name("latest.pt")))
        self._mark(step_path)
        with contextlib.suppress(FileNotFoundError):
            self._mark(step_path.with_name("latest.pt"))
        remote_dir = remote_step.rsplit("/", 1)[0]
        steps = sorted((int(m.group(1)), p) for p, _ in self.fs.list_files(self.fs.join(remote_dir, "step-*.pt"))
                       if (m := STEP_RE.match(p.rsplit("/", 1)[1])))
        for _, p in steps[:-keep]:
            self.fs.remove(p)
        return remote_step

    def close(self) -> None:
        """Delete the staging copy (the bucket holds everything pushed)."""
        _MIRRORS.pop(self.local.resolve(), None)
        shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def staged_run_dir(out_dir: str, rank: int = 0) -> Iterator[tuple[Path, RunMirror | None]]:
    """(the local folder to train into, its mirror or None). A local `out_dir` is itself; a
    bucket `out_dir` gets a `RunMirror` whose checkpoints are uploaded as they are saved,
    with the bucket's run.json, metrics.csv and every phase's latest.pt pulled first (so a
    run resumes, and appends its logs, as in a local folder). The caller pushes the rest at
    the end; the staging copy is deleted on leaving, failed or not."""
    if not is_remote(str(out_dir)):
        yield Path(str(out_dir).removeprefix("file://")), None
        return
    mirror = RunMirror(str(out_dir), rank)
    _MIRRORS[mirror.local.resolve()] = mirror
    try:
        for rel in ("run.json", "metrics.csv", *(f"checkpoints/{ph}/latest.pt" for ph in PHASES)):
            mirror.pull(rel)
        yield mirror.local, mirror
    finally:
        mirror.close()
