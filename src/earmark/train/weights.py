"""Starting from other weights (``TrainConfig.init``): a model or run directory, a training
checkpoint, or a released checkpoint by name (:func:`init_source`). The model takes the
checkpoint's architecture and front end (:func:`model_spec`); what fits is copied, position
embeddings are resized, the head keeps the checkpoint's rows for the labels it shares with the
data (matched by name) and starts afresh for the others, and :class:`InitReport` says which
(:func:`init_weights`)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from earmark.errors import ModelError
from earmark.models.directory import read_weights
from earmark.models.layers import resize_pos_embed
from earmark.models.pretrained import RELEASES, resolve_model

DEFAULT_MODEL = "vit-tiny"  # what trains when neither --model nor --init names a model


@dataclass
class InitReport:
    """What :func:`init_weights` did with each tensor, and with each label of the head."""

    source: str
    loaded: list[str] = field(default_factory=list)  # copied as they are
    resized: list[str] = field(default_factory=list)  # position embeddings cropped/interpolated
    reinitialised: list[str] = field(default_factory=list)  # head tensors left freshly drawn
    unused: list[str] = field(default_factory=list)  # in the source, with no place in the model
    mapped: list[str] = field(default_factory=list)  # head tensors whose rows were picked by label
    # label of the data -> the checkpoint's label whose head rows it kept (when ``mapped``)
    labels: dict[str, str] = field(default_factory=dict)
    new_labels: list[str] = field(default_factory=list)  # labels with fresh head rows

    def summary(self) -> str:
        parts = [f"{len(self.loaded) + len(self.resized)} tensors from {self.source}"]
        if self.resized:
            parts.append(f"resized {', '.join(self.resized)}")
        if self.mapped:
            shown = [f"{ours} <- {theirs}" if ours != theirs else ours
                     for ours, theirs in list(self.labels.items())[:5]]
            more = ", ..." if len(self.labels) > 5 else ""
            parts.append(f"head rows of {len(self.labels)} labels kept by name "
                         f"({', '.join(shown)}{more})")
            if self.new_labels:
                parts.append(f"{len(self.new_labels)} labels with a new head row "
                             f"({', '.join(self.new_labels[:5])}"
                             f"{', ...' if len(self.new_labels) > 5 else ''})")
        if self.reinitialised:
            parts.append(f"head re-initialised ({', '.join(self.reinitialised)})")
        if self.unused:
            parts.append(f"{len(self.unused)} unused ({', '.join(self.unused[:3])}"
                         f"{', ...' if len(self.unused) > 3 else ''})")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        return asdict(self)


def init_source(init: str | Path) -> Path:
    """The model ``--init`` names, as a path: an existing path as it is, else the name of a
    released checkpoint as its cached model directory (pulled on first use, as
    :func:`~earmark.models.pretrained.resolve_model` does; ``EARMARK_OFFLINE`` applies).
    A :class:`ModelError` names the option and the reason.

    >>> init_source("no-such-model")
    Traceback (most recent call last):
    ...
    earmark.errors.ModelError: --init no-such-model: no such path, so not a model directory, a \
run directory or a training checkpoint (.ckpt); and no released model has that name (earmark \
models --pretrained lists them)
    """
    try:
        path = resolve_model(init)
    except ModelError as err:  # a download that failed, a name close to a released one
        raise type(err)(f"--init {init}: {err}") from None
    if not path.exists():
        raise ModelError(f"--init {init}: no such path, so not a model directory, a run "
                         "directory or a training checkpoint (.ckpt); and no released model has "
                         "that name (earmark models --pretrained lists them)")
    return path


@dataclass
class InitWeights:
    """The weights and model config of ``TrainConfig.init``, read once."""

    name: str  # as the user gave it
    path: Path
    state: dict[str, torch.Tensor]
    config: dict

    @classmethod
    def read(cls, init: str | Path) -> InitWeights:
        path = init_source(init)
        try:
            state, config = read_weights(path)
        except ModelError as err:
            raise type(err)(f"--init {init}: {err}") from None
        return cls(str(init), path, state, config)

    @property
    def released(self) -> bool:
        return self.name in RELEASES


def model_spec(model: str | None, model_args: dict, init: dict | None
               ) -> tuple[str, dict]:
    """The registry name and arguments of the model to train. Without ``init`` (a model
    config): ``model`` (default ``vit-tiny``) with ``model_args``. With it, the checkpoint's
    architecture: its name unless ``model`` names another (a SAT from a ViT, say), and for
    that same name its arguments, front end and clip length included, under ``model_args``.

    >>> model_spec(None, {"depth": 2}, None)
    ('vit-tiny', {'depth': 2})
    >>> cfg = {"name": "htsat", "args": {"embed_dim": 96, "clip_seconds": 10.0,
    ...                                  "multi_label": True}}
    >>> model_spec(None, {"drop_path_rate": 0.2}, cfg)
    ('htsat', {'embed_dim': 96, 'clip_seconds': 10.0, 'drop_path_rate': 0.2})
    """
    if init is None:
        return model or DEFAULT_MODEL, dict(model_args)
    name = model or init["name"]
    if name != init["name"]:
        return name, dict(model_args)
    # single- or multi-label follows the data, not the checkpoint
    args = {k: v for k, v in init["args"].items() if k != "multi_label"}
    return name, {**args, **model_args}


def check_front_end(model: nn.Module, init: InitWeights) -> None:
    """Refuse a model whose front end (sample rate, STFT, mel) differs from the one the
    ``init`` weights were trained with: the data is resampled to the checkpoint's rate and
    features, never the other way round."""
    own = model.frontend.config.to_dict()
    theirs = init.config.get("frontend", {})
    differs = [f"{k} {own.get(k)!r} (the checkpoint's: {v!r})" for k, v in theirs.items()
               if k in own and own[k] != v]
    if differs:
        raise ModelError(
            f"--init {init.name}: the model's front end differs from the one its weights were "
            f"trained with ({'; '.join(differs[:3])}); the front end and sample rate come from "
            f"the checkpoint ({init.config['sample_rate']} Hz): leave out --model and any "
            "--model-arg frontend")


def head_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of the classifier: those that ``reset_classifier`` replaces."""
    return set(head_class_dims(model))


def head_class_dims(model: nn.Module) -> dict[str, int | None]:
    """The classifier's state-dict keys (those that ``reset_classifier`` replaces), each with
    the dimension that runs over the labels (None for a tensor of the head that has none,
    such as a hidden layer of an MLP head)."""
    probe = copy.deepcopy(model)
    before = {id(t) for t in probe.state_dict(keep_vars=True).values()}
    try:
        probe.reset_classifier(model.num_classes + 1)
    except NotImplementedError:
        return {}
    own = model.state_dict()
    out: dict[str, int | None] = {}
    for key, t in probe.state_dict(keep_vars=True).items():
        if id(t) in before:
            continue
        dims = [d for d in range(t.dim()) if key in own and own[key].dim() == t.dim()
                and own[key].shape[d] + 1 == t.shape[d]]
        out[key] = dims[0] if len(dims) == 1 else None
    return out


def label_key(label: str) -> str:
    """How labels are matched by name: case and ``_`` against spaces ignored.

    >>> label_key("Vacuum_cleaner") == label_key("vacuum cleaner")
    True
    """
    return " ".join(label.replace("_", " ").split()).casefold()


def match_labels(theirs: list[str], ours: list[str]) -> list[int | None]:
    """For each of ``ours``, the index of the label of ``theirs`` with the same name
    (:func:`label_key`), or None.

    >>> match_labels(["Speech", "Dog", "Cat"], ["cat", "dog", "siren"])
    [2, 1, None]
    """
    index: dict[str, int] = {}
    for i, label in enumerate(theirs):
        index.setdefault(label_key(label), i)
    return [index.get(label_key(label)) for label in ours]


def init_weights(model: nn.Module, source: str | Path | InitWeights, labels: list[str]
                 ) -> InitReport:
    """Load the matching weights of ``source`` (a model or run directory, a .ckpt, the name
    of a released checkpoint, or :class:`InitWeights` read before).

    Every tensor must be there with the model's shape, with two exceptions: the time and
    frequency position embeddings of a ViT/SAT are cropped or interpolated to the model's
    length, as the official loader does; and the head. The head is copied where the source
    was trained on ``labels``; where it shares only some of them (AudioSet's names, matched
    case-insensitively, ``_`` as a space), the rows of those labels are kept and the others
    start afresh; otherwise (and from an MAE encoder's placeholder head) it starts afresh. A
    SAT has the ViT's parameter layout, so a ViT directory initialises a SAT. Anything else
    that differs raises :class:`ModelError` naming the keys.

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
    >>> init_weights(vit_2, vit, ["Bird", "horn"]).labels  # some shared: their rows kept
    {'Bird': 'bird'}
    """
    weights = source if isinstance(source, InitWeights) else InitWeights.read(source)
    state, config = weights.state, weights.config
    report = InitReport(str(weights.name))
    head = head_class_dims(model)
    stage = config.get("provenance", {}).get("stage")
    theirs_labels = list(config["labels"])
    # an MAE encoder's one-output head is a placeholder: nothing to keep
    rows = [None] * len(labels) if stage == "mae" else match_labels(theirs_labels, labels)
    same_head = (rows == list(range(len(labels))) and len(theirs_labels) == len(labels))
    by_label = any(r is not None for r in rows) and not same_head and all(
        dim is not None for dim in head.values())
    new_state, missing, mismatched = {}, [], []
    for key, own in model.state_dict().items():
        theirs = state.get(key)
        if key in head:
            dim = head[key]
            if theirs is not None and same_head and theirs.shape == own.shape:
                new_state[key] = theirs
                report.loaded.append(key)
            elif (theirs is not None and by_label and theirs.dim() == own.dim()
                  and theirs.shape[dim] == len(theirs_labels)
                  and all(theirs.shape[d] == own.shape[d] for d in range(own.dim())
                          if d != dim)):
                picked = own.detach().clone()
                for i, r in enumerate(rows):
                    if r is not None:
                        picked.select(dim, i).copy_(theirs.select(dim, r))
                new_state[key] = picked
                report.mapped.append(key)
            else:
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
        raise ModelError(f"{weights.path}: weights do not fit "
                         f"{getattr(model, 'registry_name', '')} (missing {missing[:5]}, "
                         f"shape differs {mismatched[:5]})")
    if report.mapped and report.reinitialised:  # a head only partly kept is no head kept
        for key in report.mapped:
            new_state.pop(key)
        report.reinitialised = [k for k in head if k in report.reinitialised + report.mapped]
        report.mapped = []
    if report.mapped:
        report.labels = {ours: theirs_labels[r] for ours, r in zip(labels, rows)
                         if r is not None}
        report.new_labels = [ours for ours, r in zip(labels, rows) if r is None]
    report.unused = sorted(set(state) - set(model.state_dict()))
    model.load_state_dict(new_state, strict=False)
    return report
