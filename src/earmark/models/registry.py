"""A plain registry of model builders: ``@register_model`` functions that return an AudioModel.

    >>> import earmark
    >>> "vit-tiny" in earmark.list_models()
    True
    >>> model = earmark.create_model("vit-tiny", num_classes=10)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from earmark.errors import ModelError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_FAMILY_MODULES = ("earmark.models.vit", "earmark.models.sat", "earmark.models.htsat",
                  "earmark.models.tokenlearner", "earmark.models.codebook")


def register_model(name: str):
    def deco(fn: Callable[..., nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = fn
        return fn

    return deco


def _load_families() -> None:
    import importlib

    for mod in _FAMILY_MODULES:
        importlib.import_module(mod)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    _load_families()
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **overrides) -> nn.Module:
    """Build a registered model with ``num_classes`` outputs; ``overrides`` change its arguments.

    The returned module maps waveforms ``(B, N)`` at ``model.sample_rate`` to logits ``(B, C)``.
    """
    _load_families()
    if name not in _MODELS:
        raise ModelError(f"unknown model {name!r}; available: {', '.join(sorted(_MODELS))}")
    if num_classes < 1:
        raise ModelError(f"num_classes must be positive, got {num_classes}")
    model = _MODELS[name](num_classes=num_classes, **overrides)
    model.registry_name = name
    return model
