"""Looking inside a codebook model (paper 001): which codes fire for which class, and what a
code looks like.

:func:`code_statistics` counts every family's codes over the 1 s chunks of a labelled set,
per class; :func:`render_code` sends a code's centroid back through its family's decoder,
which gives the slice of log-mel the code stands for; :func:`plot_code` and
:func:`plot_class_codes` draw those as PNG.

A trained model comes from ``earmark.load("runs/cb").model``; an untrained one shows the calls
(its code books are still all zero, so every slice gets code 0):

    >>> import tempfile, soundfile as sf
    >>> from earmark.data.manifest import Item
    >>> root = Path(tempfile.mkdtemp())
    >>> sf.write(root / "dog.wav", np.random.default_rng(0).normal(0, 0.1, 32000), 16000)  # 2 s
    >>> sf.write(root / "owl.wav", 0.1 * np.sin(np.arange(16000) / 3), 16000)  # 1 s
    >>> clips = Manifest([Item(str(root / "dog.wav"), ("dog",)),
    ...                   Item(str(root / "owl.wav"), ("owl",))], ["dog", "owl"])
    >>> model = CodebookTagger(2, codebook_size=16, hidden=32, ae_hidden=64, ae_layers=1)
    >>> stats = code_statistics(model, clips)
    >>> stats["chunks"], stats["classes"]["dog"]["chunks"], stats["failed"]
    (3, 2, [])
    >>> stats["classes"]["dog"]["patch"]
    [{'code': 0, 'share': 1.0, 'lift': 1.0}]
    >>> print(format_statistics(stats).splitlines()[2])
      patch         0 (100.0%, x1.0)
    >>> render_code(model, "band", 0).shape  # (mel bins, frames)
    (8, 100)
    >>> plot_class_codes(model, stats, "band", root / "band.png").name
    'band.png'
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from earmark.data.manifest import Manifest
from earmark.errors import AudioError, DataError, ModelError
from earmark.evaluate.plots import _save
from earmark.models.codebook import FAMILIES, CodebookTagger, item_chunks


def _check(model) -> CodebookTagger:
    if not isinstance(model, CodebookTagger):
        raise ModelError(f"{getattr(model, 'registry_name', type(model).__name__)} is not a "
                         "codebook model")
    return model


def code_statistics(model: CodebookTagger, manifest: Manifest, top: int = 5,
                    progress: bool = False) -> dict:
    """Per class and family, the ``top`` most frequent codes over the chunks of the items
    with that label: ``share`` is the fraction of the class's slices of that family that get
    the code, ``lift`` that share over the code's share in the whole set (above 1: the code
    is typical of the class). Unreadable files are skipped and listed under ``failed``."""
    model = _check(model).eval()
    labels = manifest.labels
    d = model.codebook_size
    counts = {name: torch.zeros(len(labels), d) for name in FAMILIES}
    chunks_per_class = torch.zeros(len(labels))
    index = manifest.label_index()
    failed, total = [], 0
    for item in tqdm(manifest.items, desc="codes", disable=not progress, unit="file"):
        try:
            chunks = item_chunks(model, item)
        except AudioError as err:
            failed.append(str(err))
            continue
        with torch.no_grad():
            codes = model.codes(chunks)
        rows = [index[lab] for lab in item.labels]
        total += len(chunks)
        chunks_per_class[rows] += len(chunks)
        for name, c in codes.items():
            hist = torch.bincount(c.flatten(), minlength=d).float()
            counts[name][rows] += hist
    if not total:
        raise DataError(manifest.name, f"no file could be read ({len(failed)} failed)")
    classes: dict[str, dict] = {}
    overall = {name: c.sum(0) / c.sum().clamp_min(1) for name, c in counts.items()}
    for k, label in enumerate(labels):
        if not chunks_per_class[k]:
            continue
        classes[label] = {"chunks": int(chunks_per_class[k])}
        for name, c in counts.items():
            share = c[k] / c[k].sum()
            best = torch.argsort(share, descending=True)[:top].tolist()
            classes[label][name] = [
                {"code": i, "share": round(float(share[i]), 4),
                 "lift": round(float(share[i] / overall[name][i]), 3)}
                for i in best if share[i] > 0]
    return {"chunks": total, "codebook_size": d, "classes": classes, "failed": failed,
            "counts": {name: c.tolist() for name, c in counts.items()}}


def render_code(model: CodebookTagger, family: str, code: int) -> np.ndarray:
    """The log-mel slice (bins, frames) a code stands for: its centroid through the decoder,
    un-standardised."""
    model = _check(model)
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")
    if not 0 <= code < model.codebook_size:
        raise ValueError(f"code {code} is outside the code book (0..{model.codebook_size - 1})")
    shape = FAMILIES[family][2]
    with torch.no_grad():
        x = model.autoencoders[family].eval().decode(model.centroids(family)[code][None])[0]
        x = x * model.norm[1] + model.norm[0]
    return x.view(shape).cpu().numpy()


def _draw(ax, image: np.ndarray, vmin: float, vmax: float, title: str | None = None) -> None:
    ax.imshow(image, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7)


def plot_code(model: CodebookTagger, family: str, code: int, path: str | Path) -> Path:
    """One code's decoded slice as a small spectrogram image (mel bins up, frames across)."""
    image = render_code(model, family, code)
    bins, frames = image.shape
    fig = Figure(figsize=(max(1.6, frames / 25), max(1.4, bins / 25)))
    ax = fig.add_subplot()
    _draw(ax, image, float(image.min()), float(image.max()), f"{family} code {code}")
    fig.colorbar(ax.images[0], ax=ax, label="log mel")
    return _save(fig, path, dpi=120)


def plot_class_codes(model: CodebookTagger, stats: dict, family: str, path: str | Path,
                     top: int = 5) -> Path:
    """A sheet for one family: a row per class, its ``top`` most frequent codes decoded."""
    classes = stats["classes"]
    if not classes:
        raise DataError(family, "no class to draw")
    images = {(label, e["code"]): render_code(model, family, e["code"])
              for label, per in classes.items() for e in per[family][:top]}
    lo = min(float(im.min()) for im in images.values())
    hi = max(float(im.max()) for im in images.values())
    bins, frames = FAMILIES[family][2]
    cell_w = 1.1 if frames <= 10 else 2.4
    cell_h = 0.9 if bins <= 10 else 1.6
    fig = Figure(figsize=(1.2 + cell_w * top, 0.4 + cell_h * len(classes)))
    axes = fig.subplots(len(classes), top, squeeze=False)
    for r, (label, per) in enumerate(classes.items()):
        entries = per[family][:top]
        for c in range(top):
            ax = axes[r][c]
            if c >= len(entries):
                ax.axis("off")
                continue
            e = entries[c]
            _draw(ax, images[(label, e["code"])], lo, hi,
                  f"{e['code']}: {100 * e['share']:.0f}%, x{e['lift']:.1f}")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{family}: most frequent codes per class (share, lift)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    return _save(fig, path, dpi=100)


def format_statistics(stats: dict, top: int = 3) -> str:
    """A readable table: one line per class and family with its most frequent codes."""
    lines = [f"{stats['chunks']} chunks of 1 s, code book of {stats['codebook_size']} per "
             "family; code (share of the class's slices, lift over the whole set)"]
    for label, per in stats["classes"].items():
        lines.append(f"{label}  ({per['chunks']} chunks)")
        for name in FAMILIES:
            codes = "  ".join(f"{e['code']:>4} ({100 * e['share']:4.1f}%, x{e['lift']:.1f})"
                              for e in per[name][:top])
            lines.append(f"  {name:<10} {codes}")
    if stats["failed"]:
        lines.append(f"{len(stats['failed'])} files could not be read; first: "
                     f"{stats['failed'][0]}")
    return "\n".join(lines)
