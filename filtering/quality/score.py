"""Scoring clips with a trained quality model: in Beam (`ScoreQuality`, the ingest stage and
`score_manifest` for refilter --rescore) and outside it (`score_clips`).

Each clip's mp4 is read from its video's clip store, K frames are sampled exactly as in
training (`frames.sample_frames`), and RunInference (the PyTorch handler over whole videos,
clips batched across them) scores them. The device, torch threads, bf16 and int8 are decided on
the worker, from its own CPU and GPU, when the model loads: a CPU worker loads the model in
each SDK process; a GPU worker loads it once per VM, in one process the others call through
Beam's multi-process shared model (one copy on the accelerator, not one per vCPU).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from typing import Iterable, Iterator

import apache_beam as beam
import numpy as np
import torch

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.frames import sample_frames
from genie_pipeline.filtering.quality.model import QualityNet, load_quality_model, read_metadata, resolve_device
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


def uncertainty(index, model_path: str, keys: list[str], threshold: float | None = None) -> dict[str, float]:
    """Active labelling's margin per clip: |score - threshold| under the model at `model_path`
    (its stored threshold unless given), the clips scored outside Beam, streamed."""
    model, meta = load_quality_model(model_path, bf16="off")
    t = float(meta["threshold"]) if threshold is None else threshold
    k = meta["model_params"]["frames_per_clip"]
    s = score_clips(model, (sample_frames(index.read(key), k) for key in keys))
    return {key: abs(float(v) - t) for key, v in zip(keys, s)}


# ----------------------------------------------------------------------- the Beam stage
def default_torch_threads(processes: int | None) -> int:
    """Torch threads per SDK process: this machine's cores shared among the `processes` that
    run on it (None: one process per core, as Dataflow runs them)."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, cores if processes is None else processes))


def processes_per_machine(pipeline, local_workers: int) -> int | None:
    """SDK processes on one worker machine, from the pipeline's runner and options (the
    launcher knows the job's shape; the worker counts its own cores): a local FnApiRunner runs
    `local_workers`; Dataflow runs one per vCPU (None), or one per VM with the experiment
    `no_use_multiple_sdk_containers`."""
    from apache_beam.options.pipeline_options import DebugOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    if pipeline is None or isinstance(pipeline.runner, FnApiRunner):
        return local_workers
    if "no_use_multiple_sdk_containers" in (pipeline.options.view_as(DebugOptions).experiments or []):
        return 1
    return None


class ScoringModel:
    """The loaded classifier on its device: called with uint8 (B, K, H, W, 3) clips as a
    numpy array, returns B probabilities as floats. Plain data in and out, so that it is
    called the same way in its own process and through Beam's cross-process proxy (the one
    model of a GPU worker): no tensor bound to a device crosses a process boundary."""

    def __init__(self, net: QualityNet, device: str):
        self.net, self.device = net, device

    def __call__(self, clips: np.ndarray) -> list[float]:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device, non_blocking=True)
            return self.net(x).float().cpu().tolist()


def _counter(name: str):
    # namespace "ingest": the ingest driver copies these counters into stats.json
    return beam.metrics.Metrics.counter("ingest", name)


def _video_frames(video: VideoResult, k: int, kept_only: bool = False) -> Iterator[tuple[str, np.ndarray | None]]:
    """(clip key, K sampled uint8 frames, or None where the clip cannot be read) for each
    clip of a done video (`kept_only`: each clip not rejected already), decoded one clip at a
    time from its clip store."""
    if video.status != "done" or not any(c.kept or not kept_only for c in video.clips):
        return
    try:
        data = read_store(video.store)[1] if video.store else {}
    except Exception as e:  # noqa: BLE001 — a broken store must not kill the pipeline
        log.warning("quality: cannot read clip store %s: %s", video.store, e)
        data = {}
    for clip in video.clips:
        if kept_only and not clip.kept:
            continue
        try:
            if clip.key not in data:
                raise QualityError(f"{clip.key}.mp4 not in clip store {video.store}")
            yield clip.key, sample_frames(data[clip.key], k)
        except Exception as e:  # noqa: BLE001
            log.warning("quality: clip %s unreadable: %s", clip.key, e)
            yield clip.key, None


def _handler_base():
    from apache_beam.ml.inference.pytorch_inference import PytorchModelHandlerTensor

    return PytorchModelHandlerTensor


class QualityModelHandler(_handler_base()):
    """RunInference handler whose examples are whole videos. Built on the launcher from the
    settings (`device`, `bf16`, `int8`, `torch_threads` of filters.quality, the model's metadata
    and the SDK processes per machine); everything that depends on the machine is decided in
    `load_model`, on the worker: the device (`resolve_device`), torch threads (the setting,
    else the worker's cores over its processes), bf16 and int8 (`use_bf16`, `use_int8` for
    that device). On
    CUDA the model is shared across the VM's SDK processes (`share_model_across_processes`):
    one copy on the GPU, loaded by the first process, called by the others through Beam's
    multi-process proxy; on CPU each process loads its own (RunInference shares it among the
    process's threads).
    A batch of videos is scored as one stream of their clips, `batch_size` clips per
    forward pass, each clip's frames decoded just before its pass, so memory holds one
    pass's frames and one clip store whatever the videos' lengths. Each video's prediction
    is {clip key: probability}, NaN for a clip that cannot be read. With `kept_only` (filter
    mode) the clips an earlier filter rejected are not scored: they are out whatever the
    score, and the heuristics reject what costs nothing to find (black, static, slideshow,
    montage), often half of what the classifier would score."""

    def __init__(self, model_path: str, meta: dict, batch_size: int, *, device: str = "auto", bf16: str = "auto",
                 int8: str = "auto", channels_last: bool = True, torch_threads: int | None = None,
                 processes: int | None = 1, kept_only: bool = False):
        model_params = {**meta["model_params"], "channels_last": channels_last}
        super().__init__(state_dict_path=model_path, model_class=QualityNet, model_params=model_params,
                         device="CPU", load_model_args={"weights_only": True},
                         min_batch_size=1, max_batch_size=batch_size)
        self._path, self._meta, self._params = model_path, meta, model_params
        self._device_setting, self._bf16_setting, self._int8_setting = device, bf16, int8
        self._torch_threads, self._processes, self._clips_per_pass = torch_threads, processes, batch_size
        self._k, self._kept_only = int(model_params["frames_per_clip"]), kept_only
        self._resolved: str | None = None  # the device, once decided on the worker

    def __getstate__(self):
        # a device decided on the launcher must not travel to the workers
        return {**self.__dict__, "_resolved": None}

    def device(self) -> str:
        """The torch device on this machine (decided once, where the handler runs)."""
        if self._resolved is None:
            self._resolved = resolve_device(self._device_setting)
        return self._resolved

    def share_model_across_processes(self) -> bool:
        # asked by RunInference's setup on the worker: one model per GPU VM, one per CPU process
        return self.device() == "cuda"

    def load_model(self) -> ScoringModel:
        device = self.device()
        threads = self._torch_threads or default_torch_threads(self._processes)
        torch.set_num_threads(threads)
        net, _ = load_quality_model(self._path, self._bf16_setting, self._params["channels_last"],
                                    int8=self._int8_setting, device=device, meta=self._meta)
        log.info("quality model on %s (%s), %d torch thread(s), bf16 %s, int8 %s", device,
                 torch.cuda.get_device_name() if device == "cuda" else f"{os.cpu_count()} cores", threads,
                 net.bf16, net.int8)
        return ScoringModel(net, device)

    def run_inference(self, batch, model, inference_args=None):
        from apache_beam.ml.inference.base import PredictionResult

        scores: dict[str, dict[str, float]] = {v.video_key: {} for v in batch}
        sample_ms, unreadable = _counter("quality_sample_cpu_ms"), _counter("quality_clips_unreadable")
        pending: list[tuple[str, str, np.ndarray]] = []

        def score_pending():
            # thread time when torch runs on this thread alone, else the process's
            clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
            t0 = clock()
            with torch.inference_mode():
                probs = model(np.stack([f for *_, f in pending]))
            _counter("quality_infer_cpu_ms").inc(int((clock() - t0) * 1000))
            _counter("quality_clips_scored").inc(len(probs))
            for (vkey, key, _), p in zip(pending, probs):
                scores[vkey][key] = float(p)
            pending.clear()

        for video in batch:
            frames = _video_frames(video, self._k, self._kept_only)
            while True:
                t0 = time.thread_time()
                item = next(frames, None)
                sample_ms.inc(int((time.thread_time() - t0) * 1000))
                if item is None:
                    break
                key, f = item
                if f is None:
                    unreadable.inc()
                    scores[video.video_key][key] = float("nan")
                    continue
                pending.append((video.video_key, key, f))
                if len(pending) == self._clips_per_pass:
                    score_pending()
        if pending:
            score_pending()
        return [PredictionResult(v, scores[v.video_key]) for v in batch]

    def get_num_bytes(self, batch) -> int:
        return sum(sum(c.kept or not self._kept_only for c in v.clips) for v in batch)

    def get_metrics_namespace(self) -> str:
        return "quality"


def _apply_scores(prediction, mode: str, threshold: float):
    """The video with each clip's score, and in filter mode below-threshold clips rejected."""
    scores = prediction.inference
    video = copy.deepcopy(prediction.example)
    for clip in video.clips:
        s = scores.get(clip.key)
        if s is None:
            continue  # not scored (video not done)
        clip.quality_score = float(s)
        # an unreadable clip (NaN) is rejected too: fail closed
        if mode == "filter" and clip.kept and not (s >= threshold):
            clip.kept, clip.reason = False, "quality"
            _counter("quality_rejected").inc()
    return video


class ScoreQuality(beam.PTransform):
    """PCollection[VideoResult] -> PCollection[VideoResult] with quality_score per clip.

    RunInference takes whole videos (QualityModelHandler): each clip's mp4 is read from the
    video's clip store, K frames are sampled exactly as in training and scored in batches of
    clips across the batched videos. No shuffle: a video leaves the stage in the bundle that
    brought it, so shards are written as videos are cut. `filter` mode scores the clips no
    earlier filter rejected and rejects those below the threshold with reason "quality" (a
    clip already rejected keeps its reason, and no score); `score_only` scores every clip and
    keeps all; `off` is the identity."""

    def __init__(self, quality_cfg: QualityConfig, workers: int):
        """`workers`: SDK processes per machine under a local runner (a remote runner's shape
        is read from the pipeline's options in `expand`)."""
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
        # device, threads, bf16 and int8 are not decided here, on the launcher: the handler decides
        # them on each worker from that machine's CPU and GPU

    def expand(self, videos):
        if self.cfg.mode == "off":
            return videos | "QualityOff" >> beam.Map(lambda v: v)
        from apache_beam.ml.inference.base import RunInference

        q = self.cfg
        handler = QualityModelHandler(q.model, self.meta, q.batch_size, device=q.device, bf16=q.bf16, int8=q.int8,
                                      channels_last=q.channels_last, torch_threads=q.torch_threads,
                                      processes=processes_per_machine(videos.pipeline, self.workers),
                                      kept_only=q.mode == "filter")
        return (videos
                | "QualityInference" >> RunInference(handler)
                | "QualityApply" >> beam.Map(_apply_scores, self.cfg.mode, self.threshold))


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
    threads = torch.get_num_threads()  # the in-process runner's model load sets them for the stage
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            (p | beam.Create(videos) | stage
             | beam.FlatMap(lambda v: [json.dumps([c.key, c.quality_score]) for c in v.clips])
             | beam.io.WriteToText(f"{tmp}/scores", file_name_suffix=".jsonl"))
        scores = dict(json.loads(line) for f in sorted(Path(tmp).glob("scores*")) for line in f.read_text().splitlines())
    torch.set_num_threads(threads)
    for r in rows:
        r["quality_score"] = float(scores.get(r["key"], float("nan")))
    return rows
