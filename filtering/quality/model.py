"""`QualityNet` and its model file: the state dict (loadable with torch.load(weights_only=True))
and the JSON metadata beside it (input spec, threshold, metrics; `read_metadata`).

The state dict may also carry `INT8_CALIBRATION`: training frames (uint8, N×H×W×3) that an
int8 copy of the trunk is calibrated on where it is loaded (`quantize_trunk`). It is data,
not an int8 model: quantized modules do not load with weights_only, and re-running the
calibration gives the same observer ranges on any machine.

Normalisation lives inside the model, so a clip's uint8 frames (`frames.sample_frames`, the
sampling training and scoring share) are the whole input spec.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from genie_pipeline.filtering.quality.errors import QualityError
from genie_pipeline.filtering.quality.frames import FRAME_H, FRAME_W
from genie_pipeline.shards import fs

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_FORMAT = "genie-quality/2"  # 2: the clip head reads image statistics
INT8_CALIBRATION = "int8_calibration"  # state-dict key of the int8 calibration frames
CALIBRATION_FRAMES = 64  # frames training stores for it


# ---------------------------------------------------------------------------------- model
def build_backbone(arch: str) -> nn.Module:
    """ResNet18 with one output logit, random init (no download): weights come from training
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
    - the clip head (`learned`), a two-layer MLP (32 wide) on 21 clip statistics: the mean,
      min and max frame logit; how much consecutive sampled frames differ (log of the mean,
      min and max mean absolute difference, and their squares: too little change and too
      much are both bad); how much the frame embeddings spread (log mean std); and 11 image
      statistics (`image_stats`: brightness, sharpness, flat borders, how many pixels
      change, how far the colour histograms of the sampled frames are apart, colour
      entropy). So it sees what no single frame shows: frames of one clip that do not belong
      together (rapid cuts between games, a slideshow) or that never change (a paused
      menu). The image statistics say what a degradation looks like in any game, where a
      trunk trained on a few hundred clips partly learns which games were labelled bad.
      Its inputs are detached, so it cannot pull the frame trunk around.
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
        object.__setattr__(self, "int8_trunk", None)

    def params(self) -> dict[str, Any]:
        return {"arch": self.arch, "frames_per_clip": self.frames_per_clip, "pooling": self.pooling,
                "height": self.height, "width": self.width}

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, H, W) (channels_last memory: a free view)."""
        x = frames.permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """normalised (N, 3, H, W) -> (N, 512) frame embeddings (the trunk runs in bf16 if asked,
        or as its int8 copy once `quantize` made one)."""
        if self.int8_trunk is not None:
            return self.int8_trunk(x).float()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return trunk_features(self.backbone, x).float()

    def quantize(self, calibration: np.ndarray | torch.Tensor | None) -> None:
        """Score with an int8 copy of the trunk from now on (inference only: the fp32 weights
        stay, and train and save as before), calibrated on uint8 (N, H, W, 3) frames; None
        goes back to the fp32 trunk."""
        trunk = None
        if calibration is not None:
            trunk = quantize_trunk(self.backbone, self.normalize(torch.as_tensor(np.asarray(calibration))))
        # a plain attribute, not a submodule: the state dict stays the fp32 model's
        object.__setattr__(self, "int8_trunk", trunk)

    @property
    def int8(self) -> bool:
        return self.int8_trunk is not None

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


def trunk_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ResNet up to its pooled embedding (no fc): normalised (N, 3, H, W) -> (N, 512)."""
    b = backbone
    if hasattr(b, "forward_features"):  # timm
        return b.forward_head(b.forward_features(x), pre_logits=True)
    x = b.maxpool(b.relu(b.bn1(b.conv1(x))))  # torchvision
    x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
    return torch.flatten(b.avgpool(x), 1)


class _Trunk(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return trunk_features(self.backbone, x)


def quantize_trunk(backbone: nn.Module, calibration_NCHW: torch.Tensor, batch: int = 16) -> nn.Module:
    """An int8 copy of the trunk (`trunk_features`) for CPU inference: post-training static
    quantization with torch's x86 backend (per-channel int8 weights, BatchNorm folded into the
    convolutions, activation ranges observed on the normalised calibration frames). About 1.7x
    faster than fp32 on one core; how close its scores stay is measured when the model is
    trained (`int8` in the metadata), and `use_int8`'s `auto` acts on that."""
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    if "x86" not in torch.backends.quantized.supported_engines:
        raise QualityError("int8 scoring needs torch's x86 quantized engine, which this torch build lacks")
    torch.backends.quantized.engine = "x86"
    trunk = _Trunk(copy.deepcopy(backbone).float()).eval()
    try:
        # torch.ao's FX quantization warns that it is deprecated in favour of torchao's pt2e flow,
        # which needs torch.compile (a C++ toolchain on every worker) to run int8 kernels on CPU;
        # the pinned torch has it, and tests/test_quality_train.py fails if an upgrade drops it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            # torch's x86 default but for min/max activation ranges instead of its histogram
            # search: calibration runs where the model loads, and the histograms cost twice the
            # forward passes. 7-bit activations (reduce_range) as in that default: CPUs without
            # VNNI would overflow 8-bit products
            qconfig = QConfig(activation=MinMaxObserver.with_args(reduce_range=True),
                              weight=default_per_channel_weight_observer)
            prepared = prepare_fx(trunk, QConfigMapping().set_global(qconfig), example_inputs=(calibration_NCHW[:1],))
            with torch.inference_mode():
                for i in range(0, len(calibration_NCHW), batch):
                    prepared(calibration_NCHW[i:i + batch])
            return convert_fx(prepared).eval()
    except Exception as e:  # noqa: BLE001 — FX tracing and quantization raise many types
        raise QualityError(f"cannot quantize the trunk to int8: {type(e).__name__}: {e}") from None


def calibration_frames(clips: np.ndarray, n: int = CALIBRATION_FRAMES, seed: int = 0) -> np.ndarray:
    """`n` frames drawn evenly over uint8 clips (C, K, H, W, 3) -> (n, H, W, 3): what the
    int8 trunk is calibrated on (training stores them with the model)."""
    flat = clips.reshape(-1, *clips.shape[2:])
    if not len(flat):
        return flat
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(flat[np.sort(rng.choice(len(flat), min(n, len(flat)), replace=False))])


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


def metadata_path(model_path: str | os.PathLike) -> str:
    """MODEL.json beside MODEL.pt, local or in a bucket."""
    return os.path.splitext(str(model_path))[0] + ".json"


def read_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    """The metadata beside a model file (local, gs:// or s3://)."""
    mp = metadata_path(model_path)
    if not fs.exists(str(model_path)):
        raise QualityError(f"model file {model_path} does not exist (train one with `genie-pipeline train-quality`)")
    if not fs.exists(mp):
        raise QualityError(f"model metadata {mp} is missing (it is written beside the model by train-quality)")
    try:
        meta = json.loads(fs.read_bytes(mp))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise QualityError(f"model metadata {mp} is not valid JSON: {e}") from None
    if meta.get("format") != MODEL_FORMAT:
        raise QualityError(f"{mp} is not a quality model description (format {meta.get('format')!r})")
    return meta


def native_bf16() -> bool:
    """Does this CPU compute bf16 natively (oneDNN's check: AVX512-BF16 or AMX)? Elsewhere
    autocast emulates it, many times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def device_bf16(device: str) -> bool:
    """Does `device` ("cpu" or "cuda") compute bf16 natively: the CPU's oneDNN check, or a
    GPU of compute capability 8.0 or later (Ampere: A100, L4, H100)?"""
    if device == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except (AssertionError, RuntimeError):
            return False
    return native_bf16()


def use_bf16(setting: str, meta: dict, device: str = "cpu") -> bool:
    """Inference autocast: `on`, or `auto` where training measured that it keeps accuracy and
    `device` has native bf16. Call it where the model runs (a worker), not where the job is
    launched: the launcher's CPU says nothing about the worker's."""
    return setting == "on" or (setting == "auto" and bool(meta.get("bf16", {}).get("keeps_accuracy"))
                               and device_bf16(device))


def cuda_usable() -> bool:
    """Can torch put a tensor on a GPU here? `is_available` alone can be true where the
    first allocation fails (a driver too old for the CUDA build, a GPU held by another
    process in exclusive mode)."""
    if not torch.cuda.is_available():
        return False
    try:
        torch.empty(1, device="cuda")
        return True
    except (RuntimeError, AssertionError):  # AssertionError: a build without CUDA
        return False


def resolve_device(setting: str) -> str:
    """The torch device `filters.quality.device` means on this machine: `cpu`; `cuda`, or
    QualityError where no GPU is usable (a GPU job that quietly scored on CPU would run for
    days and bill for idle accelerators); `auto`, CUDA where usable, else CPU."""
    if setting == "cpu":
        return "cpu"
    if cuda_usable():
        return "cuda"
    if setting == "cuda":
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise QualityError(
            f"filters.quality.device is cuda but this machine has no usable CUDA device (torch {torch.__version__}, "
            f"{build}, torch.cuda.is_available() = {torch.cuda.is_available()}): run the GPU image "
            "(make dataflow-image-gpu) on workers with an accelerator and an NVIDIA driver of the 580 series or "
            "later (worker_accelerator=...;install-nvidia-driver), or set filters.quality.device: auto")
    return "cpu"


def train_bf16(setting: bool | str) -> bool:
    return native_bf16() if setting == "auto" else bool(setting)


def use_int8(setting: str, meta: dict, has_calibration: bool, device: str = "cpu") -> bool:
    """Score with the int8 trunk? `on`: yes (QualityError where it cannot: a GPU, or a model file
    without calibration frames); `auto`: on CPU where the file has them and training measured
    that int8 keeps the classifier's accuracy (`meta["int8"]`); `off`: no. Decided where the
    model runs, like `use_bf16`."""
    if setting == "on":
        if device != "cpu":
            raise QualityError("filters.quality.int8 is on but the model runs on a GPU: int8 scoring is for CPUs "
                               "(set int8: auto, or device: cpu)")
        if not has_calibration:
            raise QualityError("filters.quality.int8 is on but the model file has no int8 calibration frames "
                               "(train it again with this version, or set int8: auto)")
        return True
    return (setting == "auto" and device == "cpu" and has_calibration
            and bool(meta.get("int8", {}).get("keeps_accuracy")))


def load_quality_model(model_path: str, bf16: str = "auto", channels_last: bool = True, *, int8: str = "off",
                       device: str = "cpu", meta: dict | None = None) -> tuple[QualityNet, dict]:
    """The model file (local, gs:// or s3://; weights_only) as an eval-mode QualityNet on
    `device`, with bf16 (`use_bf16`) and the int8 trunk (`use_int8`) as the settings decide
    there; and its metadata (`meta` when the caller read it already)."""
    meta = meta or read_metadata(model_path)
    model = QualityNet(**meta["model_params"], channels_last=channels_last, bf16=use_bf16(bf16, meta, device))
    try:
        sd = torch.load(io.BytesIO(fs.read_bytes(model_path)), map_location="cpu", weights_only=True)
        calibration = sd.pop(INT8_CALIBRATION, None)
        model.load_state_dict(sd)
    except Exception as e:  # noqa: BLE001
        raise QualityError(f"cannot load model {model_path}: {type(e).__name__}: {e}") from None
    model.eval().requires_grad_(False)
    if use_int8(int8, meta, calibration is not None, device):
        model.quantize(calibration)
    return model.to(device), meta


def save_quality_model(model: QualityNet, path: str | os.PathLike, meta: dict[str, Any],
                       calibration: np.ndarray | None = None) -> Path:
    """Write the state dict (torch.save; loadable with weights_only=True), with the int8
    calibration frames where given, and the metadata JSON beside it, each atomically. `meta`
    needs at least `threshold`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": MODEL_FORMAT, "model_file": path.name, "model_params": model.params(), **meta}
    if not 0 <= float(meta["threshold"]) <= 1:
        raise QualityError(f"threshold {meta['threshold']} is not in [0, 1]")
    state = model.state_dict()
    if calibration is not None and len(calibration):
        state[INT8_CALIBRATION] = torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.uint8))
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    mp = Path(metadata_path(path))
    tmpj = mp.with_name(mp.name + ".tmp")
    tmpj.write_text(json.dumps(meta, indent=1, default=_json_default))
    os.replace(tmpj, mp)
    return path


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")

