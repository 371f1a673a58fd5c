"""The one reader of a trained Genie in any of its forms, and the export bundle.

`load_genie(path)` accepts:

- a run directory: its `genie.pt`, else its latest phase-2 checkpoint
  (`checkpoints/dynamics/latest.pt`);
- `RUN/genie.pt` (kind "genie"), written when phase 2 ends;
- a phase-2 checkpoint (`step-N.pt`, `latest.pt`: weights under "model");
- a bundle (kind "bundle") from `export_bundle`.

A bundle is one file, readable with `torch.load(weights_only=True)` (only dicts, tensors,
strings and numbers): the format marker, `model_config` (as `config_to_dict`), the state
dicts of the tokenizer (encoder and decoder: play encodes the prompt and decodes every
frame), the dynamics model and the whole latent action model (play needs only its action
codebook, but eval infers the actions of real clips with its encoder), and `action_names`:
RUN/actions.json when the run has one (a JSON list of names, one per latent action, or
{"names": [...]}), else "action 0" … "action N-1".

Every problem is a `TrainingError` with key `checkpoint`: a path that is no checkpoint or no
run, a file that needs more than weights-only unpickling, weights that do not fit their
model config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from genie_pipeline.models.config import config_to_dict, get_config
from genie_pipeline.models.genie import Genie

from . import checkpoint as ckpt_lib
from .errors import TrainingError

COMPONENTS = ("tokenizer", "lam", "dynamics")
ACTIONS_FILE = "actions.json"


def resolve(path: str | os.PathLike) -> Path:
    """The checkpoint file behind `path` (a file, or a run directory)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for candidate in (path / "genie.pt", ckpt_lib.latest_path(path, "dynamics")):
        if candidate.is_file():
            return candidate
    raise TrainingError("checkpoint", f"{path} is a directory but not a training run "
                        "(no genie.pt, no checkpoints/dynamics/latest.pt)")


def load_bundle(path: str | os.PathLike) -> dict:
    """Any accepted form (see module docstring) as a bundle dict, nothing built yet."""
    file = resolve(path)
    ck = ckpt_lib.load(file)
    weights = ck["model"] if isinstance(ck.get("model"), dict) else ck
    missing = [name for name in COMPONENTS if not isinstance(weights.get(name), dict)]
    if missing or not isinstance(ck.get("model_config"), dict):
        what = "a tokenizer-only (phase 1) checkpoint?" if missing == ["lam", "dynamics"] else f"missing {missing}"
        raise TrainingError("checkpoint", f"{file} is not a whole Genie ({what})")
    cfg = get_config(dict(ck["model_config"]))
    num_actions = cfg.lam.num_actions
    names = ck.get("action_names") or _run_action_names(file, num_actions)
    return {"format": ckpt_lib.FORMAT, "kind": "bundle", "model_config": config_to_dict(cfg),
            **{name: weights[name] for name in COMPONENTS},
            "action_names": list(names) if names else [f"action {i}" for i in range(num_actions)]}


def load_genie(path: str | os.PathLike, device: str | torch.device = "cpu") -> Genie:
    """A Genie in eval mode from any accepted form, with `action_names` set."""
    return _build(load_bundle(path), path).to(device).eval()


def export_bundle(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the inference bundle of `path` (any accepted form) to `out`, atomically.
    The weights are checked to build first: nothing is written for a broken source."""
    bundle = load_bundle(path)
    _build(bundle, path)
    ckpt_lib.save_atomic(bundle, out)
    return Path(out)


def _build(bundle: dict, source: str | os.PathLike) -> Genie:
    genie = Genie(get_config(dict(bundle["model_config"])))
    for name in COMPONENTS:
        try:
            getattr(genie, name).load_state_dict(bundle[name])
        except RuntimeError as e:  # size mismatch, missing or unexpected keys
            detail = " ".join(str(e).split())[:300]
            raise TrainingError("checkpoint", f"{source}: the {name} weights do not fit the model config "
                                f"stored with them (another config or model version?): {detail}") from None
    genie.action_names = list(bundle["action_names"])
    return genie


def _run_action_names(file: Path, num_actions: int) -> list[str] | None:
    """RUN/actions.json of the run the checkpoint belongs to, if it has one."""
    # RUN/genie.pt or RUN/checkpoints/dynamics/step-N.pt; a loose file looks beside itself
    run = file.parents[2] if file.parent.parent.name == "checkpoints" else file.parent
    candidate = run / ACTIONS_FILE
    if not candidate.is_file():
        return None
    try:
        data = json.loads(candidate.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError("checkpoint", f"{candidate} is not readable JSON ({e})") from None
    names = data.get("names") if isinstance(data, dict) else data
    if not (isinstance(names, list) and len(names) == num_actions and all(isinstance(n, str) for n in names)):
        raise TrainingError("checkpoint", f"{candidate} must be a list of {num_actions} action names "
                            "(or {\"names\": [...]})")
    return names
