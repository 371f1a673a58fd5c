"""The stages a candidate goes through after discovery, Beam-free: each is built once per
worker from its config sections (and explicit paths) and called per candidate.

    KeywordVerdict   Candidate → the same Candidate, its keyword verdict recorded
    VideoProcessor   Candidate → VideoResult (clips in the clip store) or Failure

A whole source video never leaves `VideoProcessor`: it fetches, decodes once, cuts, scores
and encodes in one call and persists the video's clips to the clip store (the unit of
resume); only the small VideoResult moves on. Clips of a video whose source recorded the
agent's actions carry them (ingest/actions.py).
"""
from __future__ import annotations

import sys
import time

import numpy as np

from genie_pipeline.filtering.config import HeuristicsConfig, KeywordsConfig
from genie_pipeline.filtering.fingerprint import fingerprint
from genie_pipeline.filtering.heuristics import score_clip, verdict
from genie_pipeline.filtering.keywords import filter_for
from genie_pipeline.ingest.actions import ACTIONS_KEY, read_sidecar
from genie_pipeline.ingest.config import DownloadConfig
from genie_pipeline.ingest.download import Downloader
from genie_pipeline.ingest.errors import Count, IngestError, failure, no_count
from genie_pipeline.ingest.decode import ClipCutter, iter_clips, probe
from genie_pipeline.ingest.rlds import fetch_episode, is_episode
from genie_pipeline.shards import fs
from genie_pipeline.shards.clip import ClipFormatError, encode_clip
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.records import Candidate, ClipRow, Failure, VideoResult, clip_key
from genie_pipeline.shards.store import read_store_result, store_path, write_store


class StoreNotWritten(RuntimeError):
    """A video's clip store could not be written (a storage error after the client's own
    retries): the output's trouble, not the video's. It leaves the stage, so the bundle is
    retried (Dataflow) or the run stops and the next one resumes; the video is never
    recorded as failed for it, which would skip it in every later run."""


class KeywordVerdict:
    """Records the verdict and matched terms on every candidate, kept or not (the candidates
    table shows why each was rejected). `selectors` maps a source name to its keyword set
    ("default", "none" or a name in keywords.sets); filters are compiled once."""

    def __init__(self, keywords: KeywordsConfig, selectors: dict[str, str], count: Count = no_count):
        self.filters = {name: filter_for(keywords, sel) for name, sel in selectors.items()}
        self.count = count

    def __call__(self, c: Candidate) -> Candidate:
        v = self.filters[c.source](c.title, c.description)
        c.keyword_verdict = "keep" if v.keep else "reject"
        c.keyword_reason, c.matched_terms = v.reason, list(v.matched)
        self.count("keyword_kept" if v.keep else "keyword_rejected")
        if not v.keep:
            self.count(f"keyword_rejected_{v.reason.split(':')[0]}")
        return c


class VideoProcessor:
    """Candidate → VideoResult with its clips written to the clip store under `out`, or a
    Failure naming the stage (download, probe, decode, cut, encode) and the error type.
    Never raises for a bad video: a surprise from yt-dlp, a filesystem or a codec becomes a
    failure row too. Downloads go to `scratch` and are deleted after cutting unless
    download.keep. `job_workers`, the job's worker processes, splits the per-host download
    limits (ingest/politeness.py); hosts' back-off records go to OUT/_hosts. A video whose
    clip store is there already (a retried bundle) is loaded from it, not fetched again."""

    def __init__(self, download: DownloadConfig, clips: ClipsConfig, heuristics: HeuristicsConfig,
                 out: str, scratch: str, count: Count = no_count, *, job_workers: int = 1):
        self.download, self.clips, self.heuristics, self.out = download, clips, heuristics, out
        self.downloader = Downloader(download, scratch, backoff_dir=fs.join(out, "_hosts"), job_workers=job_workers,
                                     count=count, clip_height=clips.height)
        self.count = count

    def __call__(self, c: Candidate) -> VideoResult | Failure:
        t0 = time.time()
        stored = self._stored(c)
        if stored is not None:
            return stored
        try:
            # an RLDS episode is read from its record, not downloaded (ingest/rlds.py)
            fetched = (fetch_episode(c, self.download, self.downloader.scratch) if is_episode(c)
                       else self.downloader.fetch(c))
        except IngestError as e:
            return e.failure(c)
        except Exception as e:  # a yt-dlp or filesystem surprise must not kill the job …
            if fs.environment_error(e):  # … but a full or read-only scratch stops it: no video's fault
                raise
            return failure(c, "download", type(e).__name__, str(e))
        self.count("downloaded")
        try:
            result = self._cut(c, fetched.path, c.provenance(fetched.meta))
        except IngestError as e:
            return e.failure(c)
        except ClipFormatError as e:
            return failure(c, "encode", "VideoError", str(e))
        except Exception as e:  # a bug or an exotic file must not kill the job
            if fs.environment_error(e) or isinstance(e, StoreNotWritten):  # the output's fault, not the video's
                raise
            return failure(c, "cut", type(e).__name__, str(e))
        finally:
            if fetched.temporary:
                fs.remove(fetched.path)
        self.count("videos_done")
        print(f"  done {c.video_key}: {len(result.clips)} clips ({sum(x.kept for x in result.clips)} kept) "
              f"in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
        return result

    def _stored(self, c: Candidate) -> VideoResult | None:
        """The result in the video's clip store when one is there, else None. A store is
        written in one atomic step after the video's last clip, so one that exists is complete:
        it was written by an earlier attempt of this bundle (Dataflow retries bundles and work
        items) or of this video, and fetching and cutting again would only repeat that work
        (a second download from the host). A store that cannot be read is cut again."""
        path = store_path(self.out, c.video_key)
        try:
            result = read_store_result(path) if fs.exists(path) else None
        except Exception as e:  # noqa: BLE001 — a damaged store is rewritten by cutting again
            if fs.environment_error(e):
                raise
            return None
        if result is None or result.video_key != c.video_key:
            return None
        self.count("stores_reused")
        self.count("videos_done")  # a retried bundle's counts replace the failed attempt's
        return result

    def _cut(self, c: Candidate, path: str, provenance: dict) -> VideoResult:
        """Probe, cut, score and encode the fetched file; store the clips. Raises IngestError."""
        limit = self.download.max_duration_s
        info = probe(path, self.download.max_pixels)
        span = (c.end_s - c.start_s) if c.start_s is not None and c.end_s is not None else info.duration_s
        # NaN (a duration nobody knows) passes: the cut finds out
        if span == span and span > limit:
            raise IngestError("probe", "TooLong", f"{span:.0f} s > download.max_duration_s")
        seconds, fps = self.clips.seconds, self.clips.fps
        clips: list[ClipRow] = []
        data: list[tuple[str, bytes]] = []
        offset = c.start_s or 0.0
        cutter = ClipCutter(self.clips)
        # a header can understate the length: the time decoded counts against the limit too
        for w in iter_clips(path, self.clips, c.start_s, c.end_s, self.download.max_pixels, max_s=limit,
                            span_s=span, cutter=cutter):
            row, mp4 = self._clip(c, offset + w.start / fps, w.frames_THWC, provenance, w.cut_frames)
            row.shot, row.cuts = w.shot, w.cuts
            clips.append(row)
            data.append((row.key, mp4))
        if not clips and self.clips.split_at_cuts and cutter.frames >= self.clips.frames:
            raise IngestError("cut", "NoShotLongEnough",
                              f"no shot holds a clip: the longest of {cutter.shots} shots is "
                              f"{cutter.longest_shot / fps:.1f} s, a clip needs one of "
                              f"{max(seconds, self.clips.min_shot_s):g} s (clips.seconds, clips.min_shot_s)")
        if not clips:
            raise IngestError("cut", "TooShort", f"{span:.1f} s of video gives no full {seconds:g} s clip")
        warning = self._true_actions(c, clips, info.duration_s, info.fps)
        result = VideoResult(video_key=c.video_key, video_id=c.video_id, source=c.source, title=c.title,
                             path=c.path, status="done", clips=clips, seconds_in=float(span if span == span else 0),
                             seconds_out=len(clips) * seconds, error=warning, store=store_path(self.out, c.video_key))
        try:
            write_store(result.store, result, data)
        except Exception as e:
            raise StoreNotWritten(f"{result.store}: {type(e).__name__}: {e}") from e
        return result

    def _true_actions(self, c: Candidate, clips: list[ClipRow], duration_s: float, fps: float) -> str:
        """Give the clips their true actions from the candidate's sidecar, if it names one.
        A bad sidecar costs only the actions: the clips keep NULL ones and the returned
        warning (the video row's `error`, its status still done) names the sidecar."""
        location = c.extra.get(ACTIONS_KEY)
        if not location:
            return ""
        try:
            true = read_sidecar(str(location), self.download)
            true.check_video(duration_s, fps)
            per_clip = [true.for_clip(r.start_s, self.clips.fps, r.n_frames) for r in clips]
        except IngestError as e:
            self.count("actions_bad")
            return f"{e.stage}:{e.error_type}: {e}"[:500]
        for row, actions in zip(clips, per_clip):
            row.true_actions, row.action_space = actions, true.action_space
        self.count("clips_with_actions", len(clips))
        return ""

    def _clip(self, c: Candidate, start_s: float, frames: np.ndarray, provenance: dict,
              cut_frames: list[int]) -> tuple[ClipRow, bytes]:
        """One clip's row (heuristic scores and verdict, its cuts) and its encoded mp4."""
        scores = score_clip(frames, self.clips.fps, cut_frames)
        reason = verdict(scores, self.heuristics)
        mp4 = encode_clip(frames, self.clips.spec)
        row = ClipRow(key=clip_key(c.video_key, int(round(start_s * 1000))), video_key=c.video_key,
                      video_id=c.video_id, source=c.source, title=c.title, start_s=start_s,
                      duration_s=self.clips.seconds, n_frames=len(frames), bytes=len(mp4),
                      kept=not reason, reason=reason, fingerprint=fingerprint(frames), cut_frames=list(cut_frames),
                      **scores.as_dict(), **provenance)
        self.count("clips_cut")
        self.count("clips_kept_heuristics" if not reason else f"clips_rejected_{reason}")
        return row, mp4
