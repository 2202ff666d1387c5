"""The training configuration: one dataclass, written resolved into every run directory."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


@dataclass
class TrainConfig:
    data: str  # a data SPEC, e.g. "fsdd:/data/fsdd"
    out: str = "runs/run"
    model: str = "vit-tiny"
    model_args: dict = field(default_factory=dict)  # overrides for create_model
    epochs: int = 30
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0  # linear warm-up, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.01
    clip_seconds: float | None = None  # None: the model's own clip length
    fit: str = "repeat"  # how clips are fitted to clip_seconds: crop, pad or repeat
    cache: bool | None = None  # keep decoded audio in memory; None = when under cache_hours
    cache_hours: float = 2.0
    mixup: float = 0.0  # Beta(alpha, alpha); 0 turns mixup off
    lr_schedule: str = "cosine"  # "cosine" (warm-up then cosine) or "htsat" (paper 002's steps)
    time_mask: int = 0  # SpecAugment: max masked frames (paper 003 uses 192 on 10 s clips)
    freq_mask: int = 0  # SpecAugment: max masked mel bins (paper 003 uses 24)
    time_masks: int = 1  # number of time masks per clip
    freq_masks: int = 1  # number of frequency masks per clip
    gain_db: float = 0.0  # random gain in +-dB
    shift: float = 0.0  # random circular shift, fraction of the clip
    polarity: float = 0.0  # probability of inverting the sign
    top_k_average: int = 1  # average the weights of the k best checkpoints (paper 003: 4)
    early_stopping: int = 0  # patience in epochs; 0 = off
    multi_label: bool | None = None  # sigmoid + BCE even for single-label data (None: as data)
    balanced: bool | None = None  # balanced sampling; None = on for multi-label data
    seed: int = 0
    num_workers: int = 0
    devices: int = 1
    accelerator: str = "auto"
    precision: str = "32-true"
    fold: int | None = None  # hold this fold out (fold-based sets); None = the split's test set
    max_minutes: float | None = None  # stop training after this wall time
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**d)

    def write(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
