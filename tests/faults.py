"""A fault-injecting filesystem for tests: wraps the object-store operations of `shards.fs`
(the one filesystem layer every stage writes through) and, at the k-th operation on a
remote path, fails it (InjectedFault, an error a store client could raise) or kills the
"worker" (Killed, a BaseException: no `except Exception` handler of the code under test
runs, as when the process dies). Local paths pass through uncounted.

Batch operations count one operation per object (a batch cut short has done some of its
objects), and each write counts before its object appears (a kill during an upload leaves
no object). `step` names the job step an operation belongs to (set by the test around each
step with `step(name)`), so a sweep can pick the k that fall in one step.

    with FaultyFs(monkeypatch) as ffs:
        ffs.fail_at, ffs.mode = 17, "kill"
        ...                                   # raises Killed at the 17th object operation
"""
from __future__ import annotations

import contextlib
import threading

from genie_pipeline.shards import fs


class InjectedFault(OSError):
    """An object operation that failed (a store error after the client's retries)."""


class Killed(BaseException):
    """The worker died at this operation."""


# the job step running now (a module global, not an attribute: Beam pickles the test's step
# wrappers, and a copy of an object would not be the one the counting reads)
CURRENT = {"step": ""}


@contextlib.contextmanager
def step(name: str):
    prev, CURRENT["step"] = CURRENT["step"], name
    try:
        yield
    finally:
        CURRENT["step"] = prev


# operations on one path (or a list of paths: counted once, a listing or a lookup)
SINGLE = ("exists", "isdir", "glob", "list_files", "open_read", "remove", "rename", "copy", "existing")


class FaultyFs:
    def __init__(self, monkeypatch):
        self.mp = monkeypatch
        self.ops: list[tuple[str, str, str]] = []  # (step, operation, path) of every counted op
        self.fail_at: int | None = None  # 1-based: the operation that fails
        self.mode = "fail"
        self.fired = False
        self._lock = threading.Lock()

    def __enter__(self) -> "FaultyFs":
        for name in SINGLE:
            self._wrap_single(name)
        orig_atomic, orig_remove_many, orig_rename_many = fs.atomic_output, fs.remove_many, fs.rename_many

        @contextlib.contextmanager
        def atomic_output(dest):
            with orig_atomic(dest) as tmp:
                yield tmp
                self.op("write", dest)  # the object appears when the block ends: fault first

        def remove_many(paths):
            for p in paths:
                self.op("delete", p)
                orig_remove_many([p])

        def rename_many(pairs):
            for s, d in pairs:
                self.op("rename", s)
                orig_rename_many([(s, d)])

        self.mp.setattr(fs, "atomic_output", atomic_output)
        self.mp.setattr(fs, "remove_many", remove_many)
        self.mp.setattr(fs, "rename_many", rename_many)
        return self

    def __exit__(self, *exc) -> None:
        self.mp.undo()

    def _wrap_single(self, name: str) -> None:
        orig = getattr(fs, name)

        def wrapped(path, *args, **kw):
            first = path[0] if isinstance(path, list) and path else path
            self.op(name, first if isinstance(first, str) else str(first))
            return orig(path, *args, **kw)

        self.mp.setattr(fs, name, wrapped)

    def op(self, name: str, path: str) -> None:
        if not fs.is_remote(path):
            return
        with self._lock:
            self.ops.append((CURRENT["step"], name, path))
            n = len(self.ops)
        if self.fail_at is not None and n == self.fail_at and not self.fired:
            self.fired = True
            if self.mode == "kill":
                raise Killed(f"killed at object operation {n} ({name} {path})")
            raise InjectedFault(f"injected fault at object operation {n} ({name} {path})")

    def reset(self, fail_at: int | None = None, mode: str = "fail") -> None:
        self.ops, self.fail_at, self.mode, self.fired = [], fail_at, mode, False

    def in_step(self, step: str) -> list[int]:
        """The 1-based numbers of the operations counted in `step`."""
        return [i + 1 for i, (s, _, _) in enumerate(self.ops) if s == step]


def spread(ks: list[int], n: int) -> list[int]:
    """At most n of `ks`, evenly spaced, first and last included (n == 1: the middle one)."""
    if len(ks) <= n:
        return list(ks)
    if n == 1:
        return [ks[len(ks) // 2]]
    return sorted({ks[round(i * (len(ks) - 1) / (n - 1))] for i in range(n)})
