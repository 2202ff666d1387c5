"""Starting from another run's weights (``TrainConfig.init``): what fits is copied, position
embeddings are resized, a head for other labels starts afresh, and :class:`InitReport` says
which (:func:`init_weights`)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from earmark.errors import ModelError
from earmark.models.directory import read_weights
from earmark.models.layers import resize_pos_embed


@dataclass
class InitReport:
    """What :func:`init_weights` did with each tensor."""

    source: str
    loaded: list[str] = field(default_factory=list)  # copied as they are
    resized: list[str] = field(default_factory=list)  # position embeddings cropped/interpolated
    reinitialised: list[str] = field(default_factory=list)  # head tensors left freshly drawn
    unused: list[str] = field(default_factory=list)  # in the source, with no place in the model

    def summary(self) -> str:
        parts = [f"{len(self.loaded) + len(self.resized)} tensors from {self.source}"]
        if self.resized:
            parts.append(f"resized {', '.join(self.resized)}")
        if self.reinitialised:
            parts.append(f"head re-initialised ({', '.join(self.reinitialised)})")
        if self.unused:
            parts.append(f"{len(self.unused)} unused ({', '.join(self.unused[:3])}"
                         f"{', ...' if len(self.unused) > 3 else ''})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the classifier: those that ``reset_classifier`` replaces."""
    probe = copy.deepcopy(model)
    try:
        probe.reset_classifier(model.num_classes + 1)
    except NotImplementedError:
        return set()
    before, after = model.state_dict(), probe.state_dict()
    return {k for k, v in after.items() if k not in before or v.shape != before[k].shape}


def init_weights(model: nn.Module, source: str | Path, labels: list[str]) -> InitReport:
    """Load the matching weights of ``source`` (a model or run directory, or a .ckpt).

    Every tensor must be there with the model's shape, with two exceptions: the head is
    kept freshly initialised unless the source was trained on exactly ``labels`` (an MAE
    encoder's placeholder head never is), and the time and frequency position embeddings
    of a ViT/SAT are cropped or interpolated to the model's length, as the official loader
    does. A SAT has the ViT's parameter layout, so a ViT directory initialises a SAT.
    Anything else that differs raises :class:`ModelError` naming the keys.

    >>> import tempfile, earmark
    >>> from earmark.models.directory import save_model_dir
    >>> tiny = dict(depth=1, embed_dim=32, num_heads=2, clip_seconds=1.0)
    >>> vit = save_model_dir(earmark.create_model("vit-tiny", 3, **tiny),
    ...                      tempfile.mkdtemp() + "/vit", ["dog", "cat", "bird"])
    >>> sat = earmark.create_model("sat-tiny", 3, **tiny, chunk_seconds=1.0)
    >>> report = init_weights(sat, vit, ["dog", "cat", "bird"])  # same labels: head kept
    >>> report.resized, report.reinitialised  # a SAT has its own time embedding length
    (['time_pos_embed'], [])
    >>> vit_2 = earmark.create_model("vit-tiny", 2, **tiny)
    >>> init_weights(vit_2, vit, ["siren", "horn"]).reinitialised  # other labels: a new head
    ['outputlayer.1.weight', 'outputlayer.1.bias']
    """
    state, config = read_weights(source)
    report = InitReport(str(source))
    head = head_keys(model)
    stage = config.get("provenance", {}).get("stage")
    same_head = stage != "mae" and list(config["labels"]) == list(labels)
    new_state, missing, mismatched = {}, [], []
    for key, own in model.state_dict().items():
        theirs = state.get(key)
        if key in head and (theirs is None or not same_head or theirs.shape != own.shape):
            report.reinitialised.append(key)
        elif theirs is None:
            missing.append(key)
        elif theirs.shape == own.shape:
            new_state[key] = theirs
            report.loaded.append(key)
        elif key in ("time_pos_embed", "freq_pos_embed") and theirs.dim() == own.dim() == 4 \
                and theirs.shape[:2] == own.shape[:2]:
            dim = 3 if key == "time_pos_embed" else 2
            new_state[key] = resize_pos_embed(theirs, own.shape[dim], dim)
            report.resized.append(key)
        else:
            mismatched.append(f"{key} {tuple(theirs.shape)} vs {tuple(own.shape)}")
    if missing or mismatched:
        raise ModelError(f"{source}: weights do not fit {getattr(model, 'registry_name', '')}"
                         f" (missing {missing[:5]}, shape differs {mismatched[:5]})")
    report.unused = sorted(set(state) - set(model.state_dict()))
    model.load_state_dict(new_state, strict=False)
    return report
