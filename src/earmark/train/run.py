"""``earmark train`` and ``earmark cv``: run directories with checkpoints, logs and a model.

A run directory holds ``config.json`` (the resolved TrainConfig), ``checkpoints/``
(Lightning checkpoints: ``last.ckpt`` and the best epochs), ``logs/metrics.csv`` and
``logs/tensorboard/``, ``metrics.json`` (final test metrics) and ``model/`` (the exported
model directory, the average of the best ``top_k_average`` checkpoints).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from earmark.data.dataset import ClipDataset
from earmark.data.labels import targets as manifest_targets
from earmark.data.manifest import Manifest, from_spec
from earmark.data.sampler import BalancedSampler
from earmark.errors import DataError
from earmark.models.directory import save_model_dir
from earmark.models.registry import create_model
from earmark.train.config import TrainConfig
from earmark.train.module import TaggingModule

log = logging.getLogger("earmark.train")
_SCORE = re.compile(r"score=([0-9.]+)\.ckpt$")


def split_manifest(manifest: Manifest, fold: int | None, seed: int = 0
                   ) -> tuple[Manifest, Manifest, Manifest]:
    """(train, valid, test). With a fold, that fold is the test set and also validates."""
    if fold is not None:
        train, test = manifest.for_fold(fold)
        return train, test, test
    train, valid, test = (manifest.split(s) for s in ("train", "valid", "test"))
    if not len(train):
        raise DataError(manifest.name, "no training items (split 'train' is empty)")
    if not len(valid):
        # carve a deterministic 10 % of the training items for validation
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=g).tolist()
        n_val = max(1, len(train) // 10)
        val_ids = set(order[:n_val])
        items = train.items
        valid = replace(train, items=[items[i] for i in sorted(val_ids)])
        train = replace(train, items=[it for i, it in enumerate(items) if i not in val_ids])
    return train, valid, test


def _strategy(config: TrainConfig) -> str:
    if config.devices <= 1:
        return "auto"
    # CPU processes talk over gloo; spawning works from any entry point (CLI, tests, notebooks)
    return "ddp_spawn" if config.accelerator == "cpu" or not torch.cuda.is_available() else "ddp"


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the ``model.*`` weights of several Lightning checkpoints (integer buffers: first)."""
    avg: dict[str, torch.Tensor] = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        for k, v in state.items():
            if not k.startswith("model."):
                continue
            k = k[len("model."):]
            if not v.is_floating_point():
                avg.setdefault(k, v.clone())
            else:
                avg[k] = avg[k] + v.double() if k in avg else v.double().clone()
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in avg.items()}


def best_checkpoints(ckpt_dir: Path, k: int) -> list[Path]:
    scored = [(float(m.group(1)), p) for p in ckpt_dir.glob("epoch=*.ckpt")
              if (m := _SCORE.search(p.name))]
    scored.sort(key=lambda sp: (-sp[0], sp[1].name))
    return [p for _, p in scored[:k]]


class LastCheckpoint(L.Callback):
    """Writes ``last.ckpt`` after every epoch (Lightning's ``save_last`` only writes it when a
    top-k checkpoint is saved), through a temporary file so a crash never leaves half of it."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def _quiet_lightning() -> None:
    """Keep Lightning's banners, tips and third-party deprecation notes out of the output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (r".*LeafSpec.*", r".*weights_only.*", r".*exists and is not empty.*",
                    r".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _hours(*manifests: Manifest, limit: int = 50_000) -> float:
    """Total duration in hours from the file headers (inf for sets too large to look at)."""
    from earmark.audio.io import audio_info

    items = [it for m in manifests for it in m.items]
    if len(items) > limit:
        return float("inf")
    total = 0.0
    for it in items:
        if it.onset is not None and it.offset is not None:
            total += it.offset - it.onset
        else:
            try:
                total += audio_info(it.path).duration
            except Exception:  # unreadable files fail later with a clear error
                pass
    return total / 3600


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict]) -> None:
    header = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def train(config: TrainConfig, resume: bool = False) -> dict:
    """Train, export ``out/model`` and evaluate it on the test split; returns the final metrics."""
    from earmark.evaluate.run import evaluate_model

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"{last}: nothing to resume (no last checkpoint)")
        saved = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
        config = replace(saved, epochs=config.epochs, progress=config.progress)
    config.write(out / "config.json")
    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)

    manifest = from_spec(config.data)
    train_m, valid_m, test_m = split_manifest(manifest, config.fold, config.seed)
    labels = manifest.labels
    multi_label = manifest.multi_label if config.multi_label is None else config.multi_label
    model = create_model(config.model, len(labels), multi_label=multi_label,
                         fit=config.fit, **({"clip_seconds": config.clip_seconds}
                                            if config.clip_seconds else {}),
                         **config.model_args)
    clip = model.clip_seconds
    cache = config.cache
    if cache is None:
        cache = config.num_workers == 0 and _hours(train_m, valid_m) <= config.cache_hours
    train_ds = ClipDataset(train_m, model.sample_rate, clip, train=True, fit=config.fit,
                           seed=config.seed, cache=cache)
    valid_ds = ClipDataset(valid_m, model.sample_rate, clip, train=False, fit=config.fit,
                           cache=cache)
    balanced = manifest.multi_label if config.balanced is None else config.balanced
    sampler = (BalancedSampler(manifest_targets(train_m), num_samples=len(train_ds),
                               seed=config.seed) if balanced else None)
    loader_args = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                       persistent_workers=config.num_workers > 0)
    train_dl = torch.utils.data.DataLoader(train_ds, shuffle=sampler is None, sampler=sampler,
                                           drop_last=len(train_ds) > config.batch_size,
                                           **loader_args)
    valid_dl = torch.utils.data.DataLoader(valid_ds, **loader_args)
    steps_per_epoch = max(1, len(train_dl) // max(1, config.devices))
    module = TaggingModule(model, config, labels, steps_per_epoch)

    k = max(1, config.top_k_average)
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="epoch={epoch:03d}-score={val_score:.4f}",
                                 auto_insert_metric_name=False, monitor="val_score", mode="max",
                                 save_top_k=k),
                 LastCheckpoint(last)]
    if config.early_stopping:
        callbacks.append(EarlyStopping("val_score", patience=config.early_stopping, mode="max"))
    if config.max_minutes:
        callbacks.append(Timer(duration={"minutes": config.max_minutes}, interval="epoch"))
    if config.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        strategy=_strategy(config), precision=config.precision,
        logger=[CSVLogger(out, name="logs", version=""),
                TensorBoardLogger(out / "logs", name="tensorboard", version="")],
        callbacks=callbacks, enable_progress_bar=config.progress, enable_model_summary=False,
        log_every_n_steps=min(50, steps_per_epoch), num_sanity_val_steps=0,
        deterministic="warn")
    metrics_csv = out / "logs" / "metrics.csv"
    earlier = _read_csv(metrics_csv) if resume else []
    t0 = time.time()
    trainer.fit(module, train_dl, valid_dl, ckpt_path=str(last) if resume else None)
    train_seconds = time.time() - t0
    if earlier:  # the CSV logger starts a new file; keep the epochs before the resume
        _write_csv(metrics_csv, earlier + _read_csv(metrics_csv))

    best = best_checkpoints(ckpt_dir, k)
    if best:
        model.load_state_dict(average_checkpoints(best))
    model.spec_augment = None
    model_dir = save_model_dir(model.cpu().eval(), out / "model", labels,
                               {"source": "earmark train", "data": config.data,
                                "averaged_checkpoints": [p.name for p in best]})
    # read progress from the last checkpoint: with spawned processes the trainer here is idle
    state = torch.load(last, map_location="cpu", weights_only=False)
    result = {"train_seconds": round(train_seconds, 1), "epochs": state["epoch"] + 1,
              "steps": state["global_step"], "world_size": trainer.world_size,
              "averaged": [p.name for p in best], "model_dir": str(model_dir)}
    if len(test_m):
        metrics = evaluate_model(model_dir, test_m, progress=config.progress)
        result["test"] = {k: v for k, v in metrics.items()
                          if k not in ("per_class", "confusion_matrix")}
        (out / "test_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def cross_validate(config: TrainConfig) -> dict:
    """One run per fold under ``out/fold-K``; mean and standard deviation of the test metrics."""
    manifest = from_spec(config.data)
    folds = manifest.folds
    if len(folds) < 2:
        raise DataError(config.data, "cross validation needs a data set with folds "
                        f"(found {folds or 'none'})")
    per_fold = {}
    for k in folds:
        cfg = replace(config, fold=k, out=str(Path(config.out) / f"fold-{k}"))
        per_fold[k] = train(cfg).get("test", {})
    summary: dict = {"folds": per_fold}
    keys = {key for m in per_fold.values() for key, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in sorted(keys):
        vals = [per_fold[k][key] for k in folds if isinstance(per_fold[k].get(key), (int, float))]
        if not vals:
            continue
        summary[key] = {"mean": statistics.fmean(vals),
                        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    path = Path(config.out) / "cv_metrics.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
