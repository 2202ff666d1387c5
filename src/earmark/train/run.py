"""``earmark train`` and ``earmark cv`` (by fold or by group): run directories with
checkpoints, logs and a model.

A run directory holds ``train_config.json`` (the resolved TrainConfig; ``model/`` has the
model's own ``config.json``), ``checkpoints/``
(Lightning checkpoints: ``last.ckpt`` and the best epochs), ``logs/metrics.csv`` and
``logs/tensorboard/``, ``metrics.json`` (final test metrics), ``init.json`` (with ``init``:
which weights were loaded) and ``model/`` (the exported model directory, the average of the
best ``top_k_average`` checkpoints).

Every stage of paper 003 (``TrainConfig.stage``) writes the same kind of run directory, and
the next stage starts from it with ``init`` (here tiny models, one epoch each, on a small
synthetic set):

    >>> import tempfile
    >>> from earmark.data.synth import synthesize
    >>> root = tempfile.mkdtemp()
    >>> data = synthesize(f"{root}/data", clips_per_class=2, clip_seconds=1.0, soundscapes=0)
    >>> tiny = dict(depth=1, embed_dim=48, num_heads=3)
    >>> each = dict(data=f"synth:{data}", clip_seconds=1.0, epochs=1, batch_size=8,
    ...             progress=False)
    >>> mae = train(TrainConfig(**each, stage="mae", model_args=tiny, decoder_dim=48,
    ...                         decoder_depth=1, decoder_heads=3, out=f"{root}/mae"))
    >>> vit = train(TrainConfig(**each, model_args=tiny, init=f"{root}/mae",
    ...                         out=f"{root}/vit"))
    >>> sat = train(TrainConfig(**each, stage="psl", model="sat-tiny",
    ...                         model_args={**tiny, "chunk_seconds": 1.0},
    ...                         init=f"{root}/vit", teacher=f"{root}/vit", out=f"{root}/sat"))
    >>> [r["stage"] for r in (mae, vit, sat)], "test" in mae, sorted(sat["test"])[:2]
    (['mae', 'finetune', 'psl'], False, ['accuracy', 'd_prime'])
"""

from __future__ import annotations

import csv
import logging
import os
import re
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from earmark.data.manifest import Manifest, group_folds
from earmark.data.sources import from_spec
from earmark.data.splits import group_split
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
from earmark.models.directory import load_checkpoint, save_model_dir
from earmark.train.config import TrainConfig
from earmark.train.stages import RunSetup, prepare_run, saved_own_stages

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


class EpochLines(L.Callback):
    """One line per epoch on stderr, for runs without progress bars (logs, CI): the epoch,
    the metrics the progress bar would show, and the epoch's wall time (validation
    included). Only the first process of a multi-process run prints.

    ``epoch 3/30  train/loss 0.4123  val/loss 0.3870  val/accuracy 0.8750  12.3 s``
    """

    def __init__(self):
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # validation has run by now: the bar's metrics hold this epoch's values
        if not trainer.is_global_zero:
            return
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        shown = {name.removesuffix("_epoch"): value
                 for name, value in trainer.progress_bar_metrics.items()
                 if not name.endswith("_step")}  # the last batch's: the epoch's mean is there
        for name in sorted(shown, key=lambda name: not name.startswith("train")):
            parts.append(f"{name} {float(shown[name]):.4f}")
        parts.append(f"{time.monotonic() - self._start:.1f} s")
        print("  ".join(parts), file=sys.stderr, flush=True)


def _quiet_lightning() -> None:
    """Keep Lightning's banners, tips and third-party deprecation notes out of the output."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    for pattern in (r".*LeafSpec.*", r".*weights_only.*", r".*exists and is not empty.*",
                    r".*does not have many workers.*", r".*module\(s\) in eval mode.*",
                    # earmark's shard stream deals its clips to the workers itself
                    r".*`IterableDataset` has `__len__` defined.*"):
        warnings.filterwarnings("ignore", message=pattern)


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
    replace the split of ``config.data`` (see :func:`~earmark.train.stages.prepare_run`).

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
    """The run, step by step: where it starts (:func:`_resume`), what it trains
    (:func:`~earmark.train.stages.prepare_run`), the training (:func:`_fit`) and what it
    leaves (:func:`_finish`)."""
    config, resumed = _resume(config, resume, typed)
    _quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    setup = prepare_run(config, resume, split)
    if setup.init is not None:
        write_json(Path(config.out) / "init.json", setup.init.to_dict())
    trainer, seconds = _fit(config, setup, resumed)
    if trainer.global_rank != 0:  # launched processes (torchrun, SLURM): rank 0 exports
        return {"stage": config.stage, "rank": trainer.global_rank,
                "train_seconds": round(seconds, 1)}
    return _finish(config, setup, resumed, trainer.world_size, seconds)


@dataclass
class Resumed:
    """What a resumed run continues from: the epoch of ``checkpoints/last.ckpt`` and the
    rows of ``logs/metrics.csv`` written before (Lightning's CSV logger starts a new file)."""

    epoch: int
    log_rows: list[dict]


def _resume(config: TrainConfig, resume: bool, typed: set[str]
            ) -> tuple[TrainConfig, Resumed | None]:
    """Where the run starts. Resumed: the saved settings (``typed`` ones that differ are
    named and ignored; :data:`~earmark.train.rundir.RESUME_TAKES` come from ``config``), and
    the last checkpoint's epoch and logs, checked here so that a cut-off checkpoint is named
    rather than failing deep inside Lightning; a run with stages of its own
    (:func:`~earmark.train.stages.saved_own_stages`) may resume before its first checkpoint. Fresh: checkpoints left in the directory are
    removed, so that they cannot win the average. Writes the run's ``train_config.json``."""
    from earmark.train.rundir import RESUME_TAKES, first_process, resume_differences

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume:
        if not last.is_file() and not saved_own_stages(out):
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
    resumed = None
    if resume and last.is_file():
        ckpt = load_checkpoint(last, mmap=True)  # the epoch only: tensors stay on disk
        if not isinstance(ckpt, dict) or "epoch" not in ckpt:
            raise ModelError(f"{last}: not a checkpoint of earmark train (no epoch)")
        resumed = Resumed(ckpt["epoch"], _read_csv(out / "logs" / "metrics.csv"))
        del ckpt  # weights and optimiser state: fit reads them again
    if first_process():  # the others must not look like a run before the first has
        config.write(out / TRAIN_CONFIG)  # checked the directory (train())
    if not resume:
        for stale in [*ckpt_dir.glob("epoch=*.ckpt"), last]:
            stale.unlink(missing_ok=True)
    return config, resumed


def _trainer(config: TrainConfig, steps_per_epoch: int) -> L.Trainer:
    """The Lightning trainer of a run: the best ``top_k_average`` checkpoints and
    ``last.ckpt``, CSV and TensorBoard logs, early stopping and a time limit where asked
    for, and progress bars or (without them) :class:`EpochLines`."""
    out = Path(config.out)
    ckpt_dir = out / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, filename="epoch={epoch:03d}-score={val_score:.4f}",
                                 auto_insert_metric_name=False, monitor="val_score", mode="max",
                                 save_top_k=max(1, config.top_k_average)),
                 LastCheckpoint(ckpt_dir / "last.ckpt")]
    if config.early_stopping:
        callbacks.append(EarlyStopping("val_score", patience=config.early_stopping, mode="max"))
    if config.max_minutes:
        callbacks.append(Timer(duration={"minutes": config.max_minutes}, interval="epoch"))
    callbacks.append(TQDMProgressBar(refresh_rate=10) if config.progress else EpochLines())
    return L.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        num_nodes=config.num_nodes, strategy=_strategy(config), precision=config.precision,
        logger=[CSVLogger(out, name="logs", version=""),
                TensorBoardLogger(out / "logs", name="tensorboard", version="")],
        callbacks=callbacks, enable_progress_bar=config.progress, enable_model_summary=False,
        log_every_n_steps=min(50, steps_per_epoch), num_sanity_val_steps=0,
        deterministic="warn")


def _fit(config: TrainConfig, setup: RunSetup, resumed: Resumed | None
         ) -> tuple[L.Trainer, float]:
    """Build the trainer and train, from ``last.ckpt`` when resumed; returns the trainer and
    the seconds training took."""
    dataset = getattr(setup.train_loader, "dataset", None)
    if resumed is not None and hasattr(dataset, "set_epoch"):
        # Lightning starts the first loader before any epoch hook runs: a resumed run's first
        # epoch must not draw (crops, stream order) as epoch 0 did
        dataset.set_epoch(resumed.epoch + 1)
    trainer = _trainer(config, setup.module.steps_per_epoch)
    last = Path(config.out) / "checkpoints" / "last.ckpt"
    t0 = time.time()
    # resuming reads last.ckpt as weights and plain values only, as every earmark load does
    trainer.fit(setup.module, setup.train_loader, setup.valid_loader,
                ckpt_path=str(last) if resumed is not None else None, weights_only=True)
    return trainer, time.time() - t0


def _finish(config: TrainConfig, setup: RunSetup, resumed: Resumed | None, world_size: int,
            train_seconds: float) -> dict:
    """What a run leaves (first process only): the logs of a resumed run in one file, the
    exported model (the average of the best checkpoints), its test metrics and
    ``metrics.json``; returns those metrics."""
    from earmark.evaluate.run import evaluate_model

    out = Path(config.out)
    metrics_csv = out / "logs" / "metrics.csv"
    if resumed is not None and resumed.log_rows:  # keep the epochs before the resume
        _write_csv(metrics_csv, resumed.log_rows + _read_csv(metrics_csv))
    model_dir, best = _export(config, setup)
    # read progress from the last checkpoint: with spawned processes the trainer here is idle
    state = load_checkpoint(out / "checkpoints" / "last.ckpt")
    result = {"stage": config.stage, "train_seconds": round(train_seconds, 1),
              "epochs": state["epoch"] + 1, "steps": state["global_step"],
              "world_size": world_size, "averaged": [p.name for p in best],
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


def _export(config: TrainConfig, setup: RunSetup) -> tuple[Path, list[Path]]:
    """``out/model``: the average of the best ``top_k_average`` checkpoints (the trained
    weights where there are none), with its provenance; returns it and the checkpoints."""
    out = Path(config.out)
    model = setup.model
    best = best_checkpoints(out / "checkpoints", max(1, config.top_k_average))
    if best:
        model.load_state_dict(average_checkpoints(best))
    model.spec_augment = None
    # seed and fold: ``earmark eval --split`` picks the items this run trained and validated on
    provenance = {"source": "earmark train", "stage": config.stage, "data": config.data,
                  "seed": config.seed, **({"fold": config.fold} if config.fold is not None else {}),
                  **({"init": str(config.init)} if config.init else {}), **setup.provenance,
                  "averaged_checkpoints": [p.name for p in best]}
    return save_model_dir(model.cpu().eval(), out / "model", setup.labels, provenance), best


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

    On FSDD, ``cross_validate(cfg, group_by="group")`` tests each speaker on a model that
    never heard them. The synthetic set has two folds:

    >>> import tempfile
    >>> from earmark.data.synth import synthesize
    >>> data = synthesize(tempfile.mkdtemp(), clips_per_class=2, clip_seconds=0.5,
    ...                   soundscapes=0)
    >>> cfg = TrainConfig(data=f"synth:{data}", out=tempfile.mkdtemp(), epochs=1,
    ...                   clip_seconds=0.5, progress=False,
    ...                   model_args=dict(depth=1, embed_dim=32, num_heads=2))
    >>> s = cross_validate(cfg)
    >>> sorted(s["folds"]), sorted(s["accuracy"])
    ([1, 2], ['mean', 'std'])
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
