"""Stopping a training run on SIGINT (Ctrl-C) or SIGTERM without losing its steps.

While a `GracefulStop` is entered, the first signal (SIGINT, SIGTERM, or the CLI's
sigwait thread raising SIGTERM's handler for a Ctrl-C: genie_pipeline/cli.py interrupts)
only sets `requested`; the loop finishes
the step it is in, saves a checkpoint and raises `TrainInterrupted` naming it. A second
signal raises KeyboardInterrupt at once (the user insists; the last periodic checkpoint stays).
DataLoader workers ignore SIGINT (`ignore_sigint`, their init): a terminal's Ctrl-C reaches
the whole process group, and a worker dying of it would fail the step that the main process
is about to finish and checkpoint.
"""
from __future__ import annotations

import signal
import sys
import threading


class GracefulStop:
    def __init__(self, announce: bool = True):
        self.requested = False
        self.announce = announce
        self._old: dict[int, object] = {}

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # signals can only be set there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self.announce:
            print("[train] interrupted: stopping after this step to save a checkpoint (again to stop at once)",
                  file=sys.stderr, flush=True)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
