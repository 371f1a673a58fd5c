"""The one filesystem layer: local paths (plain or `file://`) and any Beam FileSystem
(`gs://` with `apache-beam[gcp]`, `s3://` with `apache-beam[aws]`), for every reader and
writer of the project, ingest and training alike.

Writes go to a local file first and are moved into place whole: a reader never sees a
partial file (local: `os.replace`; object stores: an object appears only when its upload
completes).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import uuid
from typing import Iterator

from apache_beam.io.filesystems import FileSystems


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


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local(path: str) -> str:
    """A local path without its `file://` prefix."""
    return path.removeprefix("file://")


def join(base: str, *parts: str) -> str:
    return FileSystems.join(base, *parts) if is_remote(base) else os.path.join(local(base), *parts)


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(local(path), exist_ok=True)


def exists(path: str) -> bool:
    return FileSystems.exists(path) if is_remote(path) else os.path.exists(local(path))


def isdir(path: str) -> bool:
    """Object stores have no directories: there, a prefix with objects under it is one."""
    if not is_remote(path):
        return os.path.isdir(local(path))
    return bool(FileSystems.match([path.rstrip("/") + "/*"])[0].metadata_list)


def glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    import glob as _glob

    return sorted(_glob.glob(local(pattern)))


def list_files(pattern: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of each file an absolute `pattern` matches, sorted by path, by
    Beam's matching on every filesystem: `*` stays in one folder, `**` crosses folders,
    folders themselves never match."""
    return sorted((m.path, m.size_in_bytes) for m in FileSystems.match([pattern])[0].metadata_list)


def open_read(path: str):
    """A binary reader; a `.gz`, `.bz2`, `.zst` … file is decompressed as it is read (Beam's
    rule, the same locally and on object stores: catalogs and URL lists may be compressed)."""
    return FileSystems.open(path if is_remote(path) else local(path))


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def remove(path: str) -> None:
    if is_remote(path):
        if FileSystems.exists(path):
            FileSystems.delete([path])
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def rmtree(path: str) -> None:
    if is_remote(path):
        for p in glob(path.rstrip("/") + "/**"):
            remove(p)
    else:
        shutil.rmtree(path, ignore_errors=True)


def rename(src: str, dst: str) -> None:
    if is_remote(src) or is_remote(dst):
        FileSystems.rename([src], [dst])
    else:
        os.replace(src, dst)


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
            with open(tmp, "rb") as src, FileSystems.create(dest) as dst:
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


class OutputBusy(RuntimeError):
    """Another run is writing the same output directory."""


@contextlib.contextmanager
def output_lock(out: str, what: str) -> Iterator[None]:
    """Hold OUT/.lock (an exclusive `flock`) while a run rewrites OUT: a second ingest or
    refilter on the same directory would otherwise delete the first one's staged files.
    The kernel drops the lock when its holder dies, so a killed run never blocks the next.
    Object stores have no such lock: there, one job per output is the user's rule."""
    if is_remote(out):
        yield
        return
    import fcntl
    import json
    import time

    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            raise OutputBusy(f"{out} is in use by another run ({holder}); wait for it to finish "
                             "or write to another output directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what,
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
