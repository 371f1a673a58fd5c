"""The output lock on an object store: a lease object `OUT/.lock` naming its holder and an
expiry, renewed while the holder lives.

An object store has no flock, and a run that dies cannot release anything, so the lock
expires instead: the holder rewrites it every `lease_s / 3` seconds from a background
thread, and another run may take it over only after `expires` has passed (or at once when
the holder ran on this machine and its process is gone: a SIGKILLed local run does not block
its own resume). Release deletes the object.

Acquiring is: read the lease; if there is a live one, refuse (OutputBusy names the holder);
else write ours with a conditional write (S3 `If-None-Match: *` for a new object, `If-Match`
on the expired one's ETag; GCS `ifGenerationMatch`), so of two runs racing for it exactly
one wins; then read it back. On a store that ignores the conditions (some S3-compatible
servers, the GCS emulator) the read-back is the only guard, and the race window is the time
between one run's read and its write: two runs that both read "free" before either writes
can both believe they hold it until the next renewal, which finds the other's lease and
stops renewing (logged). That window is a few milliseconds; stores that honour conditional
writes (S3, GCS) have none.

A job that outlives its launcher (`ingest --detach`, a flex template) takes the lease itself
(`acquire_job`) under its run id, in its first step, and frees it at its commit; it has no
process to watch and no renewal, so it expires after `output.job_lease_h`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

from . import objstore

log = logging.getLogger(__name__)

LEASE_S = 60.0


def _boot_id() -> str:
    """Tells this machine (boot) apart from others with the same host name (containers)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: dict) -> str:
    """The holder as the busy message shows it."""
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("expires", 0))))
    return (f"{holder.get('what', '?')} run, pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')}, lease until {until}")


class Lease:
    """Hold `path` (the lease object) for a run described by `what`: `acquire()` or raise
    `busy(message)`, then `release()`. Renewal runs in a daemon thread meanwhile."""

    def __init__(self, path: str, what: str, busy: Callable[[str], Exception], lease_s: float = LEASE_S):
        self.path, self.what, self.busy, self.lease_s = path, what, busy, lease_s
        self.owner = uuid.uuid4().hex
        self.version: str | None = None
        self.since = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, since: str | None = None) -> bytes:
        return json.dumps({"owner": self.owner, "what": self.what, "pid": os.getpid(), "host": socket.gethostname(),
                           "boot": _boot_id(), "since": since or time.strftime("%Y-%m-%d %H:%M:%S"),
                           "expires": time.time() + self.lease_s}).encode()

    def acquire(self) -> None:
        current = objstore.read_versioned(self.path)
        if current is not None:
            holder = _parse(current[0])
            if not stale(holder):
                raise self.busy(describe(holder))
            log.warning("taking over the expired lease %s (%s)", self.path, describe(holder))
        self.since = time.strftime("%Y-%m-%d %H:%M:%S")
        won = objstore.write_if(self.path, self._record(self.since), None if current is None else current[1])
        back = objstore.read_versioned(self.path)
        if not won or back is None or _parse(back[0]).get("owner") != self.owner:
            holder = _parse(back[0]) if back else {}
            raise self.busy(describe(holder))
        self.version = back[1]
        self._thread = threading.Thread(target=self._renew, name="output-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                if not objstore.write_if(self.path, self._record(self.since), self.version):
                    log.error("lost the output lease %s to another run: stopped renewing it", self.path)
                    return
                back = objstore.read_versioned(self.path)
                if back is None or _parse(back[0]).get("owner") != self.owner:
                    log.error("lost the output lease %s to another run: stopped renewing it", self.path)
                    return
                self.version = back[1]
            except Exception as e:  # noqa: BLE001 — a failed renewal is retried at the next tick
                log.warning("could not renew the output lease %s: %s", self.path, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = objstore.read_versioned(self.path)
        if current is not None and _parse(current[0]).get("owner") == self.owner:
            objstore.delete(self.path)


def holder(path: str) -> dict | None:
    """The lease record at `path`, or None where there is none."""
    current = objstore.read_versioned(path)
    return None if current is None else _parse(current[0])


def stale(holder: dict) -> bool:
    """Whether another run may take over the lease `holder`: its expiry has passed, or its
    holder ran on this machine and its process is gone."""
    if float(holder.get("expires", 0)) < time.time():
        return True
    same_machine = holder.get("host") == socket.gethostname() and holder.get("boot") == _boot_id()
    return same_machine and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"])


def live_holder(path: str) -> dict | None:
    """The lease record at `path` where it is held (not stale), else None."""
    current = holder(path)
    return None if current is None or stale(current) else current


def acquire_job(path: str, owner: str, what: str, lease_s: float, busy: Callable[[str], Exception]) -> dict:
    """Take the lease at `path` for a job that outlives its launcher (a detached Dataflow job,
    a flex template), as the job's own first step: held under `owner` (the run id), with no
    process or host (so nothing but `expires`, `lease_s` from now, makes it stale: a worker
    that dies is replaced, the job goes on) and no renewal; `release_job` frees it at the
    job's commit. Raises `busy(holder)` where another run holds it and it is not stale, or
    another run won the race for it. Idempotent: a lease `owner` holds already is kept as it
    is (Beam retries a failed step). Returns the record held."""
    current = objstore.read_versioned(path)
    if current is not None:
        held = _parse(current[0])
        if held.get("owner") == owner:
            return held
        if not stale(held):
            raise busy(describe(held))
        log.warning("taking over the expired lease %s (%s)", path, describe(held))
    record = json.dumps({"owner": owner, "what": what, "pid": None, "host": "(a detached job)", "boot": "",
                         "since": time.strftime("%Y-%m-%d %H:%M:%S"), "expires": time.time() + lease_s}).encode()
    won = objstore.write_if(path, record, None if current is None else current[1])
    back = objstore.read_versioned(path)
    held = _parse(back[0]) if back else {}
    if not won or held.get("owner") != owner:
        raise busy(describe(held))
    return held


def release_job(path: str, owner: str) -> None:
    """Delete the lease at `path` if `owner` (a job that took it by `acquire_job`) still holds it."""
    current = holder(path)
    if current is not None and current.get("owner") == owner:
        objstore.delete(path)


def _parse(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}
