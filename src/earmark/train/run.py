"""``earmark train`` and ``earmark cv`` (by fold or by group): run directories with
checkpoints, logs and a model.

A run directory holds ``train_config.json`` (the resolved TrainConfig; ``model/`` has the
model's own ``config.json``), ``checkpoints/``
(Lightning checkpoints: ``last.ckpt`` and the best epochs), ``logs/metrics.csv`` and
``logs/tensorboard/``, ``metrics.json`` (final test metrics), ``init.json`` (with ``init``:
which weights were loaded) and ``model/`` (the exported model directory, the average of the
best ``top_k_average`` checkpoints).

Every stage of paper 003 (``TrainConfig.stage``) writes the same kind of run directory, and
the next stage starts from it with ``init``:

    >>> mae = train(TrainConfig(data="audioset:a.csv", stage="mae", out="runs/mae"))  # doctest: +SKIP
    >>> vit = train(TrainConfig(data="audioset:a.csv", init="runs/mae", out="runs/vit"))  # doctest: +SKIP
    >>> sat = train(TrainConfig(data="audioset:a.csv", stage="psl", model="sat-tiny",
    ...                         init="runs/vit", teacher="runs/vit", out="runs/sat"))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from earmark.data.dataset import ClipDataset
from earmark.data.labels import targets as manifest_targets
from earmark.data.manifest import Manifest, group_folds
from earmark.data.sampler import BalancedSampler, ShareSampler
from earmark.data.sources import from_spec
from earmark.data.splits import group_split, split_manifest
from earmark.data.stream import ShardStream
from earmark.errors import ConfigError, DataError, ModelError
from earmark.files import (
    atomic_write,
    check_fields,
    dataclass_schema,
    read_json,
    remove_leftovers,
    temporary_name,
    write_json,
)
from earmark.models.directory import (
    load_checkpoint,
    read_weights,
    save_model_dir,
)
from earmark.models.layers import resize_pos_embed
from earmark.models.registry import create_model
from earmark.models.sat import StreamingAudioViT
from earmark.models.vit import AudioViT
from earmark.train.config import TrainConfig
from earmark.train.module import TaggingModule

log = logging.getLogger("earmark.train")
TRAIN_CONFIG = "train_config.json"  # the run's settings (model/config.json describes the model)
_SCORE = re.compile(r"score=(-?[0-9.]+)\.ckpt$")  # MAE scores are minus a loss


def _launched() -> bool:
    """Whether torchrun (torch elastic) or SLURM started this process as one of many."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return TorchElasticEnvironment.detect() or SLURMEnvironment.detect()


def _strategy(config: TrainConfig) -> str:
    if config.devices <= 1 and config.num_nodes <= 1:
        return "auto"
    if config.num_nodes > 1 or _launched():  # the launcher started every process: join them
        return "ddp"
    # CPU processes talk over gloo; spawning works from any entry point (CLI, tests, notebooks)
    return "ddp_spawn" if config.accelerator == "cpu" or not torch.cuda.is_available() else "ddp"


def _world_size(config: TrainConfig) -> int:
    return config.devices * config.num_nodes


def _streams(manifest: Manifest) -> bool:
    """Whether training reads ``manifest`` as a stream of shards (a ``shards:`` data set)."""
    return bool(manifest.meta.get("shards"))


def average_checkpoints(paths: list[Path]) -> dict[str, torch.Tensor]:
    """Mean of the ``model.*`` weights of several Lightning checkpoints (integer buffers: first)."""
    avg: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_checkpoint(path)["state_dict"]
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
        if trainer.is_global_zero:  # what a killed run left beside the checkpoints goes
            remove_leftovers(self.path.parent)
        tmp = temporary_name(self.path)  # only rank 0 writes, to its own name
        trainer.save_checkpoint(tmp, weights_only=False)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def _quiet_lightning() -> None:
    """Keep Lightning's banners, tips and third-party deprecation notes out of the output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (r".*LeafSpec.*", r".*weights_only.*", r".*exists and is not empty.*",
                    r".*does not have many workers.*", r".*module\(s\) in eval mode.*",
                    # earmark's shard stream deals its clips to the workers itself
                    r".*`IterableDataset` has `__len__` defined.*"):
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
    with atomic_write(path, newline="") as f:
        w = csv.DictWriter(f, header)
        w.writeheader()
        w.writerows(rows)


# ---- --init: start from another run's weights ------------------------------------------------


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

    >>> report = init_weights(create_model("vit-tiny", 8), "runs/mae", labels)  # doctest: +SKIP
    >>> report.reinitialised  # doctest: +SKIP
    ['outputlayer.1.bias', 'outputlayer.1.weight']
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


# ---- the stages: what each one trains on ---------------------------------------------------


@dataclass
class RunSetup:
    """What a stage trains: the model, its labels, the Lightning module and the data."""

    model: nn.Module
    labels: list[str]
    module: TaggingModule
    train_loader: torch.utils.data.DataLoader
    valid_loader: torch.utils.data.DataLoader
    test: Manifest | None  # evaluated after training with the exported model; None: not tagging
    provenance: dict  # written into model/config.json
    init: InitReport | None = None


def _create(config: TrainConfig, num_classes: int, multi_label: bool) -> nn.Module:
    extra = config.regularisers()
    try:
        return create_model(config.model, num_classes, multi_label=multi_label, fit=config.fit,
                            **({"clip_seconds": config.clip_seconds}
                               if config.clip_seconds else {}),
                            **config.model_args, **extra)
    except TypeError as err:
        if not extra:
            raise
        raise ModelError(f"model {config.model!r} does not take {', '.join(extra)} ({err})"
                         ) from None


def _use_cache(config: TrainConfig, *manifests: Manifest) -> bool:
    if config.cache is not None:
        return config.cache
    if any(_streams(m) for m in manifests):  # shards are for sets too large to keep
        return False
    return config.num_workers == 0 and _hours(*manifests) <= config.cache_hours


def _loaders(config: TrainConfig, train_ds, valid_ds, sampler=None):
    loader_args = dict(batch_size=config.batch_size, num_workers=config.num_workers,
                       persistent_workers=config.num_workers > 0)
    world_size = _world_size(config)
    # several processes validate a share each, every item once (exact mAP), when each has one
    share = ShareSampler(valid_ds) if 1 < world_size <= len(valid_ds) else None
    valid_dl = torch.utils.data.DataLoader(valid_ds, sampler=share, **loader_args)
    if isinstance(train_ds, ShardStream):  # it splits itself over ranks and workers
        workers = max(1, config.num_workers)
        train_ds.workers = workers
        steps = train_ds.quota(world_size * workers) * workers // config.batch_size
        return torch.utils.data.DataLoader(train_ds, **loader_args), valid_dl, steps
    train_dl = torch.utils.data.DataLoader(train_ds, shuffle=sampler is None, sampler=sampler,
                                           drop_last=len(train_ds) > config.batch_size,
                                           **loader_args)
    return train_dl, valid_dl, max(1, len(train_dl) // world_size)


def _train_clips(config: TrainConfig, manifest: Manifest, train_m: Manifest, sample_rate: int,
                 clip_seconds: float, cache: bool, teacher_scores: dict | None = None):
    """The training data set: a stream of shards for a ``shards:`` data set (with stored
    teacher scores, crops and their scores), else clips read by index (then sampled by
    :func:`_sampler`)."""
    if _streams(train_m):
        # pretraining has no labels to balance; stored scores are soft labels of every clip
        balanced = (_balanced(config, manifest) and config.stage != "mae"
                    and teacher_scores is None)
        return ShardStream(train_m, sample_rate, clip_seconds, batch_size=config.batch_size,
                           fit=config.fit, seed=config.seed, buffer=config.shuffle_buffer,
                           balanced=balanced, teacher_scores=teacher_scores)
    return ClipDataset(train_m, sample_rate, clip_seconds, train=True, fit=config.fit,
                       seed=config.seed, cache=cache)


def _balanced(config: TrainConfig, manifest: Manifest) -> bool:
    """Whether training draws label-balanced: ``--balanced``, by default for multi-label data."""
    return manifest.multi_label if config.balanced is None else config.balanced


def _sampler(config: TrainConfig, manifest: Manifest, train_m: Manifest, size: int):
    return (BalancedSampler(manifest_targets(train_m), num_samples=size, seed=config.seed)
            if _balanced(config, manifest) and not _streams(train_m) else None)


def _init(config: TrainConfig, model: nn.Module, labels: list[str]) -> InitReport | None:
    if not config.init:
        return None
    report = init_weights(model, config.init, labels)
    log.info("init: %s", report.summary())
    return report


def _prepare_finetune(config: TrainConfig, manifest: Manifest, train_m: Manifest,
                      valid_m: Manifest, test_m: Manifest) -> RunSetup:
    labels = manifest.labels
    multi_label = manifest.multi_label if config.multi_label is None else config.multi_label
    model = _create(config, len(labels), multi_label)
    report = _init(config, model, labels)
    cache = _use_cache(config, train_m, valid_m)
    train_ds = _train_clips(config, manifest, train_m, model.sample_rate, model.clip_seconds,
                            cache)
    valid_ds = ClipDataset(valid_m, model.sample_rate, model.clip_seconds, train=False,
                           fit=config.fit, cache=cache)
    train_dl, valid_dl, steps = _loaders(config, train_ds, valid_ds,
                                         _sampler(config, manifest, train_m, len(train_m)))
    module = TaggingModule(model, config, labels, steps)
    return RunSetup(model, labels, module, train_dl, valid_dl, test_m, {}, report)


def _prepare_mae(config: TrainConfig, manifest: Manifest, train_m: Manifest,
                 valid_m: Manifest, test_m: Manifest) -> RunSetup:
    from earmark.train.mae import PLACEHOLDER_LABEL, MAEModule, max_seconds

    labels = [PLACEHOLDER_LABEL]
    model = _create(config, 1, True)
    if not isinstance(model, AudioViT):
        raise ModelError(f"stage 'mae' pretrains an audio ViT or SAT encoder; {config.model!r} "
                         "is not one")
    report = _init(config, model, labels)
    clip = config.clip_seconds or min(model.clip_seconds, max_seconds(model))
    frames = model.frontend(torch.zeros(1, round(clip * model.sample_rate))).shape[-1]
    grid_t = model.patch_embed.grid(model.frontend.config.n_mels, frames)[1]
    if grid_t > model.time_pos_embed.shape[-1]:
        raise ModelError(f"{clip} s clips are longer than the {config.model} encoder's position "
                         f"embeddings; give --clip-seconds {max_seconds(model):.2f} or less")
    cache = _use_cache(config, train_m, valid_m)
    train_ds = _train_clips(config, manifest, train_m, model.sample_rate, clip, cache)
    valid_ds = ClipDataset(valid_m, model.sample_rate, clip, train=False, fit=config.fit,
                           cache=cache)
    train_dl, valid_dl, steps = _loaders(config, train_ds, valid_ds)
    module = MAEModule(model, config, steps)
    d = module.decoder
    provenance = {"mask_ratio": config.mask_ratio, "clip_seconds_trained": clip,
                  "decoder": {"dim": d.input_proj.out_features, "depth": len(d.blocks),
                              "heads": d.blocks[0].attn.num_heads if len(d.blocks) else 0},
                  "note": "MAE-pretrained encoder; its one-output head is a placeholder"}
    return RunSetup(model, labels, module, train_dl, valid_dl, None, provenance, report)


def _prepare_psl(config: TrainConfig, manifest: Manifest, train_m: Manifest,
                 valid_m: Manifest, test_m: Manifest) -> RunSetup:
    from earmark.train.psl import PseudoLabelModule, TeacherCrops, crop_seconds, to_vocabulary

    if config.teacher_scores:
        return _prepare_stored_psl(config, manifest, train_m, valid_m, test_m)
    from earmark.infer.tagger import load

    tagger = load(config.teacher)
    teacher, labels = tagger.model, tagger.labels
    model = _psl_student(config, labels, teacher.multi_label, config.teacher)
    report = _init(config, model, labels)
    crop = crop_seconds(model)
    valid_m = to_vocabulary(valid_m, labels)
    cache = _use_cache(config, train_m, valid_m)
    crops = ClipDataset(train_m, model.sample_rate, crop, train=True, fit=config.fit,
                        seed=config.seed, cache=cache)
    train_ds = TeacherCrops(crops, teacher.sample_rate)
    valid_ds = ClipDataset(valid_m, model.sample_rate, model.clip_seconds, train=False,
                           fit=config.fit, cache=cache)
    train_dl, valid_dl, steps = _loaders(config, train_ds, valid_ds,
                                         _sampler(config, manifest, train_m, len(train_ds)))
    module = PseudoLabelModule(model, teacher, config, labels, steps)
    test = to_vocabulary(test_m, labels) if len(test_m) else test_m
    provenance = {"teacher": str(config.teacher), "teacher_model": tagger.config.get("name"),
                  "crop_seconds": crop}
    return RunSetup(model, labels, module, train_dl, valid_dl, test, provenance, report)


def _psl_student(config: TrainConfig, labels: list[str], teacher_multi: bool, teacher: str):
    multi_label = teacher_multi if config.multi_label is None else config.multi_label
    if teacher_multi and not multi_label:
        raise ModelError(f"{teacher}: a multi-label teacher needs a multi-label student")
    model = _create(config, len(labels), multi_label)
    if not isinstance(model, StreamingAudioViT):
        raise ModelError(f"stage 'psl' trains a streaming SAT student (sat-tiny, sat-small, "
                         f"sat-base); {config.model!r} is not one")
    return model


def _prepare_stored_psl(config: TrainConfig, manifest: Manifest, train_m: Manifest,
                        valid_m: Manifest, test_m: Manifest) -> RunSetup:
    """Stage psl on the teacher scores stored beside the shards (earmark.data.scores)."""
    from earmark.data.scores import INFO, read_info
    from earmark.train.psl import PseudoLabelModule, crop_seconds, to_vocabulary

    if not _streams(train_m):
        raise DataError(config.data, "stored teacher scores lie beside tar shards: train on "
                        "shards:DIR after earmark psl-scores")
    root = Path(train_m.meta["shards"][0]["path"]).parent
    info = read_info(root)
    labels = info["labels"]
    model = _psl_student(config, labels, info["multi_label"], str(root / INFO))
    report = _init(config, model, labels)
    crop = crop_seconds(model)
    if abs(crop - info["crop_seconds"]) > 1e-6:
        raise ModelError(f"{root / INFO}: scores of {info['crop_seconds']} s crops, but "
                         f"{config.model} learns from {crop} s crops (two chunks); write them "
                         f"with --crop-seconds {crop}")
    valid_m = to_vocabulary(valid_m, labels)
    train_ds = _train_clips(config, manifest, train_m, model.sample_rate, crop, False, info)
    valid_ds = ClipDataset(valid_m, model.sample_rate, model.clip_seconds, train=False,
                           fit=config.fit, cache=_use_cache(config, valid_m))
    train_dl, valid_dl, steps = _loaders(config, train_ds, valid_ds)
    module = PseudoLabelModule(model, None, config, labels, steps)
    test = to_vocabulary(test_m, labels) if len(test_m) else test_m
    provenance = {"teacher": info["teacher"], "teacher_model": info.get("teacher_model"),
                  "teacher_scores": str(root / INFO), "crop_seconds": crop}
    return RunSetup(model, labels, module, train_dl, valid_dl, test, provenance, report)


def _prepare_codebook(config: TrainConfig, manifest: Manifest, train_m: Manifest,
                      valid_m: Manifest, test_m: Manifest, resume: bool = False) -> RunSetup:
    from earmark.train.codebook import prepare_stages

    if config.stage != "finetune":
        raise ModelError(f"the codebook model trains in its own stages; --stage {config.stage} "
                         "does not apply to it")
    if config.init:
        raise ModelError("the codebook model does not start from other weights (--init)")
    multi_label = manifest.multi_label if config.multi_label is None else config.multi_label
    model = _create(config, len(manifest.labels), multi_label)
    module, train_dl, valid_dl, provenance = prepare_stages(config, model, manifest, train_m,
                                                            valid_m, resume)
    return RunSetup(model, manifest.labels, module, train_dl, valid_dl, test_m, provenance)


_STAGES = {"mae": _prepare_mae, "finetune": _prepare_finetune, "psl": _prepare_psl}


def prepare_run(config: TrainConfig, resume: bool = False,
                split: tuple[Manifest, Manifest, Manifest] | None = None) -> RunSetup:
    """Build what ``config.stage`` trains, with ``config.init`` loaded, without training.

    ``split``: the (train, valid, test) manifests to use instead of splitting ``config.data``
    (cross validation by group passes them); subsets of one manifest, so they share its
    vocabulary.

    >>> setup = prepare_run(TrainConfig(data="synth:data", stage="psl", model="sat-tiny",
    ...                                 teacher="runs/vit"))  # doctest: +SKIP
    >>> wave, teacher_wave = next(iter(setup.train_loader))  # doctest: +SKIP
    """
    if split is None:
        manifest = from_spec(config.data)
        train_m, valid_m, test_m = split_manifest(manifest, config.fold, config.seed)
    else:
        train_m, valid_m, test_m = split
        manifest = replace(train_m, items=[*train_m.items, *valid_m.items, *test_m.items])
    if config.model == "codebook":  # autoencoders and code books first (earmark.train.codebook)
        setup = _prepare_codebook(config, manifest, train_m, valid_m, test_m, resume)
    else:
        setup = _STAGES[config.stage](config, manifest, train_m, valid_m, test_m)
    # Lightning keeps the train/eval mode each module has when fitting starts, so the model
    # must start in training mode (parts that stay frozen, such as the codebook model's
    # autoencoders, keep themselves in eval)
    setup.model.train()
    return setup


# ---- training --------------------------------------------------------------------------------


def read_train_config(path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a run directory holds (``train_config.json``), checked field
    by field: a :class:`~earmark.errors.ConfigError` names the file, the field and what was
    expected. Fields the file lacks (it predates them) take their defaults."""
    data = check_fields(path, read_json(path), *dataclass_schema(TrainConfig))
    try:
        return TrainConfig.from_dict(data)
    except ValueError as err:  # settings that do not go together; the message names them
        raise ConfigError(path, None, str(err)) from None


def train(config: TrainConfig, resume: bool = False,
          split: tuple[Manifest, Manifest, Manifest] | None = None, overwrite: bool = False,
          typed: set[str] | None = None) -> dict:
    """Train one stage, export ``out/model`` and evaluate it on the test split (not after
    ``mae``); returns the final metrics. ``split``: (train, valid, test) manifests that
    replace the split of ``config.data`` (see :func:`prepare_run`).

    One training per run directory: it is locked while the run lasts, and a directory that
    already holds a run is refused unless ``resume`` continues it or ``overwrite`` clears it
    first (:mod:`earmark.train.rundir`). ``typed``: the settings the user gave by hand; a
    resumed run keeps the saved ones and names those it ignores."""
    from earmark.train.rundir import first_process, prepare_run_dir, run_lock

    out = Path(config.out)
    with run_lock(out):
        if first_process():
            prepare_run_dir(out, resume=resume, overwrite=overwrite)
        return _train(config, resume, split, typed or set())


def _train(config: TrainConfig, resume: bool, split, typed: set[str]) -> dict:
    from earmark.evaluate.run import evaluate_model
    from earmark.train.rundir import RESUME_TAKES, first_process, resume_differences

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        staged = (out / "stages").is_dir()  # the codebook model's stages resume on their own
        if not last.is_file() and not staged:
            raise FileNotFoundError(f"{last}: nothing to resume (no last checkpoint)")
        written = out / TRAIN_CONFIG
        if not written.is_file() and (out / "config.json").is_file():
            written = out / "config.json"  # a run written before the file had its own name
        saved = read_train_config(written)
        ignored = resume_differences(saved, config, typed)
        if ignored and first_process():
            print(f"{out}: --resume continues the run with its saved settings; ignoring "
                  + ", ".join(ignored), file=sys.stderr)
        # the directory may have moved since: it is where the run is now
        config = replace(saved, **{**{k: getattr(config, k) for k in RESUME_TAKES},
                                   "out": str(out)})
    last_epoch = None
    if resume and last.is_file():  # a cut-off checkpoint is named here, not by fit's traceback
        ckpt = load_checkpoint(last, mmap=True)  # the epoch only: tensors stay on disk
        if not isinstance(ckpt, dict) or "epoch" not in ckpt:
            raise ModelError(f"{last}: not a checkpoint of earmark train (no epoch)")
        last_epoch = ckpt["epoch"]
        del ckpt  # weights and optimiser state: fit reads them again
    if first_process():  # the others must not look like a run before the first has
        config.write(out / TRAIN_CONFIG)  # checked the directory (train())
    if not resume:  # a fresh run owns its checkpoints: older ones must not win the average
        for stale in [*ckpt_dir.glob("epoch=*.ckpt"), last]:
            stale.unlink(missing_ok=True)
    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)

    setup = prepare_run(config, resume, split)
    resume = resume and last.is_file()
    model, module = setup.model, setup.module
    dataset = getattr(setup.train_loader, "dataset", None)
    if resume and hasattr(dataset, "set_epoch"):
        # Lightning starts the first loader before any epoch hook runs: a resumed run's first
        # epoch must not draw (crops, stream order) as epoch 0 did
        dataset.set_epoch(last_epoch + 1)
    if setup.init is not None:
        write_json(out / "init.json", setup.init.to_dict())

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
        num_nodes=config.num_nodes, strategy=_strategy(config), precision=config.precision,
        logger=[CSVLogger(out, name="logs", version=""),
                TensorBoardLogger(out / "logs", name="tensorboard", version="")],
        callbacks=callbacks, enable_progress_bar=config.progress, enable_model_summary=False,
        log_every_n_steps=min(50, module.steps_per_epoch), num_sanity_val_steps=0,
        deterministic="warn")
    metrics_csv = out / "logs" / "metrics.csv"
    earlier = _read_csv(metrics_csv) if resume else []
    t0 = time.time()
    # resuming reads last.ckpt as weights and plain values only, as every earmark load does
    trainer.fit(module, setup.train_loader, setup.valid_loader,
                ckpt_path=str(last) if resume else None, weights_only=True)
    train_seconds = time.time() - t0
    if trainer.global_rank != 0:  # launched processes (torchrun, SLURM): rank 0 exports
        return {"stage": config.stage, "rank": trainer.global_rank,
                "train_seconds": round(train_seconds, 1)}
    if earlier:  # the CSV logger starts a new file; keep the epochs before the resume
        _write_csv(metrics_csv, earlier + _read_csv(metrics_csv))

    best = best_checkpoints(ckpt_dir, k)
    if best:
        model.load_state_dict(average_checkpoints(best))
    model.spec_augment = None
    # seed and fold: ``earmark eval --split`` picks the items this run trained and validated on
    provenance = {"source": "earmark train", "stage": config.stage, "data": config.data,
                  "seed": config.seed, **({"fold": config.fold} if config.fold is not None else {}),
                  **({"init": str(config.init)} if config.init else {}), **setup.provenance,
                  "averaged_checkpoints": [p.name for p in best]}
    model_dir = save_model_dir(model.cpu().eval(), out / "model", setup.labels, provenance)
    # read progress from the last checkpoint: with spawned processes the trainer here is idle
    state = load_checkpoint(last)
    result = {"stage": config.stage, "train_seconds": round(train_seconds, 1),
              "epochs": state["epoch"] + 1, "steps": state["global_step"],
              "world_size": trainer.world_size, "averaged": [p.name for p in best],
              "model_dir": str(model_dir)}
    if setup.init is not None:
        result["init"] = setup.init.summary()
    if setup.test is not None and len(setup.test):
        metrics = evaluate_model(model_dir, setup.test, progress=config.progress)
        result["test"] = {k: v for k, v in metrics.items()
                          if k not in ("per_class", "confusion_matrix")}
        write_json(out / "test_metrics.json", metrics)
    write_json(out / "metrics.json", result)
    return result


GROUP_KEYS = ("group",)  # what ``cross_validate(group_by=...)`` can hold out


def cross_validate(config: TrainConfig, group_by: str | None = None,
                   folds: int | None = None, overwrite: bool = False) -> dict:
    """One run per fold under ``out/fold-K``; mean and standard deviation of the test metrics,
    written to ``out/cv_metrics.json`` as ``{"folds": {K: metrics}, "accuracy": {"mean": ..,
    "std": ..}, ...}``.

    ``group_by="group"``: hold out whole groups instead (:attr:`Item.group`: speaker, session,
    ...): one run per group (leave one group out), or ``folds`` runs over folds of whole
    groups balanced by item count (:func:`~earmark.data.manifest.group_folds`, seeded with
    ``config.seed``). Each run trains on every other item, a seeded 10 % of them validating,
    and lives in ``out/<group or fold-K>``; its ``metrics.json`` names what it was tested on
    (``holdout``). The summary adds ``group_by``, ``ungrouped`` (items in no group, which
    train in every run) and, per run, ``groups``, ``items`` and ``dir``.

    >>> cfg = TrainConfig(data="fsdd:fsdd", out="runs/cv")
    >>> s = cross_validate(cfg, group_by="group")  # doctest: +SKIP
    >>> s["accuracy"], s["folds"]["jackson"]["items"]  # doctest: +SKIP
    ({'mean': 0.91, 'std': 0.04}, 500)
    """
    check_cv_options(group_by, folds)
    if group_by is not None:
        return _cross_validate_groups(config, group_by, folds, overwrite)
    manifest = from_spec(config.data)
    fold_ids = manifest.folds
    if len(fold_ids) < 2:
        raise DataError(config.data, "cross validation needs a data set with folds "
                        f"(found {fold_ids or 'none'})")
    per_fold = {}
    for k in fold_ids:
        cfg = replace(config, fold=k, out=str(Path(config.out) / f"fold-{k}"))
        per_fold[k] = train(cfg, overwrite=overwrite).get("test", {})
    summary: dict = {"folds": per_fold, **_mean_and_std(list(per_fold.values()))}
    write_json(Path(config.out) / "cv_metrics.json", summary)
    return summary


def check_cv_options(group_by: str | None, folds: int | None) -> None:
    """ValueError for options of :func:`cross_validate` that do not go together."""
    if group_by is not None and group_by not in GROUP_KEYS:
        raise ValueError(f"--group-by {group_by}: the one key is 'group' (each item's "
                         "speaker, session, device or location, as its data source sets it); "
                         f"cannot group by {group_by!r}")
    if folds is not None and group_by is None:
        raise ValueError("folds (--folds K) are folds of whole groups; give --group-by group "
                         "too (group_by='group'); without it, cv uses the data set's own folds")


def _cross_validate_groups(config: TrainConfig, group_by: str, folds: int | None,
                           overwrite: bool = False) -> dict:
    manifest = from_spec(config.data)
    try:
        runs = group_folds(manifest, folds, config.seed)
    except DataError as err:  # name the SPEC the user typed rather than the set's short name
        raise DataError(config.data, err.reason) from None
    ungrouped = sum(it.group is None for it in manifest.items)
    if ungrouped:
        log.warning("%d items have no group; they train in every run", ungrouped)
    dirs = _folder_names(list(runs))
    per_run, tested = {}, []
    for name, groups in runs.items():
        split = group_split(manifest, groups, config.seed)
        out = Path(config.out) / dirs[name]
        result = train(replace(config, fold=None, out=str(out)), split=split,
                       overwrite=overwrite)
        holdout = {"group_by": group_by, "groups": list(groups), "items": len(split[2])}
        write_json(out / "metrics.json", {**result, "holdout": holdout})
        tested.append(result.get("test", {}))
        per_run[name] = {"groups": list(groups), "items": len(split[2]), "dir": dirs[name],
                         **tested[-1]}
    summary: dict = {"group_by": group_by, "ungrouped": ungrouped, "folds": per_run,
                     **_mean_and_std(tested)}
    write_json(Path(config.out) / "cv_metrics.json", summary)
    return summary


def _mean_and_std(runs: list[dict]) -> dict:
    """``{metric: {"mean": .., "std": ..}}`` over the numeric metrics of the runs."""
    keys = {key for m in runs for key, v in m.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out = {}
    for key in sorted(keys):
        vals = [m[key] for m in runs if isinstance(m.get(key), (int, float))]
        if vals:
            out[key] = {"mean": statistics.fmean(vals),
                        "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    return out


def _folder_names(names: list[str]) -> dict[str, str]:
    """A distinct folder name per run name: characters other than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``, and names that still clash, ignoring case (as macOS and
    Windows do), get ``-2``, ``-3``, ..."""
    taken = {"cv_metrics.json"}  # the summary beside the run folders
    out = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:80] or "group"
        folder, n = base, 1
        while folder.lower() in taken:
            n += 1
            folder = f"{base}-{n}"
        taken.add(folder.lower())
        out[name] = folder
    return out
