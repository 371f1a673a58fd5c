"""The one reader of a trained Genie in any of its forms, and the export bundle.

`load_genie(path)` accepts:

- a run directory: its `genie.pt`, else its latest phase-2 checkpoint
  (`checkpoints/dynamics/latest.pt`);
- `RUN/genie.pt` (kind "genie"), written when phase 2 ends;
- a phase-2 checkpoint (`step-N.pt`, `latest.pt`: weights under "model");
- a bundle (kind "bundle") from `export_bundle`;

each local or on an object store (`gs://…`, `s3://…`, read through `shards.fs`).

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

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from genie_pipeline.models.config import config_to_dict, get_config
from genie_pipeline.models.genie import Genie

from . import checkpoint as ckpt_lib
from .errors import TrainingError

COMPONENTS = ("tokenizer", "lam", "dynamics")
ACTIONS_FILE = "actions.json"


def resolve(path: str | os.PathLike) -> Path | str:
    """The checkpoint file behind `path` (a file, or a run directory), local or on an object
    store (gs://, s3://: then a string, as such paths stay)."""
    if ckpt_lib.is_remote(str(path)):
        fs = ckpt_lib._fs()
        p = str(path).rstrip("/")
        if fs.exists(p) or not fs.isdir(p):
            return p  # a file, or nothing: ckpt_lib.load names what is wrong
        for candidate in (fs.join(p, "genie.pt"), fs.join(p, "checkpoints", "dynamics", "latest.pt")):
            if fs.exists(candidate):
                return candidate
        raise TrainingError("checkpoint", f"{p} is a directory but not a training run "
                            "(no genie.pt, no checkpoints/dynamics/latest.pt)")
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


# dynamics settings that only steer sampling: no weight depends on them, so a trained model
# can be sampled under others
SAMPLER_KEYS = ("maskgit_steps", "temperature", "prompt_detail", "keep_bias")


def load_genie(path: str | os.PathLike, device: str | torch.device = "cpu", sampler: dict | None = None) -> Genie:
    """A Genie in eval mode from any accepted form, with `action_names` set. `sampler`
    replaces the stored config's sampling settings (`SAMPLER_KEYS` of `dynamics`), checked
    as the config is (TrainingError "sampler" for another key)."""
    bundle = load_bundle(path)
    if sampler:
        if bad := sorted(set(sampler) - set(SAMPLER_KEYS)):
            raise TrainingError("sampler", f"{bad} change the model, not its sampling; sampler keys: {SAMPLER_KEYS}")
        cfg = dict(bundle["model_config"])
        cfg["dynamics"] = {**cfg.get("dynamics", {}), **sampler}
        bundle = {**bundle, "model_config": cfg}
    return _build(bundle, path).to(device).eval()


def export_bundle(path: str | os.PathLike, out: str | os.PathLike) -> Path | str:
    """Write the inference bundle of `path` (any accepted form) to `out` (local or a bucket
    path), atomically.
    The weights are checked to build first: nothing is written for a broken source."""
    bundle = load_bundle(path)
    _build(bundle, path)
    ckpt_lib.save_atomic(bundle, out)
    return out if ckpt_lib.is_remote(str(out)) else Path(out)


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


def run_dir_of(file: Path | str) -> Path | str:
    """The run directory a checkpoint file belongs to: RUN for RUN/genie.pt and
    RUN/checkpoints/PHASE/step-N.pt; a loose file's own folder."""
    if ckpt_lib.is_remote(str(file)):
        parts = str(file).rsplit("/", 3)
        return parts[0] if len(parts) == 4 and parts[1] == "checkpoints" else str(file).rsplit("/", 1)[0]
    file = Path(file)
    return file.parents[2] if file.parent.parent.name == "checkpoints" else file.parent


def _run_action_names(file: Path | str, num_actions: int) -> list[str] | None:
    """RUN/actions.json of the run the checkpoint belongs to, if it has one."""
    run = run_dir_of(file)
    if ckpt_lib.is_remote(str(file)):
        fs = ckpt_lib._fs()
        candidate = fs.join(str(run), ACTIONS_FILE)
        if not fs.exists(candidate):
            return None
        read = lambda: fs.read_bytes(candidate)  # noqa: E731
    else:
        candidate = run / ACTIONS_FILE
        if not candidate.is_file():
            return None
        read = candidate.read_bytes
    try:
        data = json.loads(read())
    except (OSError, ValueError) as e:
        raise TrainingError("checkpoint", f"{candidate} is not readable JSON ({e})") from None
    names = data.get("names") if isinstance(data, dict) else data
    if not (isinstance(names, list) and len(names) == num_actions and all(isinstance(n, str) for n in names)):
        raise TrainingError("checkpoint", f"{candidate} must be a list of {num_actions} action names "
                            "(or {\"names\": [...]})")
    return names


@contextlib.contextmanager
def local_run_copy(path: str) -> Iterator[str]:
    """A local stand-in for a checkpoint or run directory in a bucket, for code that reads run
    folders directly (eval): the checkpoint file behind `path` (see `resolve`) and its
    run's run.json and actions.json, at their places under a temp folder. Yields the local
    path that stands for `path` (a folder for a run dir, else the file); a local `path` is
    yielded unchanged."""
    if not ckpt_lib.is_remote(str(path)):
        yield str(path)
        return
    fs = ckpt_lib._fs()
    file = str(resolve(path))
    run = run_dir_of(file)
    tmp = tempfile.mkdtemp(prefix="genie-run-copy-")
    try:
        for src in (file, fs.join(run, "run.json"), fs.join(run, "actions.json")):
            if fs.exists(src):
                fs.copy(src, os.path.join(tmp, *src[len(run) + 1:].split("/")))
        yield tmp if file != str(path).rstrip("/") else os.path.join(tmp, *file[len(run) + 1:].split("/"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
