"""Scoring clips with a trained quality model: in Beam (`ScoreQuality`, the ingest stage and
`score_manifest` for refilter --rescore) and outside it (`score_clips`).

Each clip's mp4 is read from its video's clip store, K frames are sampled exactly as in
training (`frames.sample_frames`), and RunInference (the PyTorch handler, batched, the model
loaded once per worker process) scores them.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import torch

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.frames import sample_frames
from genie_pipeline.filtering.quality.model import QualityNet, read_metadata, use_bf16
from genie_pipeline.shards import fs
from genie_pipeline.shards.reader import has_table, read_rows
from genie_pipeline.shards.records import ClipRow, VideoResult, from_row
from genie_pipeline.shards.store import read_store, store_path

log = logging.getLogger(__name__)


def score_clips(model: QualityNet, clips: Iterable[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Clip probabilities for uint8 (K, H, W, 3) arrays, outside Beam (training, tests)."""
    out, batch = [], []
    model.eval()
    with torch.inference_mode():
        for c in clips:
            batch.append(c)
            if len(batch) == batch_size:
                out.append(model(torch.from_numpy(np.stack(batch))).numpy())
                batch = []
        if batch:
            out.append(model(torch.from_numpy(np.stack(batch))).numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


# ----------------------------------------------------------------------- the Beam stage
def default_torch_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class _SampleClipFrames(beam.DoFn):
    """VideoResult -> ((video_key, clip_key), uint8 frames) per clip; the video itself on 'videos';
    clips that cannot be read on 'errors'."""

    def __init__(self, k: int):
        self.k = k

    def setup(self):
        self.failed = _counter("quality_clips_unreadable")
        self.cpu_ms = _counter("quality_sample_cpu_ms")

    def process(self, video):
        yield beam.pvalue.TaggedOutput("videos", (video.video_key, video))
        if video.status != "done" or not video.clips:
            return
        # CPU is counted around the work only: a yield runs the fused downstream stages
        # (batching, inference) on this thread
        t0 = time.thread_time()
        try:
            data = read_store(video.store)[1] if video.store else {}
        except Exception as e:  # noqa: BLE001 — a broken store must not kill the pipeline
            log.warning("quality: cannot read clip store %s: %s", video.store, e)
            data = {}
        out, failed = [], []
        for clip in video.clips:
            try:
                if clip.key not in data:
                    raise QualityError(f"{clip.key}.mp4 not in clip store {video.store}")
                out.append(((video.video_key, clip.key), sample_frames(data[clip.key], self.k)))
            except Exception as e:  # noqa: BLE001
                log.warning("quality: clip %s unreadable: %s", clip.key, e)
                failed.append(clip.key)
        self.cpu_ms.inc(int((time.thread_time() - t0) * 1000))
        for key in failed:
            self.failed.inc()
            yield beam.pvalue.TaggedOutput("errors", (video.video_key, (key, float("nan"))))
        yield from out


def _counter(name: str):
    # namespace "ingest": the ingest driver copies these counters into stats.json
    return beam.metrics.Metrics.counter("ingest", name)


def _infer(batch: Sequence[np.ndarray], model: QualityNet, device, inference_args=None, model_id=None):
    """Stack a batch of uint8 (K, H, W, 3) clips, score them; CPU time goes to a counter
    (thread time when torch runs on this thread alone, else the process's)."""
    from apache_beam.ml.inference.base import PredictionResult

    clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    t0 = clock()
    with torch.inference_mode():
        scores = model(torch.from_numpy(np.stack(batch))).tolist()
    _counter("quality_infer_cpu_ms").inc(int((clock() - t0) * 1000))
    _counter("quality_clips_scored").inc(len(scores))
    return [PredictionResult(None, s, model_id) for s in scores]


def _handler_base():
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

    return PytorchModelHandlerTensor


class QualityModelHandler(_handler_base()):
    """PyTorch model handler for uint8 frame arrays: the model is loaded once per worker
    process (RunInference shares it), torch threads are set for the worker count."""

    def __init__(self, model_path: str, model_params: dict, batch_size: int, torch_threads: int):
        super().__init__(state_dict_path=model_path, model_class=QualityNet, model_params=model_params,
                         device="CPU", inference_fn=_infer, load_model_args={"weights_only": True},
                         min_batch_size=1, max_batch_size=batch_size)
        self._torch_threads = torch_threads

    def load_model(self):
        torch.set_num_threads(self._torch_threads)
        return super().load_model()

    def get_num_bytes(self, batch) -> int:
        return sum(int(a.nbytes) for a in batch)

    def get_metrics_namespace(self) -> str:
        return "quality"


def _apply_scores(kv, mode: str, threshold: float):
    vkey, grouped = kv
    scores = dict(grouped["scores"])
    for video in grouped["videos"]:
        video = copy.deepcopy(video)
        for clip in video.clips:
            s = scores.get(clip.key)
            if s is None:
                continue  # not scored (video not done)
            clip.quality_score = float(s)
            # an unreadable clip (NaN) is rejected too: fail closed
            if mode == "filter" and clip.kept and not (s >= threshold):
                clip.kept, clip.reason = False, "quality"
                _counter("quality_rejected").inc()
        yield video


class ScoreQuality(beam.PTransform):
    """PCollection[VideoResult] -> PCollection[VideoResult] with quality_score per clip.

    Each clip's mp4 is read from the video's clip store, K frames are sampled exactly as in
    training, RunInference (PyTorch handler, keyed by clip, batched) scores them, and the
    scores are regrouped per video. `filter` mode rejects clips below the threshold with
    reason "quality" (a clip already rejected keeps its reason); `score_only` keeps all;
    `off` is the identity."""

    def __init__(self, quality_cfg: QualityConfig, workers: int):
        super().__init__()
        self.cfg, self.workers = quality_cfg, workers
        self.meta: dict | None = None
        if quality_cfg.mode == "off":
            return
        if not quality_cfg.model:
            raise QualityError(f"filters.quality.model: required when mode is {quality_cfg.mode!r}: "
                               "train a model with `genie-pipeline train-quality` and give its path")
        try:
            self.meta = read_metadata(quality_cfg.model)
        except QualityError as e:
            raise QualityError(f"filters.quality.model: {e}") from None
        self.threshold = quality_cfg.threshold if quality_cfg.threshold is not None else float(self.meta["threshold"])
        self.k = int(self.meta["model_params"]["frames_per_clip"])
        self.model_params = {**self.meta["model_params"], "channels_last": quality_cfg.channels_last,
                             "bf16": use_bf16(quality_cfg.bf16, self.meta)}
        self.threads = quality_cfg.torch_threads or default_torch_threads(workers)

    def expand(self, videos):
        if self.cfg.mode == "off":
            return videos | "QualityOff" >> beam.Map(lambda v: v)
        from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

        parts = videos | "QualitySample" >> beam.ParDo(_SampleClipFrames(self.k)).with_outputs(
            "videos", "errors", main="frames")
        handler = KeyedModelHandler(QualityModelHandler(self.cfg.model, self.model_params,
                                                        self.cfg.batch_size, self.threads))
        scored = (parts.frames
                  | "QualityInference" >> RunInference(handler)
                  | "QualityByVideo" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], float(kv[1].inference)))))
        scores = (scored, parts.errors) | "QualityScores" >> beam.Flatten()
        return ({"videos": parts.videos, "scores": scores}
                | "QualityRegroup" >> beam.CoGroupByKey()
                | "QualityApply" >> beam.FlatMap(_apply_scores, self.cfg.mode, self.threshold))


def score_manifest(out_dir: str, quality_cfg: QualityConfig, workers: int = 1) -> list[dict]:
    """Manifest rows with quality_score recomputed for every clip by the ScoreQuality stage
    (score_only) over the clip store; nothing is written."""
    import tempfile
    from pathlib import Path

    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    out_dir = str(out_dir)
    if not has_table(out_dir, "manifest"):
        raise QualityError(f"{out_dir} has no manifest table: is it an ingest output directory?")
    if not fs.isdir(fs.join(out_dir, "clips")):
        raise QualityError(f"{out_dir} has no clip store (clips/): it is kept with shards.keep_clip_store: true")
    rows = read_rows(out_dir, "manifest")
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_key"], []).append(r)
    videos = []
    for vk, rs in sorted(by_video.items()):
        clips = [from_row(ClipRow, r) for r in rs]
        videos.append(VideoResult(video_key=vk, video_id=rs[0]["video_id"], source=rs[0]["source"],
                                  title=rs[0]["title"], status="done", clips=clips, split=rs[0]["split"],
                                  store=store_path(out_dir, vk)))
    stage = ScoreQuality(quality_cfg.model_copy(update={"mode": "score_only"}), workers)
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            (p | beam.Create(videos) | stage
             | beam.FlatMap(lambda v: [json.dumps([c.key, c.quality_score]) for c in v.clips])
             | beam.io.WriteToText(f"{tmp}/scores", file_name_suffix=".jsonl"))
        scores = dict(json.loads(line) for f in sorted(Path(tmp).glob("scores*")) for line in f.read_text().splitlines())
    for r in rows:
        r["quality_score"] = float(scores.get(r["key"], float("nan")))
    return rows
