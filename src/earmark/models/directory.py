"""Model directories: ``config.json`` + ``model.safetensors``, written atomically.

``config.json`` holds everything needed to rebuild and use the model with nothing else
configured: the registry name and arguments, the front end preset, the sample rate, the
labels, single- or multi-label, and where the weights came from (provenance).
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from earmark._version import __version__
from earmark.errors import ModelConfigError, ModelError
from earmark.files import (
    check_fields,
    make_ordinary,
    read_json,
    remove_leftovers,
    temporary_name,
)
from earmark.models.registry import create_model, list_models

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1
# config.json's fields: all of them model_config has written since format_version 1, and the
# detection settings Tagger.save_detection may add
CONFIG_SCHEMA: dict[str, Any] = {
    "format": str, "format_version": int, "name": str, "family": str, "num_classes": int,
    "args": dict, "frontend": dict, "sample_rate": int, "clip_seconds": float,
    "multi_label": bool, "labels": list[str], "provenance": dict, "detection": dict,
}
OPTIONAL = ("detection",)


TRUST_HINT = ("pass --trust-checkpoint (Python: trust_checkpoint=True) only for a file from a "
              "source you trust")


def load_checkpoint(path: str | Path, trust: bool = False, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint, restricted to tensors and plain containers.

    A checkpoint is a pickle, and unpickling arbitrary objects can run any code the file's
    author chose. By default only weights and plain Python values are read
    (``weights_only=True``); a file that needs more is refused with the reason. ``trust=True``
    lifts the restriction for a file the user vouches for. ``mmap=True`` maps the tensors
    instead of reading them, for a caller that wants only a checkpoint's plain values.

    >>> torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, "run.ckpt")
    >>> load_checkpoint("run.ckpt")
    {'state_dict': {'w': tensor([0., 0.])}, 'epoch': 3}
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap)
    except Exception as err:
        # torch names the first global it refused, e.g. "Unsupported global: GLOBAL x.Y";
        # a damaged file fails the weights-only reader too, but without naming one
        found = None if trust else re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise ModelError(
                f"{path}: holds pickled Python objects such as {found.group(1)} besides "
                f"weights; unpickling them can run arbitrary code, so earmark does not load "
                f"them by default; {TRUST_HINT}") from None
        raise ModelError(f"{path}: {_damage(path, err)}") from None


def _damage(path: Path, err: Exception) -> str:
    """Why torch could not read ``path``, in one line: a cut-off file says so rather than
    with torch's reader errors (or a bare "[Errno 22] Invalid argument")."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as read_err:
        return f"unreadable ({read_err})"
    if not head:
        return "empty file, not a checkpoint"
    if head == b"PK\x03\x04":  # torch.save writes a zip archive; its directory is at the end
        try:
            with zipfile.ZipFile(path):
                pass
        except (zipfile.BadZipFile, OSError):
            return (f"truncated or damaged checkpoint ({path.stat().st_size} bytes, the end of "
                    "its zip archive is missing): it was cut off while being written or copied")
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"not a PyTorch checkpoint ({reason})"


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
    """Write ``out_dir`` atomically: a crash leaves either the old directory or the new one
    (and a hidden temporary folder, which the next write to the parent folder removes)."""
    out_dir = Path(out_dir)
    config = model_config(model, labels, provenance)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir.parent)
    # a name files.remove_leftovers knows (it holds this process's pid); mkdir, unlike
    # mkdtemp, gives the folder the permissions of any other
    tmp = temporary_name(out_dir)
    try:
        tmp.mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        make_ordinary(tmp / WEIGHTS)  # safetensors makes its file private to its owner
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        old = None
        if out_dir.exists():
            old = temporary_name(out_dir)
            out_dir.rename(old)
        tmp.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_config(model_dir: str | Path) -> dict:
    """A model directory's ``config.json``, checked (:func:`check_config`)."""
    path = Path(model_dir) / CONFIG
    if not path.is_file():
        raise ModelError(f"{model_dir}: not a model directory (no {CONFIG})")
    return check_config(read_json(path, ModelConfigError), path)


def check_config(config: Any, source: str | Path, prefix: str = "") -> dict:
    """Check a model config (``config.json``, or a checkpoint's ``earmark_model`` with
    ``prefix="earmark_model."``) field by field; :class:`ModelConfigError` names ``source``,
    the field and what was expected. Whether it agrees with the model its ``args`` build is
    :func:`build_from_config`'s to check."""
    check_fields(source, config, CONFIG_SCHEMA, OPTIONAL, prefix, ModelConfigError)

    def expect(ok: bool, field: str, reason: str) -> None:
        if not ok:
            raise ModelConfigError(source, prefix + field, reason)

    expect(config["format"] == "earmark-model", "format",
           f"expected \"earmark-model\", got {config['format']!r}")
    version = config["format_version"]
    expect(version <= FORMAT_VERSION, "format_version",
           f"{version} is newer than this earmark reads ({FORMAT_VERSION}); upgrade earmark")
    expect(version >= 1, "format_version", f"expected 1 to {FORMAT_VERSION}, got {version}")
    expect(config["name"] in list_models(), "name",
           f"unknown model {config['name']!r} (earmark profile --list names them)")
    n = config["num_classes"]
    expect(n >= 1, "num_classes", f"expected at least 1 output, got {n}")
    expect(len(config["labels"]) == n, "labels",
           f"expected one label per output ({n}, num_classes), got {len(config['labels'])}")
    expect(config["sample_rate"] > 0, "sample_rate",
           f"expected a positive rate in Hz, got {config['sample_rate']}")
    expect(config["clip_seconds"] > 0, "clip_seconds",
           f"expected a positive length in s, got {config['clip_seconds']}")
    return config


def build_from_config(config: dict[str, Any], source: str | Path = CONFIG,
                      prefix: str = "") -> nn.Module:
    """The model a checked config describes (no weights), after checking that its fields
    agree with the model its ``args`` build: the front end, sample rate, clip length, family
    and output kind the file states are those the model will have."""
    try:
        model = create_model(config["name"], config["num_classes"], **config["args"])
    except (TypeError, ValueError) as err:  # an argument the model does not take or accept
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ModelConfigError(source, prefix + "args",
                               f"does not build {config['name']}: {reason}") from None

    def agree(field: str, stated: Any, built: Any) -> None:
        if stated != built:
            raise ModelConfigError(source, prefix + field,
                                   f"{stated!r} contradicts the model its args build ({built!r})")

    for field in ("family", "sample_rate", "clip_seconds", "multi_label"):
        if field in config:
            agree(field, config[field], getattr(model, field))
    frontend = model.frontend.config.to_dict()
    # only the settings the file states: one an older earmark did not write yet (resize,
    # normalize) has the default it then had
    for key, stated in config.get("frontend", {}).items():
        if key not in frontend:
            raise ModelConfigError(source, f"{prefix}frontend.{key}",
                                   f"unknown front end setting; known: {', '.join(frontend)}")
        agree(f"frontend.{key}", stated, frontend[key])
    return model


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
    model = build_from_config(config, Path(model_dir) / CONFIG)
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
    return _read_weights(source, trust)[:2]


def _read_weights(source: str | Path, trust: bool) -> tuple[dict, dict, Path, str]:
    """:func:`read_weights`, plus where the config came from and its key prefix there (what
    :func:`build_from_config` names in its errors)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".ckpt":
        ckpt = load_checkpoint(path, trust=trust)
        config = ckpt.get("earmark_model") if isinstance(ckpt, dict) else None
        if config is None:
            raise ModelError(f"{path}: not an earmark training checkpoint (no earmark_model entry)")
        check_config(config, path, prefix="earmark_model.")
        if not isinstance(ckpt.get("state_dict"), dict):
            raise ModelError(f"{path}: not an earmark training checkpoint (no state_dict)")
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
                 if k.startswith("model.")}
        return state, config, path, "earmark_model."
    if path.is_dir():
        model_dir = model_dir_of(path)
        if not (model_dir / CONFIG).is_file():
            raise ModelError(f"{path}: neither a model directory ({CONFIG}) nor a run directory "
                             "(model/config.json)")
        return (*_model_dir_weights(model_dir), model_dir / CONFIG, "")
    missing = "" if path.exists() else "no such model: the path does not exist, so it is "
    raise ModelError(f"{path}: {missing}not a model directory, a run directory or a training "
                     "checkpoint (.ckpt)")


def load_model(source: str | Path, trust: bool = False) -> tuple[nn.Module, dict]:
    """(model in eval mode, config) of a model directory, run directory or training .ckpt."""
    state, config, config_source, prefix = _read_weights(source, trust)
    model = build_from_config(config, config_source, prefix=prefix)
    load_state(model, state, source=str(source))
    return model.eval(), config


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load strictly, naming the missing and unexpected keys, or the tensors whose shapes
    differ (a front end or head that is not the one the weights were trained with), in a
    one-line error."""
    own = model.state_dict()
    wrong = [f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
             for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ModelError(f"{source}: weights do not fit model "
                         f"{getattr(model, 'registry_name', '')} as its config describes it: "
                         f"{'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}")
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ModelError(f"{source}: weights do not fit the model "
                         f"({str(err).strip().splitlines()[0]})") from None
    if missing or unexpected:
        raise ModelError(f"{source}: weights do not fit model {getattr(model, 'registry_name', '')}"
                         f" (missing {missing[:5]}, unexpected {unexpected[:5]})")
