"""How an ingest stage reports, besides the items it returns.

A video the stage cannot use is an `IngestError` inside the stage and a returned `Failure`
row outside it: one bad video never stops the run. What a stage did is counted through a
`Count` callback that the runner gives it (the Beam job turns counts into metrics, which the
run's stats and summary table read); run on its own, a stage counts nothing.
"""
from __future__ import annotations

from typing import Callable

from genie_pipeline.shards.records import Candidate, Failure

Count = Callable[..., None]  # count(name, n=1)


def no_count(name: str, n: int = 1) -> None:
    """The counter of a stage run outside the Beam job."""


class IngestError(Exception):
    """One video cannot be used: `stage` (download, probe, decode, cut, encode) is where,
    `error_type` (HTTP404, Timeout, TooLarge, VideoError, …) is why, in a failure row."""

    def __init__(self, stage: str, error_type: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.error_type = error_type

    def failure(self, c: Candidate) -> Failure:
        return failure(c, self.stage, self.error_type, str(self))


def failure(c: Candidate, stage: str, error_type: str, message: str) -> Failure:
    """The dead-letter row for candidate `c`."""
    return Failure(video_key=c.video_key, video_id=c.video_id, source=c.source, stage=stage,
                   error_type=error_type, message=message[:2000], url=c.url, title=c.title, path=c.path)
