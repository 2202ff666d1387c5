"""Official checkpoints -> earmark model directories.

    >>> import earmark
    >>> earmark.convert("htsat-official", "HTSAT_AudioSet_Saved_1.ckpt", "models/htsat-audioset")
    ... # doctest: +SKIP
    PosixPath('models/htsat-audioset')

A file in the layout of the SAT repository's audio transformers converts the same way (here
one made on the spot, of the ViT-T width and one block, with three classes):

    >>> import torch
    >>> torch.save({"model": earmark.create_model("vit-tiny", 3, depth=1).state_dict()},
    ...            "audiotransformer_tiny.pt")
    >>> earmark.convert("vit-official", "audiotransformer_tiny.pt", "models/vit",
    ...                 labels=["dog", "rain", "siren"])
    PosixPath('models/vit')
    >>> earmark.load("models/vit").labels
    ['dog', 'rain', 'siren']

Each converter maps the foreign state dict onto an earmark model key by key, names exactly
which foreign keys it drops and why, and refuses a checkpoint with any other missing or
unexpected key.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from earmark.errors import ModelError
from earmark.models.directory import load_checkpoint, save_model_dir
from earmark.models.layers import resize_pos_embed
from earmark.models.registry import create_model

AUDIOSET_NUM_CLASSES = 527


def audioset_labels() -> list[str]:
    """The 527 AudioSet display names, in the order of the official class index."""
    text = resources.files("earmark.resources").joinpath(
        "audioset_class_labels_indices.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    return [r["display_name"] for r in sorted(rows, key=lambda r: int(r["index"]))]


def read_labels(path: str | Path) -> list[str]:
    """Labels from a text file (one per line) or a CSV with a display_name/label column."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: label file not found")
    text = path.read_text().splitlines()
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text))
        for col in ("display_name", "label", "name"):
            if rows and col in rows[0]:
                return [r[col] for r in rows]
        raise ModelError(f"{path}: a label CSV needs a display_name or label column")
    return [ln.strip() for ln in text if ln.strip()]


def _load_state(path: str | Path, trust: bool = False) -> dict:
    path = Path(path)
    # weights only unless the user vouches for the file: a checkpoint is a pickle
    obj = load_checkpoint(path, trust=trust)
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a dict of weights, got {type(obj).__name__}")
    for key in ("state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def _strict_load(model: nn.Module, state: dict, source: str) -> None:
    ours = set(model.state_dict())
    missing = sorted(ours - set(state))
    unexpected = sorted(set(state) - ours)
    if missing or unexpected:
        raise ModelError(f"{source}: does not match {model.registry_name} "
                         f"(missing {missing[:6]}, unexpected {unexpected[:6]})")
    for k, v in model.state_dict().items():
        if v.shape != state[k].shape:
            raise ModelError(f"{source}: {k} has shape {tuple(state[k].shape)}, "
                             f"expected {tuple(v.shape)}")
    model.load_state_dict(state)


# ---- HTS-AT ---------------------------------------------------------------------------------

# Keys of the official HTS-AT checkpoint that earmark does not keep, and why.
HTSAT_DROPPED = (
    (re.compile(r"^(spectrogram_extractor|logmel_extractor)\."),
     "torchlibrosa STFT and mel buffers; the front end is rebuilt from its preset"),
    (re.compile(r"^head\."), "a linear head the token-semantic path never uses"),
    (re.compile(r"\.(relative_position_index|attn_mask)$"),
     "buffers computed from the architecture"),
)


def htsat_official(path: str | Path, trust: bool = False, **overrides) -> tuple[nn.Module, int]:
    """The released HTS-AT Lightning checkpoint (keys under ``state_dict``, ``sed_model.``);
    ``overrides`` set model arguments the file does not determine."""
    raw = _load_state(path, trust)
    state = {k[len("sed_model."):] if k.startswith("sed_model.") else k: v for k, v in raw.items()}
    state = {k: v for k, v in state.items()
             if not any(rx.search(k) for rx, _ in HTSAT_DROPPED)}
    if "tscam_conv.weight" not in state or "patch_embed.proj.weight" not in state:
        raise ModelError(f"{path}: not an HTS-AT checkpoint with the token-semantic module "
                         "(no tscam_conv.weight / patch_embed.proj.weight)")
    num_classes = state["tscam_conv.weight"].shape[0]
    embed_dim = state["patch_embed.proj.weight"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depths, heads = [], []
    i = 0
    while f"layers.{i}.blocks.0.norm1.weight" in state:
        depths.append(len({m.group(1) for k in state
                           if (m := re.match(rf"layers\.{i}\.blocks\.(\d+)\.", k))}))
        table = state[f"layers.{i}.blocks.0.attn.relative_position_bias_table"]
        heads.append(table.shape[1])
        i += 1
    window = (int(round(state["layers.0.blocks.0.attn.relative_position_bias_table"]
                         .shape[0] ** 0.5)) + 1) // 2
    model = create_model("htsat", num_classes, embed_dim=embed_dim, depths=depths,
                         num_heads=heads, window_size=window, patch_size=patch,
                         **{"drop_path_rate": 0.0, **overrides})
    _strict_load(model, state, str(path))
    return model.eval(), num_classes


# ---- ViT and SAT (RicherMans/SAT) -----------------------------------------------------------

VIT_HEADS = {192: 3, 384: 6, 768: 12}  # ViT-T/S/B of paper 003
VIT_DROPPED = ((re.compile(r"^front_end\."),
                "torchaudio STFT window and mel buffers; rebuilt from the 'sat' preset"),)


def _vit_like(path: str | Path, streaming: bool, trust: bool = False,
              **overrides) -> tuple[nn.Module, int]:
    state = dict(_load_state(path, trust))
    state = {k: v for k, v in state.items() if not any(rx.search(k) for rx, _ in VIT_DROPPED)}
    if "patch_embed.proj.weight" not in state or "outputlayer.1.weight" not in state:
        raise ModelError(f"{path}: not a SAT-repository audio transformer checkpoint "
                         "(no patch_embed.proj.weight / outputlayer.1.weight)")
    # init_bn is Sequential(Rearrange, BatchNorm2d, Rearrange) there: its weights sit at .1
    state = {re.sub(r"^init_bn\.1\.", "init_bn.", k): v for k, v in state.items()}
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    for i in range(depth):  # SAT: separate to_q and to_kv -> one fused qkv
        q = f"blocks.{i}.attn.to_q."
        if q + "weight" in state:
            kv = f"blocks.{i}.attn.to_kv."
            for part in ("weight", "bias"):
                if q + part in state:
                    state[f"blocks.{i}.attn.qkv.{part}"] = torch.cat(
                        (state.pop(q + part), state.pop(kv + part)))
    embed_dim = state["patch_embed.proj.weight"].shape[0]
    if embed_dim not in VIT_HEADS:
        raise ModelError(f"{path}: embedding width {embed_dim} is none of ViT-T/S/B "
                         f"({sorted(VIT_HEADS)})")
    num_classes = state["outputlayer.1.weight"].shape[0]
    args = dict(embed_dim=embed_dim, depth=depth, num_heads=VIT_HEADS[embed_dim],
                pooling="token" if "cls_token" in state else "mean")
    if streaming:
        grid_t = state["time_pos_embed"].shape[-1]  # covers chunk + cache
        args["chunk_seconds"] = 2.0 if grid_t * 16 >= 2 * 192 else 1.0
    name = {(False, 192): "vit-tiny", (False, 384): "vit-small", (False, 768): "vit-base",
            (True, 192): "sat-tiny", (True, 384): "sat-small", (True, 768): "sat-base"}
    model = create_model(name[(streaming, embed_dim)], num_classes, **{**args, **overrides})
    for key, dim in (("time_pos_embed", 3), ("freq_pos_embed", 2)):
        state[key] = resize_pos_embed(state[key], getattr(model, key).shape[dim], dim)
    _strict_load(model, state, str(path))
    return model.eval(), num_classes


def vit_official(path: str | Path, trust: bool = False, **overrides) -> tuple[nn.Module, int]:
    """A full-context audio transformer released with the SAT code (``audiotransformer_*``);
    ``overrides`` set model arguments the file does not determine."""
    return _vit_like(path, streaming=False, trust=trust, **overrides)


def sat_official(path: str | Path, trust: bool = False, **overrides) -> tuple[nn.Module, int]:
    """A streaming SAT released with the SAT code (``SAT_{T,S,B}_{1,2}s``); ``overrides`` set
    model arguments the file does not determine, such as the chunk length."""
    return _vit_like(path, streaming=True, trust=trust, **overrides)


CONVERTERS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "htsat-official": htsat_official,
    "sat-official": sat_official,
    "vit-official": vit_official,
}


def convert(kind: str, checkpoint: str | Path, out_dir: str | Path,
            labels: list[str] | str | Path | None = None,
            trust_checkpoint: bool = False) -> Path:
    """Convert an official checkpoint into an earmark model directory.

    ``labels``: a list, or a file (one per line, or a CSV with ``display_name``); by default
    the 527 AudioSet labels for a 527-class checkpoint. Only weights and plain values are
    read from the file; ``trust_checkpoint=True`` also unpickles other objects (a Lightning
    checkpoint's saved hyper-parameters, say), which can run code: use it only for a file
    from a source you trust.
    """
    if kind not in CONVERTERS:
        raise ModelError(f"unknown checkpoint kind {kind!r}; known: {', '.join(CONVERTERS)}")
    model, num_classes = CONVERTERS[kind](checkpoint, trust=trust_checkpoint)
    if labels is None:
        if num_classes != AUDIOSET_NUM_CLASSES:
            raise ModelError(f"{checkpoint}: {num_classes} classes; give their labels "
                             "(--labels FILE)")
        labels = audioset_labels()
    elif not isinstance(labels, list):
        labels = read_labels(labels)
    if len(labels) != num_classes:
        raise ModelError(f"{len(labels)} labels for a checkpoint with {num_classes} classes")
    return save_model_dir(model, out_dir, labels,
                          {"source": kind, "checkpoint": Path(checkpoint).name})
