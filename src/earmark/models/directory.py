"""Model directories: ``config.json`` + ``model.safetensors``, written atomically.

``config.json`` holds everything needed to rebuild and use the model with nothing else
configured: the registry name and arguments, the front end preset, the sample rate, the
labels, single- or multi-label, and where the weights came from (provenance).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from earmark._version import __version__
from earmark.errors import ModelError
from earmark.files import make_ordinary
from earmark.models.registry import create_model

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


TRUST_HINT = ("pass --trust-checkpoint (Python: trust_checkpoint=True) only for a file from a "
              "source you trust")


def load_checkpoint(path: str | Path, trust: bool = False) -> Any:
    """``torch.load`` of a checkpoint, restricted to tensors and plain containers.

    A checkpoint is a pickle, and unpickling arbitrary objects can run any code the file's
    author chose. By default only weights and plain Python values are read
    (``weights_only=True``); a file that needs more is refused with the reason. ``trust=True``
    lifts the restriction for a file the user vouches for.

    >>> load_checkpoint("HTSAT_AudioSet_Saved_1.ckpt")["state_dict"]  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as err:
        # torch names the first global it refused, e.g. "Unsupported global: GLOBAL x.Y";
        # a damaged file fails the weights-only reader too, but without naming one
        found = None if trust else re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ModelError(
                f"{path}: holds pickled Python objects such as {found.group(1)} besides "
                f"weights; unpickling them can run arbitrary code, so earmark does not load "
                f"them by default; {TRUST_HINT}") from None
        raise ModelError(f"{path}: not a PyTorch checkpoint ({err})") from None


def model_config(model: nn.Module, labels: list[str], provenance: dict | None = None) -> dict:
    name = getattr(model, "registry_name", None)
    if name is None:
        raise ModelError("the model was not built by earmark.create_model; cannot save it")
    if len(labels) != model.num_classes:
        raise ModelError(f"{len(labels)} labels for a model with {model.num_classes} outputs")
    return {
        "format": "earmark-model",
        "format_version": FORMAT_VERSION,
        "name": name,
        "family": model.family,
        "num_classes": model.num_classes,
        "args": model.build_args(),
        "frontend": model.frontend.config.to_dict(),
        "sample_rate": model.sample_rate,
        "clip_seconds": model.clip_seconds,
        "multi_label": model.multi_label,
        "labels": list(labels),
        "provenance": {"earmark_version": __version__,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **(provenance or {})},
    }


def save_model_dir(model: nn.Module, out_dir: str | Path, labels: list[str],
                   provenance: dict | None = None) -> Path:
    """Write ``out_dir`` atomically: a crash leaves either the old directory or the new one."""
    out_dir = Path(out_dir)
    config = model_config(model, labels, provenance)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        make_ordinary(tmp)  # mkdtemp makes it private; a model is an ordinary folder
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        make_ordinary(tmp / WEIGHTS)
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise ModelError(f"{model_dir}: not a model directory (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from None
    for key in ("name", "num_classes", "args", "labels"):
        if key not in config:
            raise ModelError(f"{path}: missing key {key!r}")
    return config


def build_from_config(config: dict[str, Any]) -> nn.Module:
    return create_model(config["name"], config["num_classes"], **config["args"])


def _model_dir_weights(model_dir: str | Path, map_location: str = "cpu"
                       ) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, config) of a model directory, with errors that name the file."""
    config = read_config(model_dir)
    weights = Path(model_dir) / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{model_dir}: no {WEIGHTS}")
    try:
        return load_file(str(weights), device=map_location), config
    except Exception as err:  # safetensors raises its own error types
        raise ModelError(f"{weights}: unreadable weights ({err})") from None


def load_model_dir(model_dir: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model of a model directory with its weights; returns (model in eval, config)."""
    state, config = _model_dir_weights(model_dir, map_location)
    model = build_from_config(config)
    load_state(model, state, source=str(Path(model_dir) / WEIGHTS))
    return model.eval(), config


def model_dir_of(path: str | Path) -> Path:
    """The model directory of ``path``: a training run directory's ``model/``, else ``path``."""
    path = Path(path)
    return path / "model" if (path / "model" / CONFIG).is_file() else path


def read_weights(source: str | Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, model config) of a model directory, a training run directory (its
    ``model/``) or a training checkpoint (``.ckpt``, read as :func:`load_checkpoint` with
    ``trust``): the one place earmark turns "a model" on the command line into weights."""
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt":
        ckpt = load_checkpoint(path, trust=trust)
        config = ckpt.get("earmark_model") if isinstance(ckpt, dict) else None
        if config is None:
            raise ModelError(f"{path}: not an earmark training checkpoint (no earmark_model entry)")
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
                 if k.startswith("model.")}
        return state, config
    if path.is_dir():
        model_dir = model_dir_of(path)
        if not (model_dir / CONFIG).is_file():
            raise ModelError(f"{path}: neither a model directory ({CONFIG}) nor a run directory "
                             "(model/config.json)")
        return _model_dir_weights(model_dir)
    missing = "" if path.exists() else "no such model: the path does not exist, so it is "
    raise ModelError(f"{path}: {missing}not a model directory, a run directory or a training "
                     "checkpoint (.ckpt)")


def load_model(source: str | Path, trust: bool = False) -> tuple[nn.Module, dict]:
    """(model in eval mode, config) of a model directory, run directory or training .ckpt."""
    state, config = read_weights(source, trust)
    model = build_from_config(config)
    load_state(model, state, source=str(source))
    return model.eval(), config


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, naming the missing and unexpected keys in the error."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ModelError(f"{source}: weights do not fit the model ({err})") from None
    if missing or unexpected:
        raise ModelError(f"{source}: weights do not fit model {getattr(model, 'registry_name', '')}"
                         f" (missing {missing[:5]}, unexpected {unexpected[:5]})")
