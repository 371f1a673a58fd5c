"""Live progress of a local ingest: videos done and failed, clips cut, with totals and an ETA.

Beam's local FnApiRunner runs the stages in worker processes (multi_processing) or in this
one (in_memory), and its metrics are only read once the job is over. So every count a stage
makes (`note`, called beside each Beam counter) is also appended as a line to a progress
file named by the environment variable GENIE_PROGRESS, which the launcher sets before the
job starts and worker processes inherit; `Progress` tails that file in a thread. Workers
that do not inherit it (Dataflow) write nothing: there the job's Beam counters in the
Dataflow console are the progress (`ingest` namespace: candidates, videos_done, clips_cut,
failed_<stage>).

On a terminal the launcher shows a tqdm bar; otherwise (CI logs, tests) one line per
`step_pct` percent of the videos.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from typing import TextIO

from tqdm import tqdm

ENV = "GENIE_PROGRESS"
VIDEO_FAILURES = ("failed_download", "failed_probe", "failed_decode", "failed_cut", "failed_encode")
TRACKED = frozenset({"candidates", "keyword_kept", "keyword_rejected", "videos_done", "clips_cut", *VIDEO_FAILURES})


def note(name: str, n: int = 1) -> None:
    """Record a count for the launcher's progress display, if this process works for one."""
    path = os.environ.get(ENV)
    if not path or name not in TRACKED:
        return
    try:
        # one short O_APPEND write per count: lines from several processes never interleave
        with open(path, "a") as f:
            f.write(f"{name} {n}\n")
    except OSError:
        pass  # progress is a nicety: a video never fails over it


class Progress:
    """Tails the progress file at `path` while the job runs (a context manager) and shows it
    on `stream`. `already` videos were done or staged before this run: the total of videos
    to process is the candidates kept by keywords less those (an estimate: a video found
    twice is counted twice until the end)."""

    def __init__(self, path: str, already: int = 0, stream: TextIO | None = None, step_pct: int = 10,
                 interval_s: float = 0.5):
        self.path, self.already, self.step_pct, self.interval_s = path, already, step_pct, interval_s
        self.stream = stream or sys.stderr
        self.counts: Counter[str] = Counter()
        self._offset, self._bar, self._next_pct, self._t0 = 0, None, step_pct, None
        self._announced, self._last, self._env_before = False, "", None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="ingest-progress", daemon=True)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __enter__(self) -> "Progress":
        open(self.path, "a").close()
        self._env_before = os.environ.get(ENV)
        os.environ[ENV] = self.path
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._env_before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._env_before
        self._stop.set()
        self._thread.join()
        self.poll(final=exc[0] is None)
        if self._bar is not None:
            self._bar.close()

    # ------------------------------------------------------------------------ counts
    @property
    def finished(self) -> int:
        return self.counts["videos_done"] + sum(self.counts[k] for k in VIDEO_FAILURES)

    @property
    def total(self) -> int | None:
        """Videos this run processes; None while discovery is still running."""
        if not self.finished:
            return None
        return max(self.counts["keyword_kept"] - self.already, self.finished)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.poll()

    def poll(self, final: bool = False) -> None:
        """Read what was appended since the last poll and show it; `final`: the job is over."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next poll
        self._offset += end
        for line in chunk[:end].decode(errors="replace").splitlines():
            name, _, n = line.partition(" ")
            if n.isdigit():
                self.counts[name] += int(n)
        if self.counts["keyword_kept"] and self._t0 is None:
            self._t0 = time.time()  # discovery is over: from here on videos are processed
        self._show(final)

    # ----------------------------------------------------------------------- display
    def describe(self) -> str:
        c = self.counts
        failed = self.finished - c["videos_done"]
        return f"{c['videos_done']} done, {failed} failed, {c['clips_cut']} clips"

    def _show(self, final: bool) -> None:
        if not self.finished and not final:
            return
        if not self._announced:
            self._announced = True
            self._line(f"{self.counts['candidates']} candidates found, {self.counts['keyword_kept']} kept by keywords, "
                       f"{self.already} done before")
        if self.tty:
            self._show_bar(final)
        else:
            self._show_lines(final)

    def _show_bar(self, final: bool) -> None:
        if self._bar is None:
            self._bar = tqdm(total=self.total, unit="video", desc="ingest", file=self.stream, dynamic_ncols=True)
            # the bar appears with the first video done: rate and ETA count from the end of discovery
            self._bar.start_t = self._bar.last_print_t = self._t0 or self._bar.start_t
        self._bar.total = self.finished if final else self.total
        self._bar.update(self.finished - self._bar.n)
        self._bar.set_postfix_str(self.describe())

    def _show_lines(self, final: bool) -> None:
        total = self.finished if final else self.total
        pct = 100 * self.finished // total if total else 100
        if pct < self._next_pct and not final:
            return
        self._next_pct = (pct // self.step_pct + 1) * self.step_pct
        eta = ""
        if not final and self._t0 is not None and self.finished < total:
            elapsed = time.time() - self._t0
            eta = f", eta {tqdm.format_interval(elapsed / self.finished * (total - self.finished))}"
        self._line(f"{pct}% of {total} videos: {self.describe()}{eta}")

    def _line(self, text: str) -> None:
        if text != self._last:  # the final poll repeats the 100% line the last poll printed
            self._last = text
            print(f"ingest: {text}", file=self.stream, flush=True)
