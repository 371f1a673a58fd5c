"""Per-host politeness that holds for the whole job, not per machine.

Two mechanisms, both keyed by a URL's host name:

**A budget split among the job's worker processes.** `download.per_host_rate` (download
starts per second per host) and `download.per_host_concurrency` (downloads in flight per
host) are limits for the whole job. Every worker process takes its share:

    rate_share        = per_host_rate / W                  (starts per second, this process)
    concurrency_share = max(1, ceil(per_host_concurrency / W))

where W is the number of worker processes (`job_worker_processes`). The rate is exact: W
processes each starting at most `rate_share` per second start at most `per_host_rate`. The
concurrency is rounded up so that every process can work at all; the job-wide number in
flight is then at most W × concurrency_share: `per_host_concurrency` when W divides it, W
when W exceeds it, below per_host_concurrency + W otherwise. With more processes than
concurrency, the rate share is the limit that binds. The defaults (2 starts/s, 2 in flight)
give 50 processes 0.04 starts/s each (one every 25 s) and one download in flight each.
Threads of one process share one `HostLimiter` (`process_limiter`), so W counts processes:

- local FnApiRunner/DirectRunner: `direct_num_workers` in multi_processing mode, else 1;
- Dataflow: VMs × SDK processes per VM. VMs = `--max_num_workers` (or `--num_workers` with
  `--autoscaling_algorithm=NONE`); SDK processes per VM = the vCPUs of `--machine_type`
  (Dataflow runs one SDK process per vCPU), or 1 with
  `--experiments=no_use_multiple_sdk_containers`. Harness threads
  (`--number_of_worker_harness_threads`) share their process's limiter and do not count;
- any other runner, or a Dataflow job whose size cannot be read from its options:
  `download.job_workers`, which also overrides everything above.

**A job-wide back-off.** A host that answers 429, or puts up a bot wall (a 403 captcha page,
YouTube's "Sign in to confirm you're not a bot"), gets a record in the output,
`OUT/_hosts/<sha256(host)[:16]>.json` = {"host", "until", "reason", "strikes"}, written
through shards.fs (local, gs://, s3://). Every worker reads it (cached for `CACHE_S` = 5 s)
before each request to that host and waits until `until`; a wait longer than the video's
deadline fails the video at once (HostBackoff) instead. The delay is
`backoff_s × 2^(strikes-1)` capped at `backoff_max_s`, and at least the host's Retry-After
(itself capped at a day). A strike counts once per back-off: answers that arrive while a
back-off is in force (requests already in flight) extend nothing; the first one after it
has passed (within `backoff_max_s`) doubles the delay. Records are best effort: one that
cannot be read or written is logged and ignored, and a download never fails for it.
"""
from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from genie_pipeline.ingest.config import DownloadConfig, PreflightError, RunnerConfig
from genie_pipeline.shards import fs

CACHE_S = 5.0  # how stale another worker's back-off record may be when this one reads it
MAX_RETRY_AFTER_S = 86400.0  # a Retry-After beyond a day is a server's mistake, not a plan
BOT_WALL = re.compile(r"confirm you.?re not a bot|captcha|unusual traffic|are you a robot", re.I)
_LOCAL_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "Direct", "BundleBasedDirectRunner",
                            "SwitchingDirectRunner", "PrismRunner", "Prism"})
_DATAFLOW = frozenset({"DataflowRunner", "Dataflow", "TestDataflowRunner"})
# vCPUs of Compute Engine machine types: FAMILY-custom-N-MB[-ext], SERIES-CLASS-N[-lssd], shared-core ones
_CUSTOM_TYPE = re.compile(r"^(?:[a-z0-9]+-)?custom-(\d+)-\d+(?:-ext)?$")
_STANDARD_TYPE = re.compile(r"^[a-z][a-z0-9]*-[a-z]+-(\d+)(?:-lssd)?$")
_SHARED_CORE = {"e2-micro": 2, "e2-small": 2, "e2-medium": 2, "f1-micro": 1, "g1-small": 1}
log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ the share
def job_worker_processes(runner: RunnerConfig, extra_args: list[str], override: int | None = None) -> int:
    """How many worker processes share the job-wide per-host budget (see the module doc):
    `override` (download.job_workers) if given, else read from the runner section and the
    command-line Beam flags (which win). PreflightError when a remote job's size cannot be
    read from its options."""
    if override:
        return override
    from apache_beam.options.pipeline_options import (DebugOptions, DirectOptions, PipelineOptions,
                                                      StandardOptions, WorkerOptions)

    options = PipelineOptions(list(runner.options) + list(extra_args))
    name = (options.view_as(StandardOptions).runner or runner.name).rsplit(".", 1)[-1]
    if name == "FnApiRunner":  # the lead's pipeline_options passes the runner section's values
        return runner.direct_num_workers if runner.running_mode == "multi_processing" else 1
    if name in _LOCAL_RUNNERS:
        direct = options.view_as(DirectOptions)
        if direct.direct_running_mode != "multi_processing":
            return 1
        return direct.direct_num_workers or os.cpu_count() or 1  # 0: one per core
    if name not in _DATAFLOW:
        raise PreflightError("download.job_workers", f"cannot tell how many worker processes {name} runs; "
                                                     f"set download.job_workers (per-host limits are job-wide)")
    worker = options.view_as(WorkerOptions)
    vms = worker.max_num_workers or (worker.num_workers if worker.autoscaling_algorithm == "NONE" else None)
    if not vms:
        raise PreflightError("--max_num_workers", "per-host download limits are job-wide and need the job's "
                                                  "size: give --max_num_workers (or download.job_workers)")
    if "no_use_multiple_sdk_containers" in (options.view_as(DebugOptions).experiments or []):
        return vms
    if not worker.machine_type:
        raise PreflightError("--machine_type", "Dataflow runs one SDK process per vCPU: give --machine_type "
                                               "so per-host download limits can be split (or download.job_workers)")
    return vms * machine_vcpus(worker.machine_type)


def machine_vcpus(machine_type: str) -> int:
    """vCPUs of a Compute Engine machine type (n2-standard-8: 8, custom-6-3072: 6, e2-medium: 2);
    PreflightError for one it cannot read (a GPU type such as a2-highgpu-1g)."""
    t = machine_type.strip().lower()
    m = _CUSTOM_TYPE.match(t) or _STANDARD_TYPE.match(t)
    if m:
        return int(m.group(1))
    if t in _SHARED_CORE:
        return _SHARED_CORE[t]
    raise PreflightError("--machine_type", f"cannot tell the vCPUs of {machine_type!r}; set download.job_workers "
                                           "to the job's worker processes (VMs × vCPUs)")


@dataclass(frozen=True)
class HostShare:
    """One worker process's part of the job-wide per-host budget."""

    rate: float  # download starts per second per host
    concurrency: int  # downloads in flight per host
    workers: int  # the processes the budget is split among


def worker_share(download: DownloadConfig, workers: int) -> HostShare:
    workers = max(1, workers)
    return HostShare(rate=download.per_host_rate / workers,
                     concurrency=max(1, math.ceil(download.per_host_concurrency / workers)), workers=workers)


# ------------------------------------------------------------------------------ the limiter
class HostLimiter:
    """For every thread of a process: at most `concurrency` slots per host at once, and
    starts (`pace`) `1/rate` seconds apart per host, in the order asked. `clock` and `sleep`
    are injectable so the schedule can be tested without waiting."""

    def __init__(self, concurrency: int, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.concurrency, self.gap = concurrency, 1.0 / rate
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._next: dict[str, float] = {}

    @contextlib.contextmanager
    def slot(self, host: str) -> Iterator[None]:
        """One of the host's `concurrency` slots, held while the block runs."""
        with self._lock:
            sem = self._slots.setdefault(host, threading.BoundedSemaphore(self.concurrency))
        with sem:
            yield

    def reserve(self, host: str) -> float:
        """The clock time at which the next start for `host` may happen (now, or one gap after
        the start reserved before it); the following start is pushed one gap further."""
        with self._lock:
            at = max(self.clock(), self._next.get(host, -math.inf))
            self._next[host] = at + self.gap
            return at

    def pace(self, host: str) -> None:
        """Sleep until this start's turn. Called right before the first request of a download
        attempt (not when its slot is taken), so the time yt-dlp spends getting ready, which
        varies, cannot bunch two requests closer than a gap."""
        wait = self.reserve(host) - self.clock()
        if wait > 0:
            self.sleep(wait)


_LIMITERS: dict[tuple[int, float], HostLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def process_limiter(share: HostShare) -> HostLimiter:
    """The limiter of this process for `share`: every downloader (and Beam thread) of the
    process takes its slots and starts from the same one, so the share is the process's,
    not each DoFn instance's."""
    with _LIMITERS_LOCK:
        return _LIMITERS.setdefault((share.concurrency, share.rate), HostLimiter(share.concurrency, share.rate))


# ------------------------------------------------------------------------------ the back-off
class HostBackingOff(Exception):
    """A host's back-off lasts longer than the time the caller has."""

    def __init__(self, host: str, until: float, reason: str):
        left = until - time.time()
        super().__init__(f"{host} asked the job to back off for {left:.0f} s more ({reason}); "
                         f"the video's download.deadline_s is shorter")
        self.host, self.until, self.reason = host, until, reason


class HostBackoff:
    """The job-wide back-off records under `root` (OUT/_hosts); see the module doc. `clock`
    is wall-clock time (records are shared between machines)."""

    def __init__(self, root: str, base_s: float, max_s: float, cache_s: float = CACHE_S, spread_s: float = 0.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep):
        self.root, self.base_s, self.max_s, self.cache_s = root, base_s, max_s, cache_s
        self.spread_s = spread_s
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict]] = {}  # host -> (read at, record)

    def path(self, host: str) -> str:
        # the host never becomes a path: a name from a URL could hold anything
        return fs.join(self.root, hashlib.sha256(host.lower().encode()).hexdigest()[:16] + ".json")

    def current(self, host: str, fresh: bool = False) -> dict:
        """The host's record ({} if none): from the cache unless older than cache_s or `fresh`."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(host)
        if hit and not fresh and now - hit[0] < self.cache_s:
            return hit[1]
        record = self._read(host)
        with self._lock:
            self._cache[host] = (now, record)
        return record

    def wait(self, host: str, budget_s: float) -> float:
        """Sleep until the host's back-off has passed, plus a random part of `spread_s` (one
        gap of this process's rate share), so that the job's workers come back spread out
        rather than all at `until`; the seconds slept. HostBackingOff (at once, without
        sleeping) if the back-off lasts longer than `budget_s`."""
        record = self.current(host)
        left = float(record.get("until", 0)) - self.clock()
        if left <= 0:
            return 0.0
        if left > budget_s:
            raise HostBackingOff(host, float(record["until"]), str(record.get("reason", "")))
        left = min(left + random.uniform(0, self.spread_s), budget_s)
        self.sleep(left)
        return left

    def strike(self, host: str, reason: str, retry_after_s: float | None = None, *,
               base_s: float | None = None, max_s: float | None = None) -> float:
        """Record that `host` asked us to slow down; the time (clock) until which the job
        leaves it alone. `base_s`/`max_s` replace this back-off's own for this strike (a bot
        wall rests an identity longer than a 429 asks)."""
        base_s = self.base_s if base_s is None else base_s
        max_s = self.max_s if max_s is None else max_s
        now = self.clock()
        old = self.current(host, fresh=True)
        until, strikes = float(old.get("until", 0)), int(old.get("strikes", 0))
        wait = min(max(retry_after_s or 0.0, 0.0), MAX_RETRY_AFTER_S)
        if now < until:  # in force: an answer to a request already in flight, not a new offence
            if now + wait <= until:
                return until
            new = {"host": host, "until": now + wait, "reason": reason, "strikes": strikes}
        else:
            strikes = strikes + 1 if old and now < until + max_s else 1
            delay = max(min(max_s, base_s * 2 ** (strikes - 1)), wait)
            new = {"host": host, "until": now + delay, "reason": reason, "strikes": strikes}
        log.warning("backing off %s for %.1f s (%s, strike %d)", host, new["until"] - now, reason, new["strikes"])
        self.record(host, new)
        return new["until"]

    def record(self, host: str, new: dict) -> None:
        """Write `host`'s record (best effort: it holds in this process whatever the store says)."""
        with self._lock:
            self._cache[host] = (self.clock(), new)
        try:
            fs.write_bytes(self.path(host), json.dumps(new).encode())
        except Exception as e:  # noqa: BLE001 — the back-off still holds in this process
            log.warning("cannot write the back-off record of %s: %s", host, e)

    def _read(self, host: str) -> dict:
        path = self.path(host)
        try:
            if not fs.exists(path):
                return {}
            record = json.loads(fs.read_bytes(path))
            return record if isinstance(record, dict) and isinstance(record.get("until"), (int, float)) else {}
        except Exception as e:  # noqa: BLE001 — a torn or unreadable record is no back-off
            log.warning("cannot read the back-off record of %s: %s", host, e)
            return {}


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header value asks for (delta-seconds or an HTTP date); None if
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
