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

from dataclasses import replace

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

    >>> ds = TeacherCrops(ClipDataset(manifest, 16000, 2.0, train=True), 32000)  # doctest: +SKIP
    >>> [x.shape for x in ds[0]]  # doctest: +SKIP
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

    >>> to_vocabulary(manifest, tagger.labels)  # doctest: +SKIP
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
    """Trains a SAT student on ``(crop, teacher crop)`` batches against the teacher's scores.

    The teacher is held in a list, so it stays out of the state dict, the checkpoints and
    the optimiser, keeps eval mode, and moves to the training device at the start of fit.
    Validation is the tagging module's: the data's own labels, in the teacher's vocabulary.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module, config: TrainConfig,
                 labels: list[str], steps_per_epoch: int):
        super().__init__(model, config, labels, steps_per_epoch)
        self._teacher = [teacher.eval().requires_grad_(False)]

    @property
    def teacher(self) -> nn.Module:
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    def pseudo_labels(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) crops at the teacher's rate -> (B, C) teacher probabilities."""
        param = next(self.teacher.parameters())
        with torch.no_grad():
            logits = self.teacher(wave.to(param.device, param.dtype))
            return self.teacher.activation(logits).float().to(wave.device)

    def training_step(self, batch, batch_idx):
        wave, teacher_wave = batch
        target = self.pseudo_labels(teacher_wave)
        loss = self.loss(self.model(wave), target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=wave.shape[0])
        return loss
