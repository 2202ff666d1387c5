"""Pseudo-strong labels: stage 3 of paper 003 (section 4.4), after Dinkel et al., ICASSP 2022.

Training a streaming SAT on whole 10 s clips would mean looping over its chunks, so the
student learns from crops twice its chunk long instead (4 s for ``chunk_seconds`` 2, 2 s for
1): two chunks, the second attending to the first through the cache, as it will when it
streams. A teacher (any earmark model; in the paper the finetuned full-context ViT-B) scores
each crop as it is (not fitted to the teacher's own clip length), and the student learns
those scores: binary cross-entropy on the teacher's
probabilities (or, for a single-label teacher, cross-entropy on its softmax). No
augmentation, no mixup, fresh random crops every epoch; the student's vocabulary is the
teacher's.

The teacher scores each batch on the fly, under ``no_grad``, so the crops stay random and
nothing is written to disk. The price is one teacher forward per training step: with a
teacher the size of the student that adds about a third to a step (a forward against the
student's forward and backward); a ViT-B teacher (86 M parameters) over a SAT-T student
(5.5 M) costs about five times the student's own work, so there the teacher dominates.

    earmark train --stage psl --teacher runs/vit-b --init runs/vit-t --model sat-tiny \\
        --model-arg chunk_seconds=1 --data audioset:segments.csv --out runs/sat-t-1s
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import soxr
import torch
from torch import nn

from earmark.audio.io import RESAMPLE_QUALITY
from earmark.data.dataset import ClipDataset
from earmark.data.manifest import Manifest
from earmark.errors import DataError
from earmark.train.config import TrainConfig
from earmark.train.module import TaggingModule


def crop_seconds(student: nn.Module) -> float:
    """The crop a SAT student learns from: two chunks, so one past chunk is in its cache."""
    return 2.0 * float(student.chunk_seconds)


class TeacherCrops(torch.utils.data.Dataset):
    """``ds[i] -> (crop at the student's rate, the same crop at the teacher's rate)``.

    ``clips`` draws the random crops (its ``set_epoch`` gives fresh ones); the teacher's copy
    is resampled only when the two rates differ.

    >>> import tempfile
    >>> from earmark.data.sources import from_spec
    >>> from earmark.data.synth import synthesize
    >>> data = synthesize(tempfile.mkdtemp(), clips_per_class=1, clip_seconds=0.5,
    ...                   soundscapes=0)
    >>> manifest = from_spec(f"synth:{data}")
    >>> ds = TeacherCrops(ClipDataset(manifest, 16000, 2.0, train=True), 32000)
    >>> [x.shape for x in ds[0]]
    [torch.Size([32000]), torch.Size([64000])]
    """

    def __init__(self, clips: ClipDataset, teacher_rate: int):
        self.clips = clips
        self.teacher_rate = int(teacher_rate)

    def __len__(self) -> int:
        return len(self.clips)

    def set_epoch(self, epoch: int) -> None:
        self.clips.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        wave, _ = self.clips[i]  # the data's own labels play no part
        if self.teacher_rate == self.clips.sample_rate:
            return wave, wave
        resampled = soxr.resample(wave.numpy(), self.clips.sample_rate, self.teacher_rate,
                                  quality=RESAMPLE_QUALITY)
        return wave, torch.from_numpy(resampled).float()


def to_vocabulary(manifest: Manifest, labels: list[str]) -> Manifest:
    """``manifest`` scored against the teacher's ``labels``: labels outside them dropped, and
    items left without a label dropped, for validating and testing the student.

    >>> import tempfile
    >>> from earmark.data.sources import from_spec
    >>> from earmark.data.synth import synthesize
    >>> data = synthesize(tempfile.mkdtemp(), clips_per_class=1, clip_seconds=0.5,
    ...                   soundscapes=0)
    >>> teacher_labels = ["siren", "bark", "thunder"]
    >>> student = to_vocabulary(from_spec(f"synth:{data}"), teacher_labels)
    >>> student.labels, sorted(label for it in student.items for label in it.labels)
    (['siren', 'bark', 'thunder'], ['bark', 'siren'])
    """
    known = set(labels)
    if not known & set(manifest.labels):
        raise DataError(manifest.name, f"none of its labels ({', '.join(manifest.labels[:5])}, "
                        f"...) is among the teacher's {len(labels)}; the student could not "
                        "be validated")
    items = [replace(it, labels=tuple(lab for lab in it.labels if lab in known))
             for it in manifest.items]
    return replace(manifest, labels=list(labels), items=[it for it in items if it.labels])


class PseudoLabelModule(TaggingModule):
    """Trains a SAT student on ``(crop, teacher crop)`` batches against the teacher's scores,
    or, with ``teacher=None``, on ``(crop, stored teacher scores)`` batches
    (:mod:`earmark.data.scores`).

    The teacher is held in a list, so it stays out of the state dict, the checkpoints and
    the optimiser, keeps eval mode, and moves to the training device at the start of fit.
    Validation is the tagging module's: the data's own labels, in the teacher's vocabulary.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module | None, config: TrainConfig,
                 labels: list[str], steps_per_epoch: int):
        super().__init__(model, config, labels, steps_per_epoch)
        self._teacher = [None if teacher is None else teacher.eval().requires_grad_(False)]

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device)

    def pseudo_labels(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) crops at the teacher's rate -> (B, C) teacher probabilities."""
        param = next(self.teacher.parameters())
        with torch.no_grad():
            logits = self.teacher(wave.to(param.device, param.dtype))
            return self.teacher.activation(logits).float().to(wave.device)

    def training_step(self, batch, batch_idx):
        wave, second = batch  # the teacher's crop, or its stored scores
        target = second.float() if self.teacher is None else self.pseudo_labels(second)
        loss = self.loss(self.model(wave), target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=wave.shape[0])
        return loss


def store_teacher_scores(teacher: str | Path, location: str, crop_seconds: float,
                         hop_seconds: float | None = None, batch_size: int = 32,
                         progress: bool = True) -> dict:
    """Score every clip of the shard set ``location`` (a ``shards:`` location) with
    ``teacher`` on a grid of ``crop_seconds`` crops every ``hop_seconds`` (default: half a
    crop, one SAT chunk) and write the sidecars and ``psl.json`` of
    :mod:`earmark.data.scores` beside the shards. Shards whose sidecar exists are skipped, so
    a rerun finishes an interrupted one; ``psl.json`` must then name the same settings.
    Returns the ``psl.json`` contents."""
    from tqdm.auto import tqdm

    from earmark.audio.clips import fit_length
    from earmark.audio.packed import is_url
    from earmark.data.scores import INFO, crop_starts, grid, sidecar, write_sidecar
    from earmark.data.shards import read_shard, shard_paths
    from earmark.files import write_json
    from earmark.infer.tagger import load

    if crop_seconds <= 0 or (hop_seconds is not None and hop_seconds <= 0):
        raise ValueError("crop and hop must be positive seconds")
    tagger = load(teacher)
    model = tagger.model.eval()
    paths = shard_paths(location)
    if any(is_url(p) for p in paths):
        raise DataError(location, "teacher scores are written beside the shards: give local "
                        "shards")
    root = Path(paths[0]).parent
    info = {"teacher": str(teacher), "teacher_model": tagger.config.get("name"),
            "labels": list(tagger.labels), "multi_label": bool(model.multi_label),
            "crop_seconds": float(crop_seconds),
            "hop_seconds": float(hop_seconds or crop_seconds / 2),
            "sample_rate": tagger.sample_rate, "sidecars": [sidecar(p).name for p in paths]}
    settings = ("teacher", "labels", "crop_seconds", "hop_seconds", "sample_rate")
    if (root / INFO).is_file():
        old = json.loads((root / INFO).read_text())
        changed = [k for k in settings if old.get(k) != info[k]]
        if changed:
            raise DataError(root / INFO, f"holds scores of other settings ({', '.join(changed)});"
                            " delete it and the .psl.npz sidecars to write new ones")
    write_json(root / INFO, info)
    crop, hop = grid(info, tagger.sample_rate)
    param = next(model.parameters())
    for path in tqdm(paths, desc="teacher scores", unit="shard", disable=not progress):
        if sidecar(path).is_file():
            continue
        keys, scores = [], []
        for x, rate, meta in read_shard(path):
            x = x.mean(axis=1) if x.ndim == 2 else x
            if rate != tagger.sample_rate:
                x = soxr.resample(x, rate, tagger.sample_rate, quality=RESAMPLE_QUALITY)
            wave = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            crops = torch.stack([fit_length(wave[s:s + crop], crop, "repeat")
                                 for s in crop_starts(len(wave), crop, hop)])
            with torch.no_grad():
                probs = torch.cat([model.activation(model(b.to(param.device, param.dtype)))
                                   .float().cpu() for b in crops.split(batch_size)])
            keys.append(meta["key"])
            scores.append(probs.numpy())
        write_sidecar(sidecar(path), keys, scores)
    return info
