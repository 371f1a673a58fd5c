"""Quality classifier: frame sampling, the model, the Beam scoring stage, refilter, reference labels.

The loop:

    genie-pipeline label OUT          people label clips good/bad on a web page (filtering/label)
    genie-pipeline train-quality OUT  ResNet18 on K frames per clip -> model.pt + model.json
    ingest (filters.quality.mode)     ScoreQuality: quality_score per clip, reject below threshold
    genie-pipeline refilter OUT       re-apply another threshold without decoding sources again

Training and scoring share `sample_frames` (the only frame sampling code) and `QualityNet`
(normalisation lives inside the model, so a clip's uint8 frames are the whole input spec).
"""
from __future__ import annotations

import copy
import io
import json
import logging
import math
import os
import tarfile
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
import torch
from torch import nn

from genie_pipeline.filtering.quality_config import QualityConfig
from genie_pipeline.filtering.quality_data import LABELS, QualityError
from genie_pipeline.filtering.quality_data import config_error as _config_error
from genie_pipeline.filtering.quality_frames import FRAME_H, FRAME_W, sample_frames, sample_indices  # noqa: F401 (re-exported: one sampler)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_FORMAT = "genie-quality/2"  # 2: the clip head reads image statistics

# ---------------------------------------------------------------------------------- model
def build_backbone(arch: str) -> nn.Module:
    """ResNet18 with one output logit, random init (no download): weights come from genie_pipeline.training
    or from a local file (`load_backbone_weights`)."""
    if arch == "resnet18":
        from torchvision.models import resnet18

        return resnet18(weights=None, num_classes=1)
    if arch == "timm-resnet18":
        import timm

        return timm.create_model("resnet18", pretrained=False, num_classes=1)
    raise QualityError(f"unknown arch {arch!r} (resnet18 | timm-resnet18)")


FRAME_POOLINGS = ("mean_prob", "mean_logit", "min_prob")
N_MOTION = 3  # log mean / min / max difference between consecutive sampled frames
N_IMAGE_STATS = 11  # see QualityNet.image_stats
N_CLIP_STATS = 3 + 2 * N_MOTION + 1 + N_IMAGE_STATS  # frame logits, motion and its square, spread, image stats
CLIP_HEAD_WIDTH = 32
POOLINGS = FRAME_POOLINGS + ("learned",)


def pool_logits(logits: torch.Tensor, how: str) -> torch.Tensor:
    """(B, K) frame logits -> (B,) clip probabilities."""
    if how == "mean_prob":
        return torch.sigmoid(logits).mean(1)
    if how == "mean_logit":
        return torch.sigmoid(logits.mean(1))
    if how == "min_prob":
        return torch.sigmoid(logits.min(1).values)
    raise QualityError(f"unknown pooling {how!r}")


class QualityNet(nn.Module):
    """Clip quality: uint8 (B, K, H, W, 3) frames -> (B,) probability that the clip is good.

    A ResNet18 trunk embeds each frame (512-d). Two heads share it:
    - the frame head (the ResNet's own fc) gives one logit per frame; pooled over the K
      frames (`mean_prob`: the mean frame probability, `mean_logit`, `min_prob`);
    - the clip head (`learned`) is a logistic regression over 10 clip statistics: the mean,
      min and max frame logit, how much consecutive sampled frames differ (log of the mean,
      min and max mean absolute difference, and their squares: too little change and too
      much are both bad) and how much the frame embeddings spread (log mean std). So it also sees what no single frame shows: frames of one
      clip that do not belong together (rapid cuts between games, a slideshow) or that never
      change (a paused menu). It also reads 11 image statistics (`image_stats`): brightness,
      sharpness, flat borders, how many pixels change, how far the colour histograms of the
      sampled frames are apart, colour entropy. They say what a degradation looks like in
      any game, where a trunk trained on a few hundred clips partly learns which games were
      labelled bad: with whole games held out (benchmarks/quality.py), the first fold's
      ROC-AUC went from 0.78 (logistic head without them) to 0.96. The head is a two-layer MLP (32 wide) on the 21
      statistics; its inputs are detached, so it cannot pull the frame trunk around.
    `pooling` picks the clip score. Normalisation is part of the model."""

    def __init__(self, arch: str = "resnet18", frames_per_clip: int = 4, pooling: str = "mean_prob",
                 height: int = FRAME_H, width: int = FRAME_W, channels_last: bool = True, bf16: bool = False):
        super().__init__()
        if pooling not in POOLINGS:
            raise QualityError(f"unknown pooling {pooling!r} ({' | '.join(POOLINGS)})")
        self.arch, self.frames_per_clip, self.pooling = arch, frames_per_clip, pooling
        self.height, self.width = height, width
        self.channels_last, self.bf16 = channels_last, bf16
        self.backbone = build_backbone(arch)
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        # a small MLP, not a logistic regression: the statistics are not monotone in quality
        # (too little change is a paused menu, too much a montage); the input BatchNorm puts
        # log-brightness and a 0-1 histogram distance on one scale
        self.clip_head = nn.Sequential(nn.BatchNorm1d(N_CLIP_STATS, affine=False),
                                       nn.Linear(N_CLIP_STATS, CLIP_HEAD_WIDTH), nn.ReLU(),
                                       nn.Linear(CLIP_HEAD_WIDTH, CLIP_HEAD_WIDTH), nn.ReLU(),
                                       nn.Linear(CLIP_HEAD_WIDTH, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def params(self) -> dict[str, Any]:
        return {"arch": self.arch, "frames_per_clip": self.frames_per_clip, "pooling": self.pooling,
                "height": self.height, "width": self.width}

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W) (channels_last memory: a free view)."""
        x = frames.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """normalised (N, 3, H, W) -> (N, 512) frame embeddings (the trunk runs in bf16 if asked)."""
        b = self.backbone
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16 and x.device.type == "cpu"):
            if hasattr(b, "forward_features"):  # timm
                f = b.forward_head(b.forward_features(x), pre_logits=True)
            else:  # torchvision
                x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
                x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
                f = torch.flatten(b.avgpool(x), 1)
        return f.float()

    @staticmethod
    def motion(x: torch.Tensor, k: int) -> torch.Tensor:
        """normalised (B*K, 3, H, W) -> (B, 3): log of the mean, min and max over consecutive
        sampled frames of their mean absolute difference."""
        x = x.reshape(-1, k, *x.shape[1:]).float()
        if k < 2:
            return torch.zeros(x.shape[0], N_MOTION, device=x.device)
        d = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(2, 3, 4))
        return torch.log(torch.stack([d.mean(1), d.min(1).values, d.max(1).values], 1) + 1e-3)

    @staticmethod
    def image_stats(clips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, K, H, W, 3) -> (B, 11), each cheap and game-agnostic:
        log mean and min frame brightness (black, faded); log sharpness, the 99th percentile of
        the gradient magnitude (blur); flat borders, how many of the 4 edge bands are one
        colour, averaged over frames (letterbox, small window); log mean/min/max share of
        pixels changing by more than 8 levels between consecutive sampled frames (static,
        paused: counts pixels, so encoder noise does not read as motion); mean/max/min
        distance between the colour histograms of two sampled frames (cuts between games,
        slideshows); colour entropy, mean over frames (a camera picture inside the frame,
        e.g. a webcam overlay, brings colours that game graphics lack)."""
        b, k, h, w, _ = clips.shape
        rgb = clips.float()
        gray = rgb.mean(-1)  # (B, K, H, W)
        lum = gray.mean((2, 3))
        gy = (gray[:, :, 1:] - gray[:, :, :-1]).abs().flatten(2)
        gx = (gray[:, :, :, 1:] - gray[:, :, :, :-1]).abs().flatten(2)
        sharp = torch.quantile(torch.cat([gy, gx], 2), 0.99, dim=2).mean(1)
        bh, bw = max(1, h // 10), max(1, w // 10)
        bands = [gray[:, :, :bh], gray[:, :, -bh:], gray[:, :, :, :bw], gray[:, :, :, -bw:]]
        flat = sum((x.flatten(2).std(2) < 3).float() for x in bands).mean(1)
        code = (clips.long() // 64).flatten(2, 3)  # (B, K, H*W, 3): 4 levels per channel
        code = code[..., 0] * 16 + code[..., 1] * 4 + code[..., 2]
        hist = torch.zeros(b, k, 64, device=clips.device).scatter_add_(2, code, torch.ones_like(code, dtype=torch.float))
        hist = hist / (h * w)
        if k > 1:
            changed = ((gray[:, 1:] - gray[:, :-1]).abs() > 8).float().mean((2, 3))
            i, j = torch.triu_indices(k, k, 1)
            dist = 0.5 * (hist[:, i] - hist[:, j]).abs().sum(-1)  # (B, pairs)
        else:
            changed = dist = torch.zeros(b, 1, device=clips.device)
        entropy = -(hist * torch.log(hist.clamp_min(1e-12))).sum(-1).mean(1)
        log = lambda t: torch.log(t + 1e-2)  # noqa: E731
        # a paused menu changes ~0.1% of pixels, quiet gameplay ~1%: a small floor keeps them apart
        log_changed = lambda t: torch.log(t + 1e-4)  # noqa: E731
        return torch.stack([log(lum.mean(1)), log(lum.min(1).values), log(sharp), flat,
                            log_changed(changed.mean(1)), log_changed(changed.min(1).values),
                            log_changed(changed.max(1).values),
                            dist.mean(1), dist.max(1).values, dist.min(1).values, entropy], 1)

    def heads(self, feats: torch.Tensor, k: int, motion: torch.Tensor,
              image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B*K, F) embeddings, (B, 3) motion, (B, 11) image stats -> frame logits (B, K) and
        clip logits (B,)."""
        frame = self.backbone.fc(feats).squeeze(1).view(-1, k)
        fl = frame.detach()
        spread = feats.detach().view(-1, k, feats.shape[1]).std(1, unbiased=False).mean(1, keepdim=True) \
            if k > 1 else torch.zeros(fl.shape[0], 1, device=fl.device)
        mo = motion.detach()
        # squares: both too little change (paused, black) and too much (cuts, slideshow) are bad
        stats = torch.cat([fl.mean(1, keepdim=True), fl.min(1, keepdim=True).values, fl.max(1, keepdim=True).values,
                           mo, mo * mo / 4, torch.log(spread + 1e-3), image], 1)
        return frame, self.clip_head(stats).squeeze(1)

    def outputs(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k = clips.shape[:2]
        x = self.normalize(clips.reshape(b * k, *clips.shape[2:]))
        return self.heads(self.features(x), k, self.motion(x, k), self.image_stats(clips))

    def frame_logits(self, clips: torch.Tensor) -> torch.Tensor:
        return self.outputs(clips)[0]

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        frame, clip = self.outputs(clips)
        return torch.sigmoid(clip) if self.pooling == "learned" else pool_logits(frame, self.pooling)


def load_backbone_weights(model: QualityNet, path: str) -> dict[str, int]:
    """Initialise the backbone from a local weights file (an ImageNet ResNet18 state dict, say).

    Loaded with torch.load(weights_only=True): a file that needs arbitrary unpickling is
    refused. Tensors whose name and shape match are copied; the classifier head (fc) of
    another task is skipped."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise QualityError(f"weights file {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 — torch raises many types for a bad file
        raise QualityError(f"cannot load weights file {path} (weights_only=True): {type(e).__name__}: {e}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict):
        raise QualityError(f"weights file {path} holds no state dict")
    own = model.backbone.state_dict()
    take = {}
    for name, t in sd.items():
        for prefix in ("module.", "backbone.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        if name in own and isinstance(t, torch.Tensor) and own[name].shape == t.shape:
            take[name] = t
    if not take:
        raise QualityError(f"weights file {path} has no tensor matching {model.arch}")
    model.backbone.load_state_dict(take, strict=False)
    return {"loaded": len(take), "skipped": len(sd) - len(take), "missing": len(own) - len(take)}


def metadata_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def read_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    mp = metadata_path(model_path)
    if not Path(model_path).exists():
        raise QualityError(f"model file {model_path} does not exist (train one with `genie-pipeline train-quality`)")
    try:
        meta = json.loads(mp.read_text())
    except FileNotFoundError:
        raise QualityError(f"model metadata {mp} is missing (it is written beside the model by train-quality)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QualityError(f"model metadata {mp} is not valid JSON: {e}") from None
    if meta.get("format") != MODEL_FORMAT:
        raise QualityError(f"{mp} is not a quality model description (format {meta.get('format')!r})")
    return meta


def use_bf16(setting: str, meta: dict) -> bool:
    return setting == "on" or (setting == "auto" and bool(meta.get("bf16", {}).get("keeps_accuracy")))


def load_quality_model(model_path: str, bf16: str = "auto", channels_last: bool = True) -> tuple[QualityNet, dict]:
    meta = read_metadata(model_path)
    model = QualityNet(**meta["model_params"], channels_last=channels_last, bf16=use_bf16(bf16, meta))
    try:
        sd = torch.load(model_path, map_location="cpu", weights_only=True)
        model.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001
        raise QualityError(f"cannot load model {model_path}: {type(e).__name__}: {e}") from None
    return model.eval().requires_grad_(False), meta


def save_quality_model(model: QualityNet, path: str | os.PathLike, meta: dict[str, Any]) -> Path:
    """Write the state dict (torch.save; loadable with weights_only=True) and the metadata
    JSON beside it, each atomically. `meta` needs at least `threshold`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": MODEL_FORMAT, "model_file": path.name, "model_params": model.params(), **meta}
    if not 0 <= float(meta["threshold"]) <= 1:
        raise QualityError(f"threshold {meta['threshold']} is not in [0, 1]")
    tmp = path.with_name(path.name + ".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    mp = metadata_path(path)
    tmpj = mp.with_name(mp.name + ".tmp")
    tmpj.write_text(json.dumps(meta, indent=1, default=_json_default))
    os.replace(tmpj, mp)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


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


def _read_store_clips(path: str) -> dict[str, bytes]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        raw = f.read()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r") as tar:
        return {m.name[:-4]: tar.extractfile(m).read() for m in tar.getmembers()
                if m.isfile() and m.name.endswith(".mp4")}


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
            data = _read_store_clips(video.store) if video.store else {}
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
            raise _config_error("filters.quality.model", f"required when mode is {quality_cfg.mode!r}: "
                                "train a model with `genie-pipeline train-quality` and give its path")
        try:
            self.meta = read_metadata(quality_cfg.model)
        except QualityError as e:
            raise _config_error("filters.quality.model", str(e)) from None
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


# ------------------------------------------------------------------------------ refilter
def _quality_cfg(cfg) -> QualityConfig:
    if isinstance(cfg, QualityConfig):
        return cfg
    return cfg.filters.quality


def apply_threshold(rows: list[dict], threshold: float) -> dict[str, int]:
    """Update kept/reason from quality_score in manifest rows (in place). Rows rejected for
    another reason keep it; rows without a score (never scored) are left as they are."""
    changed = {"kept": 0, "rejected": 0, "unscored": 0}
    for r in rows:
        if r.get("reason") not in ("", None, "quality"):
            continue
        s = r.get("quality_score")
        if s is None or (isinstance(s, float) and math.isnan(s)):
            if r.get("reason") != "quality":
                changed["unscored"] += 1
            continue
        keep = s >= threshold
        if keep and not r["kept"]:
            changed["kept"] += 1
        elif not keep and r["kept"]:
            changed["rejected"] += 1
        r["kept"], r["reason"] = bool(keep), "" if keep else "quality"
    return changed


def refilter(out_dir: str, threshold: float, cfg=None, rows: list[dict] | None = None) -> dict[str, Any]:
    """Re-apply a quality threshold to an ingest output: kept/reason from the stored
    quality_score (or from `rows`, the manifest with new scores), then shards and manifest
    rewritten from the clip store by `shards.commit.rebuild_shards` (no source video is
    decoded again). `cfg`: the PipelineConfig (shards and clips sections); None: defaults."""
    import pyarrow.parquet as pq

    if not 0 <= threshold <= 1:
        raise _config_error("threshold", f"must be between 0 and 1, got {threshold}")
    mp = Path(out_dir) / "manifest.parquet"
    if rows is None:
        if not mp.exists():
            raise QualityError(f"{out_dir} has no manifest.parquet: is it an ingest output directory?")
        rows = pq.read_table(mp).to_pylist()
    if not any(r.get("quality_score") is not None and not math.isnan(r["quality_score"]) for r in rows):
        raise QualityError(f"no clip in {mp} has a quality_score: run the ingest with "
                           "filters.quality.mode score_only or filter first")
    if not (Path(out_dir) / "clips").is_dir():
        raise QualityError(f"{out_dir} has no clip store (clips/) to rewrite shards from: refilter needs "
                           "shards.keep_clip_store: true at ingest")
    before = sum(bool(r["kept"]) for r in rows)
    changed = apply_threshold(rows, threshold)
    from genie_pipeline.shards.commit import rebuild_shards
    from genie_pipeline.shards.fs import output_lock

    with output_lock(str(out_dir), "refilter"):
        pc = _pipeline_cfg(cfg)
        stats = rebuild_shards(str(out_dir), rows, int(pc.shards.target_mb * 2**20), pc.shards.max_clips, pc.clips.spec)
    return {"threshold": threshold, "clips": len(rows), "kept_before": before,
            "kept_after": sum(bool(r["kept"]) for r in rows), **changed, "stats": stats}


def _pipeline_cfg(cfg):
    """The parts of a PipelineConfig that rebuilding shards needs, defaults when none given."""
    if cfg is not None and hasattr(cfg, "shards"):
        return cfg
    from types import SimpleNamespace

    from genie_pipeline.shards.config import ClipsConfig, OutputConfig, ShardsConfig

    from genie_pipeline.filtering.config import FiltersConfig

    filters = FiltersConfig(quality=cfg) if isinstance(cfg, QualityConfig) else FiltersConfig()
    return SimpleNamespace(shards=ShardsConfig(), clips=ClipsConfig(), filters=filters, output=OutputConfig())


def score_manifest(out_dir: str, quality_cfg: QualityConfig, workers: int = 1) -> list[dict]:
    """Manifest rows with quality_score recomputed for every clip by the ScoreQuality stage
    (score_only) over the clip store; nothing is written."""
    import tempfile

    import pyarrow.parquet as pq
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from genie_pipeline.shards.records import ClipRow, VideoResult

    mp = Path(out_dir) / "manifest.parquet"
    if not mp.exists():
        raise QualityError(f"{out_dir} has no manifest.parquet: is it an ingest output directory?")
    if not (Path(out_dir) / "clips").is_dir():
        raise QualityError(f"{out_dir} has no clip store (clips/): it is kept with shards.keep_clip_store: true")
    rows = pq.read_table(mp).to_pylist()
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_key"], []).append(r)
    videos = []
    for vk, rs in sorted(by_video.items()):
        clips = [ClipRow(**{k: r[k] for k in ClipRow.__dataclass_fields__ if k in r}) for r in rs]
        videos.append(VideoResult(video_key=vk, video_id=rs[0]["video_id"], source=rs[0]["source"],
                                  title=rs[0]["title"], status="done", clips=clips, split=rs[0]["split"],
                                  store=str(Path(out_dir) / "clips" / f"{vk}.tar")))
    qcfg = quality_cfg.model_copy(update={"mode": "score_only"})
    stage = ScoreQuality(qcfg, workers)
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(runner=FnApiRunner()) as p:
            (p | beam.Create(videos) | stage
             | beam.FlatMap(lambda v: [json.dumps([c.key, c.quality_score]) for c in v.clips])
             | beam.io.WriteToText(f"{tmp}/scores", file_name_suffix=".jsonl"))
        scores = dict(json.loads(line) for f in sorted(Path(tmp).glob("scores*")) for line in f.read_text().splitlines())
    for r in rows:
        r["quality_score"] = float(scores.get(r["key"], float("nan")))
    return rows


def add_refilter_args(p) -> None:
    p.add_argument("out", nargs="?", default=None, help="ingest output directory (default: output.dir)")
    p.add_argument("--threshold", type=float, default=None,
                   help="quality threshold (default: filters.quality.threshold, else the model's)")
    p.add_argument("--rescore", action="store_true",
                   help="score every clip again with the model first (filters.quality.model or --model)")
    p.add_argument("--model", default=None, help="model file for --rescore and the default threshold")


def run_refilter(args, cfg) -> int:
    pcfg = _pipeline_cfg(cfg)
    q = pcfg.filters.quality
    if args.model:
        q = q.model_copy(update={"model": args.model})
    out = args.out or pcfg.output.dir
    threshold = args.threshold
    if threshold is None:
        if q.threshold is not None:
            threshold = q.threshold
        elif q.model:
            threshold = float(read_metadata(q.model)["threshold"])
        else:
            raise _config_error("threshold", "give --threshold (or filters.quality.threshold / a model with --model)")
    rows = None
    if args.rescore:
        if not q.model:
            raise _config_error("filters.quality.model", "--rescore needs a model (--model or filters.quality.model)")
        rows = score_manifest(out, q)
    r = refilter(out, threshold, pcfg, rows=rows)
    print(f"refilter {out}: threshold {threshold:.4f}: {r['kept_before']} -> {r['kept_after']} clips kept "
          f"of {r['clips']} ({r['rejected']} newly rejected, {r['kept']} restored)")
    return 0


# ---------------------------------------------------------------------- reference labels
def reference_labels(ingest_out_dir: str, catalog_path: str) -> list[dict[str, Any]]:
    """Labels for every clip of an ingest output from the corpus catalog: each clip gets its
    video's `quality_label` (clip -> video through the manifest's video_id)."""
    import pyarrow.parquet as pq

    mp = Path(ingest_out_dir) / "manifest.parquet"
    if not mp.exists():
        raise QualityError(f"{ingest_out_dir} has no manifest.parquet: run the ingest first")
    by_video: dict[str, str] = {}
    try:
        lines = Path(catalog_path).read_text().splitlines()
    except OSError as e:
        raise QualityError(f"cannot read catalog {catalog_path}: {e.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise QualityError(f"{catalog_path}:{n}: not JSON: {e}") from None
        label = entry.get("quality_label")
        if label is None:
            continue
        if label not in LABELS:
            raise QualityError(f"{catalog_path}:{n}: quality_label {label!r} is not good|bad")
        by_video[str(entry["id"])] = label
    rows = pq.read_table(mp, columns=["key", "video_id", "video_key", "source"]).to_pylist()
    labels = [{"key": r["key"], "video_id": r["video_id"], "label": by_video[str(r["video_id"])],
               "labeller": "reference", "labelled_at": None}
              for r in rows if str(r["video_id"]) in by_video]
    if not labels:
        raise QualityError(f"no clip of {mp} belongs to a video labelled in {catalog_path}")
    return labels


def __getattr__(name):  # the CLI entry points live beside this module; re-exported lazily
    if name in ("add_train_quality_args", "run_train_quality", "train_quality"):
        from genie_pipeline.filtering import quality_train

        return getattr(quality_train, name)
    if name in ("add_label_args", "run_label"):
        from genie_pipeline.filtering import label

        return getattr(label, name)
    raise AttributeError(name)
