"""The one filesystem layer: local paths (plain or `file://`) and any Beam FileSystem
(`gs://` with `apache-beam[gcp]`, `s3://` with `apache-beam[aws]`), for every reader and
writer of the project, ingest and training alike.

Writes go to a local file first and are moved into place whole: a reader never sees a
partial file (local: `os.replace`; object stores: an object appears only when its upload
completes). Endpoints and credentials of object stores come from the environment or
`objstore.configure(beam_args)` (shards/objstore.py); the output lock there is a lease
(shards/lease.py).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from typing import Callable, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from . import objstore
from .lease import LEASE_S, Lease
from .objstore import StorageError


GLOB_CHARS = frozenset("*?[")
# errors of the machine rather than of one input: disk full, quota, read-only or forbidden
# output, no file handles left. A stage lets these stop the run (the next run retries the
# videos) instead of recording every following video as broken.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                                errno.EMFILE, errno.ENFILE})


def environment_error(e: BaseException) -> OSError | None:
    """The machine's OSError (see ENVIRONMENT_ERRNOS) that `e` is or was caused by, else None."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS:
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _beam() -> type[FileSystems]:
    """Beam's FileSystems, with options set (see `objstore.options`)."""
    objstore.options()
    return FileSystems


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local(path: str) -> str:
    """A local path without its `file://` prefix."""
    return path.removeprefix("file://")


def join(base: str, *parts: str) -> str:
    return _beam().join(base, *parts) if is_remote(base) else os.path.join(local(base), *parts)


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(local(path), exist_ok=True)


def exists(path: str) -> bool:
    return _beam().exists(path) if is_remote(path) else os.path.exists(local(path))


def isdir(path: str) -> bool:
    """Object stores have no directories: there, a prefix with objects under it is one."""
    if not is_remote(path):
        return os.path.isdir(local(path))
    return bool(_beam().match([path.rstrip("/") + "/**"], limits=[1])[0].metadata_list)


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        return sorted(m.path for m in _beam().match([pattern])[0].metadata_list)
    import glob as _glob

    return sorted(_glob.glob(local(pattern)))


def list_files(pattern: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of each file an absolute `pattern` matches, sorted by path, by
    Beam's matching on every filesystem: `*` stays in one folder, `**` crosses folders,
    folders themselves never match."""
    return sorted((m.path, m.size_in_bytes) for m in _beam().match([pattern])[0].metadata_list)


def open_read(path: str):
    """A binary reader; a `.gz`, `.bz2`, `.zst` … file is decompressed as it is read (Beam's
    rule, the same locally and on object stores: catalogs and URL lists may be compressed)."""
    return _beam().open(path if is_remote(path) else local(path))


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def remove(path: str) -> None:
    if is_remote(path):
        if _beam().exists(path):
            _beam().delete([path])
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def rmtree(path: str) -> None:
    """Delete a folder and everything under it (on an object store: every object under the
    prefix, listed once and deleted in batches); what is gone already is no error."""
    if is_remote(path):
        remove_many(glob(path.rstrip("/") + "/**"))
    else:
        shutil.rmtree(local(path), ignore_errors=True)


# requests an object-store batch operation keeps in flight: each is one HTTP request carrying
# up to BATCH objects (GCS's batch API takes 100, S3's DeleteObjects 1000)
PARALLEL = 8
BATCH = 100
TRIES = 4  # of one batch: a batch request can fail whole (a timeout), or Beam's retries run out


def _in_parallel(fn, chunks: list) -> None:
    """fn(chunk) for every chunk, PARALLEL at a time; the first error is raised once all ran."""
    if len(chunks) <= 1:
        for c in chunks:
            fn(c)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(PARALLEL, len(chunks))) as pool:
        for f in [pool.submit(fn, c) for c in chunks]:
            f.result()


def _tried(fn, chunk: list, left) -> None:
    """fn(chunk), and again (up to TRIES) on what `left(chunk)` says is not done yet: every
    batch operation here is idempotent, so redoing part of a batch is safe."""
    import time

    for attempt in range(TRIES):
        try:
            fn(chunk)
            return
        except Exception:  # noqa: BLE001 — Beam and the store clients raise many types
            if attempt == TRIES - 1:
                raise
            time.sleep(0.5 * 2 ** attempt)
            chunk = left(chunk)
            if not chunk:
                return


def _chunks(items: list, n: int = BATCH) -> list[list]:
    return [items[i: i + n] for i in range(0, len(items), n)]


def remove_many(paths: list[str]) -> None:
    """Delete every file of `paths`; what is gone already is no error (a retried step deletes
    again). Object stores get batch requests (100 objects each on GCS, where Beam's own
    delete lists every path first), PARALLEL in flight; local files one by one."""
    remote = [p for p in paths if is_remote(p)]
    for p in paths:
        if not is_remote(p):
            remove(p)
    if not remote:
        return
    gcs = [p for p in remote if p.startswith("gs://")]
    others = [p for p in remote if not p.startswith("gs://")]
    if gcs:
        from apache_beam.io.gcp.gcsio import GcsIO

        def delete_gcs(chunk: list[str]) -> None:
            # one client per batch: a batch is a context of the client, not of the thread
            # (a batch whose retries ran out has no responses: Beam then fails on None)
            failed = [(p, code) for p, code in GcsIO(pipeline_options=objstore.options()).delete_batch(chunk) if code]
            if failed:
                raise StorageError(f"{failed[0][0]}: delete failed (HTTP {failed[0][1]}), "
                                   f"{len(failed)} of {len(chunk)} objects")
        _in_parallel(lambda chunk: _tried(delete_gcs, chunk, lambda c: c), _chunks(gcs))
    if others:  # S3: Beam sends DeleteObjects of up to 1000 keys, missing keys included
        _in_parallel(lambda chunk: _tried(lambda c: _beam().delete(c), chunk, lambda c: c), _chunks(others, 1000))


def existing(paths: list[str]) -> set[str]:
    """Those of `paths` that exist. On an object store a folder holding many of them is listed
    once instead of asking for each object (one request per 1000 objects listed, not one per
    path); a folder with only a few of them is asked per object."""
    remote = [p for p in paths if is_remote(p)]
    found = {p for p in paths if not is_remote(p) and os.path.exists(local(p))}
    by_parent: dict[str, list[str]] = {}
    for p in remote:
        by_parent.setdefault(p.rsplit("/", 1)[0], []).append(p)
    for parent, members in by_parent.items():
        if len(members) <= 8:
            found.update(p for p in members if exists(p))
        else:
            listed = {m.path for m in _beam().match([parent + "/*"])[0].metadata_list}
            found.update(p for p in members if p in listed)
    return found


def rename(src: str, dst: str) -> None:
    if is_remote(src) or is_remote(dst):
        _beam().rename([src], [dst])
    else:
        os.replace(src, dst)


def rename_many(pairs: list[tuple[str, str]]) -> None:
    """Rename each (src, dst); local paths one by one (the destination folders are made).
    Object stores have no rename: each is a copy, then a delete of the source, sent in batch
    requests of 100 (Beam's rename: one batch of copies, then one of deletes), PARALLEL
    batches in flight. Either way a destination appears whole, and a source is deleted only
    after its copy is complete; a rename cut short leaves some sources not yet copied, or
    copied and not yet deleted (both present, equal), which a retry finishes."""
    remote = [(s, d) for s, d in pairs if is_remote(s) or is_remote(d)]
    for s, d in pairs:
        if not (is_remote(s) or is_remote(d)):
            os.makedirs(os.path.dirname(local(d)) or ".", exist_ok=True)
            rename(s, d)
    # Beam makes a client per call: each batch has its own (a batch belongs to its client). A
    # batch tried again renames only the sources still there (one copied and not yet deleted
    # is copied again: the same bytes)
    def move(chunk):
        _beam().rename([s for s, _ in chunk], [d for _, d in chunk])

    def left(chunk):
        there = existing([s for s, _ in chunk])
        return [(s, d) for s, d in chunk if s in there]

    _in_parallel(lambda chunk: _tried(move, chunk, left), _chunks(remote))


@contextlib.contextmanager
def atomic_output(dest: str) -> Iterator[str]:
    """Yields a local path to write; on success the file appears at `dest` in one step."""
    if is_remote(dest):
        fd, tmp = tempfile.mkstemp(suffix=".part")
        os.close(fd)
    else:
        os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
        tmp = os.path.join(os.path.dirname(dest) or ".", f".{os.path.basename(dest)}.{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        if is_remote(dest):
            # the bytes as written: Beam would gzip a `.gz` destination once more
            with open(tmp, "rb") as src, _beam().create(dest, compression_type=CompressionTypes.UNCOMPRESSED) as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.remove(tmp)
        else:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes(dest: str, data: bytes) -> None:
    with atomic_output(dest) as tmp, open(tmp, "wb") as f:
        f.write(data)


def copy(src: str, dst: str) -> None:
    """Copy the file `src` to `dst`, each local or on an object store, byte for byte (no
    decompression by extension), the destination appearing whole (see `atomic_output`).
    Within one object store the copy is made by the store itself: no bytes pass through
    this machine (a checkpoint's `latest.pt` from its `step-N.pt`)."""
    if is_remote(src) and is_remote(dst) and src.split("://", 1)[0] == dst.split("://", 1)[0]:
        _beam().copy([src], [dst])
        return
    opened = (_beam().open(src, compression_type=CompressionTypes.UNCOMPRESSED) if is_remote(src)
              else open(local(src), "rb"))
    with opened as fin, atomic_output(dst) as tmp, open(tmp, "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 22)


def check_writable(path: str) -> None:
    """StorageError unless files can be written in the folder or bucket prefix `path` (made
    if missing) and deleted again: for an output directory, before any work starts. On an
    object store this names an unreachable endpoint, missing credentials, a bucket that does
    not exist or refuses writes (see `objstore.check_writable`)."""
    if is_remote(path):
        objstore.check_writable(path)
        return
    probe = os.path.join(local(path), f".probe-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(local(path), exist_ok=True)
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as e:
        raise StorageError(f"{path}: cannot write there ({e.strerror or e})") from None


class OutputBusy(RuntimeError):
    """Another run is writing the same output directory."""


def busy(out: str) -> Callable[[str], OutputBusy]:
    """The OutputBusy for `out` held by the run its lease describes (shards/lease.py describe)."""
    return lambda holder: OutputBusy(f"{out} is in use by another run ({holder}); wait for it to finish or write "
                                     "to another output directory")


@contextlib.contextmanager
def output_lock(out: str, what: str, lease_s: float = LEASE_S) -> Iterator[None]:
    """Hold OUT/.lock (an exclusive `flock`) while a run rewrites OUT: a second ingest or
    refilter on the same directory would otherwise delete the first one's staged files.
    The kernel drops the lock when its holder dies, so a killed run never blocks the next.
    Object stores have no flock: there the lock is a lease object with an expiry that the
    holder renews (shards/lease.py); a dead holder's lease lapses after `lease_s`. Yields the
    Lease there, None for a local output. (A job that outlives its launcher takes a lease of
    its own instead: lease.acquire_job.)"""
    if is_remote(out):
        lease = Lease(join(out, ".lock"), what, busy(out), lease_s=lease_s)
        lease.acquire()
        try:
            yield lease
        finally:
            lease.release()
        return
    import json
    import time

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ".lock")
    fd = _flock_file(path, out)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        # a run that ends, fails or is interrupted leaves no .lock behind: the file is removed
        # while still locked (a run that locked it meanwhile finds it unlinked and retries)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # closing releases the flock


def _flock_file(path: str, out: str) -> int:
    """An fd holding the exclusive flock of `path`, the file now at that path: one locked and
    then unlinked by its releasing holder is opened again. OutputBusy when another holds it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusy(f"{out} is in use by another run ({holder}); wait for it to finish "
                             "or write to another output directory") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
