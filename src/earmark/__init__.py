"""earmark: efficient audio tagging.

    >>> import earmark
    >>> model = earmark.create_model("vit-tiny", num_classes=3, depth=1)
    >>> tagger = earmark.Tagger(model.eval(), {"labels": ["bark", "rain", "siren"]})
    >>> sorted(label for label, score in tagger.tag("dog.wav", top_k=3))
    ['bark', 'rain', 'siren']

A trained model is a folder that ``earmark train`` writes (``runs/fsdd/model``); load it with
``earmark.load("runs/fsdd/model")``. A released checkpoint loads by its name,
``earmark.load("sat-tiny-2s-audioset")``: downloaded once, checked and cached
(``earmark.list_pretrained()`` names them).
"""

from __future__ import annotations

from earmark._version import __version__

# The public API is imported lazily so that ``import earmark`` (and the CLI's help) stay fast.
_API = {
    "list_models": "earmark.models.registry",
    "create_model": "earmark.models.registry",
    "load_audio": "earmark.audio.io",
    "load": "earmark.infer.tagger",
    "Tagger": "earmark.infer.tagger",
    "convert": "earmark.models.convert",
    "list_pretrained": "earmark.models.pretrained",
    "pull": "earmark.models.pretrained",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'earmark' has no attribute {name!r}")
