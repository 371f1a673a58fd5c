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

# the torch modules load on first use: validating a config (models.config) must not cost the
# 1.5 s of importing torch
_LAZY = {"DynamicsModel": "dynamics", "Episode": "episode", "Genie": "genie", "count_params": "genie",
         "LatentActionModel": "lam", "PatchGrid": "patches", "KVCache": "st_transformer",
         "STBlock": "st_transformer", "STTransformer": "st_transformer", "VideoTokenizer": "tokenizer",
         "VectorQuantizer": "vq"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
