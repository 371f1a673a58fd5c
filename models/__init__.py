"""Genie world-model components: video tokenizer, latent action model, dynamics model.

See each module's docstring; models/config.py lists the named configurations.
"""

from .config import (
    NAMED_CONFIGS,
    DynamicsConfig,
    GenieConfig,
    LAMConfig,
    ModelConfigError,
    STConfig,
    TokenizerConfig,
    config_to_dict,
    get_config,
    validate,
)
from .dynamics import DynamicsModel
from .episode import Episode
from .genie import Genie, count_params
from .lam import LatentActionModel
from .patches import PatchGrid
from .st_transformer import KVCache, STBlock, STTransformer
from .tokenizer import VideoTokenizer
from .vq import VectorQuantizer

__all__ = [
    "NAMED_CONFIGS",
    "DynamicsConfig",
    "DynamicsModel",
    "Episode",
    "Genie",
    "GenieConfig",
    "KVCache",
    "LAMConfig",
    "LatentActionModel",
    "ModelConfigError",
    "PatchGrid",
    "STBlock",
    "STConfig",
    "STTransformer",
    "TokenizerConfig",
    "VectorQuantizer",
    "VideoTokenizer",
    "config_to_dict",
    "count_params",
    "get_config",
    "validate",
]
