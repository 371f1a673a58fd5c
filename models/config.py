"""Model configuration: sizes of the three Genie components and named presets.

Everything a model needs to be built is in a `GenieConfig`; the models take the whole
config because the components depend on each other's sizes (the dynamics vocabulary is
the tokenizer codebook, its action table is the LAM's action count, every model needs the
image size to lay out its patch grid).

Presets (`NAMED_CONFIGS`):

- `tiny`:   CPU tests and the demo. Deviates from the paper where the paper would be too
            slow on two cores: tokenizer patch 8 (paper 4), 8 frames per clip.

`tiny`, `small` and `base` quantise the LAM's actions with FSQ (models/fsq.py): on sprite
footage the VQ codebook of the same LAM collapsed to one code while FSQ kept 4-7 codes and
a decoder that answers them (benchmarks/results/lam.json). `paper` keeps the paper's VQ.
- `small`:  one GPU, short experiments (tens of millions of parameters per component).
- `base`:   one GPU, longer runs (~50M tokenizer/LAM, ~200M dynamics).
- `paper`:  the sizes of Genie (Bruce et al., 2024): tokenizer ~200M, LAM ~300M,
            dynamics ~2.7B (the largest model of the paper's scaling study below 11B).
- `paper-11b`: as `paper` with the 10.7B dynamics model of the final Genie.

`stated_params` records the intended size of each component; a test builds every preset on
the meta device and checks the real count is within 15% of it, so a preset cannot drift
silently from the size it claims.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

PAD_MODES = ("pad", "crop")
ACTION_MODES = ("add", "concat", "prepend")
QUANTIZERS = ("vq", "fsq")


class ModelConfigError(ValueError):
    """A config value that cannot build a model; `key` is its dotted name."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


@dataclass
class STConfig:
    """One ST-transformer stack (see models/st_transformer.py)."""

    dim: int
    depth: int
    heads: int
    ff_mult: int = 4
    qk_norm: bool = True
    dropout: float = 0.0


@dataclass
class TokenizerConfig:
    """ST-ViViT VQ-VAE. `decoder_st=None` means the decoder has the encoder's shape."""

    patch: int = 4
    st: STConfig = field(default_factory=lambda: STConfig(dim=512, depth=12, heads=8))
    decoder_st: STConfig | None = None
    codebook_size: int = 1024
    code_dim: int = 32
    beta: float = 0.25
    dead_code_threshold: int = 256


@dataclass
class LAMConfig:
    """Latent action model. `decoder_st=None` means the decoder has the encoder's shape."""

    patch: int = 16
    st: STConfig = field(default_factory=lambda: STConfig(dim=1024, depth=9, heads=16))
    decoder_st: STConfig | None = None
    num_actions: int = 8
    # "vq": a learned codebook of num_actions codes (models/vq.py; code_dim, beta and
    # dead_code_threshold apply). "fsq": a fixed grid of fsq_levels (models/fsq.py), whose
    # product must be num_actions: nothing to learn, so nothing to collapse.
    quantizer: str = "vq"
    fsq_levels: list[int] = field(default_factory=lambda: [2, 2, 2])
    code_dim: int = 32
    beta: float = 0.25
    dead_code_threshold: int = 64
    # What keeps the action about the change x_t -> x_{t+1} (models/lam.py). The paper's
    # layout is encode_pairs=False, decoder_past=True, predict_delta=False.
    encode_pairs: bool = True  # the encoder sees only (x_t, x_{t+1}), not x_1..x_{t+1}
    decoder_past: bool = False  # the decoder sees x_1..x_t instead of x_t alone
    predict_delta: bool = True  # the decoder predicts x_{t+1} - x_t


# a keep bias this large already holds every token; beyond it float32 log-probabilities overflow
KEEP_BIAS_MAX = 1e6


@dataclass
class DynamicsConfig:
    """MaskGIT dynamics model over tokenizer tokens."""

    st: STConfig = field(default_factory=lambda: STConfig(dim=2560, depth=26, heads=20))
    action_mode: str = "add"
    maskgit_steps: int = 25
    # The paper samples at 2. The sampler sweep on the CPU CoinRun benchmark's model
    # (benchmarks/results/world_model_ablation.json, 64 held-out windows) gave PSNR@1 10.5 dB at
    # T = 2, 12.8 at T = 1, 13.8 at T = 0.5 and 14.1 greedy at 4 MaskGIT steps, with ΔtPSNR@4 vs
    # another clip's actions 0.30 / 0.29 / 0.43 / 0.30. Greedy is deterministic (play would show
    # one future only), so the default is 0.5; eval reports greedy beside it.
    temperature: float = 0.5
    # Frames shown keep the prompt's own detail on every patch whose generated token is the
    # prompt's token there (a background that did not change): frame = decoded + (prompt -
    # decoded prompt) on those patches. The tokenizer's reconstruction loses detail that copying
    # the prompt keeps; on the CPU CoinRun benchmark's 128 windows this raised PSNR at every
    # step t = 1..15 (at t = 1 +0.75 dB at T = 0.5, +1.2 greedy) and put the tokenizer's bound
    # above copying at every t (benchmarks/results/world_model_ablation.json, `prompt_detail`);
    # the detail added on every patch instead scored below the decoder alone from t = 7 at
    # T = 0.5. Tokens, and so the dynamics, are untouched: only the pixels shown.
    prompt_detail: bool = True
    # A prior for a patch to keep its token from the frame before: the sampler adds this many
    # nats to that token's log-probability (then renormalises), so a patch changes only where
    # the model prefers another token by more than that. 0 samples from the model as trained.
    # On the CPU CoinRun benchmark's model (benchmarks/results/world_model_ablation.json,
    # `keep_bias`) 3 raised PSNR at t = 1 by 1.5 dB but cut ΔtPSNR@4 from 2.05 to 0.76 and
    # lowered PSNR from t = 3, and no bias beat copying the prompt at t = 1, so it stays 0.
    keep_bias: float = 0.0
    mask_min: float = 0.5
    mask_max: float = 1.0


@dataclass
class GenieConfig:
    image_height: int = 90
    image_width: int = 160
    frames: int = 16
    pad_mode: str = "pad"
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    lam: LAMConfig = field(default_factory=LAMConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    stated_params: dict[str, float] = field(default_factory=dict)


def resolved_decoder_st(cfg: TokenizerConfig | LAMConfig) -> STConfig:
    return cfg.decoder_st if cfg.decoder_st is not None else cfg.st


# --------------------------------------------------------------------------- presets


def _tiny() -> GenieConfig:
    return GenieConfig(
        frames=8,
        tokenizer=TokenizerConfig(
            patch=8,
            st=STConfig(dim=32, depth=2, heads=2),
            codebook_size=64,
            code_dim=8,
            dead_code_threshold=16,
        ),
        lam=LAMConfig(
            patch=16,
            st=STConfig(dim=32, depth=2, heads=2),
            num_actions=8,
            quantizer="fsq",
            code_dim=8,
            dead_code_threshold=16,
        ),
        dynamics=DynamicsConfig(st=STConfig(dim=64, depth=2, heads=4), maskgit_steps=4),
        stated_params={"tokenizer": 80e3, "lam": 145e3, "dynamics": 145e3},
    )


def _small() -> GenieConfig:
    return GenieConfig(
        tokenizer=TokenizerConfig(
            patch=4,
            st=STConfig(dim=256, depth=6, heads=4),
            codebook_size=1024,
            code_dim=32,
        ),
        lam=LAMConfig(patch=16, st=STConfig(dim=256, depth=6, heads=4), quantizer="fsq"),
        dynamics=DynamicsConfig(st=STConfig(dim=384, depth=16, heads=6)),
        stated_params={"tokenizer": 12e6, "lam": 13e6, "dynamics": 40e6},
    )


def _base() -> GenieConfig:
    return GenieConfig(
        tokenizer=TokenizerConfig(patch=4, st=STConfig(dim=512, depth=6, heads=8)),
        lam=LAMConfig(patch=16, st=STConfig(dim=512, depth=6, heads=8), quantizer="fsq"),
        dynamics=DynamicsConfig(st=STConfig(dim=1024, depth=12, heads=16)),
        stated_params={"tokenizer": 50e6, "lam": 52e6, "dynamics": 200e6},
    )


def _paper() -> GenieConfig:
    return GenieConfig(
        tokenizer=TokenizerConfig(
            patch=4,
            st=STConfig(dim=512, depth=12, heads=8),
            decoder_st=STConfig(dim=1024, depth=9, heads=16),
        ),
        lam=LAMConfig(patch=16, st=STConfig(dim=1024, depth=9, heads=16)),
        dynamics=DynamicsConfig(st=STConfig(dim=2560, depth=26, heads=20)),
        stated_params={"tokenizer": 200e6, "lam": 300e6, "dynamics": 2.7e9},
    )


def _paper_11b() -> GenieConfig:
    cfg = _paper()
    cfg.dynamics.st = STConfig(dim=4096, depth=40, heads=32)
    cfg.stated_params = {"tokenizer": 200e6, "lam": 300e6, "dynamics": 10.7e9}
    return cfg


NAMED_CONFIGS: dict[str, GenieConfig] = {
    "tiny": _tiny(),
    "small": _small(),
    "base": _base(),
    "paper": _paper(),
    "paper-11b": _paper_11b(),
}


# --------------------------------------------------------------------------- building


def get_config(
    name_or_dict_overrides: str | dict[str, Any] | GenieConfig = "tiny",
    overrides: dict[str, Any] | None = None,
) -> GenieConfig:
    """Return a validated fresh copy of a preset, with overrides applied.

    - `get_config("small")`
    - `get_config("small", {"dynamics.action_mode": "concat", "tokenizer": {"patch": 8}})`
    - `get_config({"name": "small", "frames": 8})`: a dict on its own; `name` picks the
      preset to start from (default `tiny`). `config_to_dict(cfg)` output round-trips this way.

    Override keys are dotted paths or nested dicts; `decoder_st` may be set from `None`
    with a dict of STConfig fields. Unknown keys raise `ModelConfigError`.
    """
    if isinstance(name_or_dict_overrides, GenieConfig):
        cfg = copy.deepcopy(name_or_dict_overrides)
    else:
        if isinstance(name_or_dict_overrides, dict):
            overrides = {**name_or_dict_overrides, **(overrides or {})}
            name = overrides.pop("name", "tiny")
        else:
            name = name_or_dict_overrides
        if name not in NAMED_CONFIGS:
            raise ModelConfigError("name", f"unknown config {name!r}; known: {sorted(NAMED_CONFIGS)}")
        cfg = copy.deepcopy(NAMED_CONFIGS[name])
    for key, value in _flatten(overrides or {}).items():
        _set_dotted(cfg, key, value)
    validate(cfg)
    return cfg


def config_to_dict(cfg: GenieConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts become dotted keys, except values for dict-typed fields (stated_params)."""
    flat = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted != "stated_params":
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _set_dotted(cfg: Any, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        key = ".".join(parts[: depth + 1])
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ModelConfigError(key, "no such config field")
        if depth == len(parts) - 1:
            setattr(node, part, value)
            return
        child = getattr(node, part)
        if child is None and part == "decoder_st":
            # An unset decoder starts as a copy of the encoder it would otherwise mirror.
            child = copy.deepcopy(node.st)
            setattr(node, part, child)
        node = child


# --------------------------------------------------------------------------- validation


def validate(cfg: GenieConfig) -> GenieConfig:
    """Raise `ModelConfigError(dotted_key, message)` for the first value that cannot work."""
    _check_int(cfg.image_height, "image_height", minimum=1)
    _check_int(cfg.image_width, "image_width", minimum=1)
    # The LAM needs at least one transition and the dynamics one frame to predict.
    _check_int(cfg.frames, "frames", minimum=2)
    if cfg.pad_mode not in PAD_MODES:
        raise ModelConfigError("pad_mode", f"must be one of {PAD_MODES}, got {cfg.pad_mode!r}")

    for prefix, comp in (("tokenizer", cfg.tokenizer), ("lam", cfg.lam)):
        _check_patch(cfg, comp.patch, f"{prefix}.patch")
        _check_st(comp.st, f"{prefix}.st")
        if comp.decoder_st is not None:
            _check_st(comp.decoder_st, f"{prefix}.decoder_st")
        _check_int(comp.code_dim, f"{prefix}.code_dim", minimum=1)
        _check_int(comp.dead_code_threshold, f"{prefix}.dead_code_threshold", minimum=1)
        if not 0.0 <= comp.beta:
            raise ModelConfigError(f"{prefix}.beta", f"must be >= 0, got {comp.beta}")
    _check_int(cfg.tokenizer.codebook_size, "tokenizer.codebook_size", minimum=2)
    _check_int(cfg.lam.num_actions, "lam.num_actions", minimum=1)
    for key in ("encode_pairs", "decoder_past", "predict_delta"):
        if not isinstance(getattr(cfg.lam, key), bool):
            raise ModelConfigError(f"lam.{key}", f"must be true or false, got {getattr(cfg.lam, key)!r}")
    _check_quantizer(cfg.lam)

    dyn = cfg.dynamics
    _check_st(dyn.st, "dynamics.st")
    if dyn.action_mode not in ACTION_MODES:
        raise ModelConfigError("dynamics.action_mode", f"must be one of {ACTION_MODES}, got {dyn.action_mode!r}")
    _check_int(dyn.maskgit_steps, "dynamics.maskgit_steps", minimum=1)
    if not isinstance(dyn.prompt_detail, bool):
        raise ModelConfigError("dynamics.prompt_detail", f"must be true or false, got {dyn.prompt_detail!r}")
    if dyn.temperature < 0:
        raise ModelConfigError("dynamics.temperature", f"must be >= 0, got {dyn.temperature}")
    if isinstance(dyn.keep_bias, bool) or not isinstance(dyn.keep_bias, (int, float)) or \
            not 0 <= dyn.keep_bias < KEEP_BIAS_MAX:
        raise ModelConfigError("dynamics.keep_bias", f"must be a number in [0, {KEEP_BIAS_MAX:g}), got {dyn.keep_bias!r}")
    if not 0.0 < dyn.mask_min <= 1.0:
        raise ModelConfigError("dynamics.mask_min", f"must be in (0, 1], got {dyn.mask_min}")
    if not dyn.mask_min <= dyn.mask_max <= 1.0:
        raise ModelConfigError("dynamics.mask_max", f"must be in [mask_min, 1], got {dyn.mask_max}")

    for key in cfg.stated_params:
        if key not in ("tokenizer", "lam", "dynamics"):
            raise ModelConfigError(f"stated_params.{key}", "not a component (tokenizer, lam, dynamics)")
    return cfg


def _check_int(value: Any, key: str, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ModelConfigError(key, f"must be an integer >= {minimum}, got {value!r}")


def _check_quantizer(lam: LAMConfig) -> None:
    if lam.quantizer not in QUANTIZERS:
        raise ModelConfigError("lam.quantizer", f"must be one of {QUANTIZERS}, got {lam.quantizer!r}")
    if lam.quantizer != "fsq":
        return
    levels = lam.fsq_levels
    if (not isinstance(levels, (list, tuple)) or not levels
            or any(not isinstance(n, int) or isinstance(n, bool) or n < 2 for n in levels)):
        raise ModelConfigError("lam.fsq_levels", f"must be a list of integers >= 2, got {levels!r}")
    product = 1
    for n in levels:
        product *= n
    if product != lam.num_actions:
        raise ModelConfigError(
            "lam.fsq_levels", f"levels {list(levels)} give {product} codes, but lam.num_actions is {lam.num_actions}"
        )


def _check_st(st: STConfig, key: str) -> None:
    if not isinstance(st, STConfig):
        raise ModelConfigError(key, f"must be an STConfig, got {type(st).__name__}")
    _check_int(st.dim, f"{key}.dim", minimum=2)
    _check_int(st.depth, f"{key}.depth", minimum=1)
    _check_int(st.heads, f"{key}.heads", minimum=1)
    _check_int(st.ff_mult, f"{key}.ff_mult", minimum=1)
    if st.dim % st.heads:
        raise ModelConfigError(f"{key}.heads", f"dim {st.dim} is not divisible by heads {st.heads}")
    # Sinusoidal position embeddings pair up channels as (sin, cos).
    if st.dim % 2:
        raise ModelConfigError(f"{key}.dim", f"must be even, got {st.dim}")
    if not 0.0 <= st.dropout < 1.0:
        raise ModelConfigError(f"{key}.dropout", f"must be in [0, 1), got {st.dropout}")


def _check_patch(cfg: GenieConfig, patch: Any, key: str) -> None:
    _check_int(patch, key, minimum=1)
    smaller = min(cfg.image_height, cfg.image_width)
    if patch > smaller:
        raise ModelConfigError(
            key, f"patch {patch} is larger than the image ({cfg.image_height}x{cfg.image_width})"
        )
