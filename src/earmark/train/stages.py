"""What a run trains on: the model, its labels, the Lightning module and the data loaders.

Each stage of paper 003 (``TrainConfig.stage``: ``mae``, ``finetune``, ``psl``) is a
:class:`Stage`: the pieces in which it differs (labels, which models it takes, clip lengths,
the training set, the Lightning module); :func:`prepare` puts the pieces together the same
way for all of them. A model family that trains its own way names its procedure in
:data:`FAMILY_TRAINING` (the codebook model: autoencoders, k-means code books and
histograms before its head, :mod:`earmark.train.codebook`); every other family takes the
stages.

    >>> import tempfile
    >>> from earmark.data.synth import synthesize
    >>> from earmark.train.config import TrainConfig
    >>> data = synthesize(tempfile.mkdtemp(), clips_per_class=2, clip_seconds=0.5,
    ...                   soundscapes=0)
    >>> setup = prepare_run(TrainConfig(data=f"synth:{data}", out=tempfile.mkdtemp(),
    ...                                 clip_seconds=0.5, batch_size=4, model_args=dict(
    ...                                     depth=1, embed_dim=32, num_heads=2)))
    >>> wave, target = next(iter(setup.train_loader))
    >>> wave.shape, target.shape[0], len(setup.labels) == target.shape[1]
    (torch.Size([4, 8000]), 4, True)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from earmark.data.dataset import ClipDataset
from earmark.data.labels import targets as manifest_targets
from earmark.data.manifest import Manifest
from earmark.data.sampler import BalancedSampler, GroupShareSampler, ShareSampler
from earmark.data.sources import from_spec
from earmark.data.splits import split_manifest
from earmark.data.stream import ShardStream
from earmark.errors import DataError, ModelError
from earmark.models.registry import create_model
from earmark.models.sat import StreamingAudioViT
from earmark.models.vit import AudioViT
from earmark.train.adversarial import check_family
from earmark.train.config import TrainConfig, option_flag
from earmark.train.module import TaggingModule
from earmark.train.weights import (
    InitReport,
    InitWeights,
    check_front_end,
    init_weights,
    model_spec,
)

log = logging.getLogger("earmark.train")


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


@dataclass
class Splits:
    """The data set and its (train, valid, test) parts. ``synthetic``: how many items at the
    end of ``train`` come from ``TrainConfig.synthetic`` (they are in no other part)."""

    manifest: Manifest
    train: Manifest
    valid: Manifest
    test: Manifest
    synthetic: int = 0

    @property
    def is_synthetic(self) -> list[bool]:
        """Per training item: whether it is one of the synthetic items."""
        real = len(self.train) - self.synthetic
        return [i >= real for i in range(len(self.train))]


# ---- data ------------------------------------------------------------------------------------


def _world_size(config: TrainConfig) -> int:
    return config.devices * config.num_nodes


def _streams(manifest: Manifest) -> bool:
    """Whether training reads ``manifest`` as a stream of shards (a ``shards:`` data set)."""
    return bool(manifest.meta.get("shards"))


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


def with_synthetic(config: TrainConfig, data: Splits) -> Splits:
    """``data`` with every item of ``config.synthetic`` added to the training split (as
    training items, with their groups; validation and test stay real). Their labels must be
    in the real data's vocabulary: a :class:`DataError` names the SPEC and the others."""
    if not config.synthetic:
        return data
    extra = from_spec(config.synthetic)
    if _streams(extra) or _streams(data.train):
        raise DataError(config.synthetic, "synthetic items are drawn by index beside the real "
                        "ones; neither may be a shards: data set")
    known = set(data.manifest.labels)
    unknown = sorted({label for it in extra.items for label in it.labels} - known)
    if unknown:
        raise DataError(config.synthetic, f"labels not in the vocabulary of {config.data}: "
                        f"{', '.join(map(repr, unknown[:10]))}"
                        + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""))
    if not data.manifest.multi_label and extra.multi_label:
        raise DataError(config.synthetic, f"items with several labels, but {config.data} is "
                        "single-label")
    items = [replace(it, split="train", fold=None) for it in extra.items]
    train = replace(data.train, items=[*data.train.items, *items])
    return replace(data, train=train, synthetic=data.synthetic + len(items))


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
    drawn = len(train_ds) if sampler is None else len(sampler)  # items per epoch
    train_dl = torch.utils.data.DataLoader(train_ds, shuffle=sampler is None, sampler=sampler,
                                           drop_last=drawn > config.batch_size,
                                           **loader_args)
    return train_dl, valid_dl, max(1, len(train_dl) // world_size)


def _balanced(config: TrainConfig, manifest: Manifest) -> bool:
    """Whether training draws label-balanced: ``--balanced``, by default for multi-label data."""
    return manifest.multi_label if config.balanced is None else config.balanced


def training_groups(config: TrainConfig, data: Splits) -> tuple[list[int], list[str]]:
    """Per training item the number of its group (-1: none), and the groups: speakers of
    the real items and voices of the synthetic ones, kept apart where names coincide. A
    :class:`DataError` where fewer than two groups train (nothing to tell apart).

    >>> from earmark.data.manifest import Item
    >>> m = Manifest([Item("a.wav", ("1",), group="ann"), Item("b.wav", ("1",)),
    ...               Item("v.wav", ("1",), group="ann")], ["1"])
    >>> training_groups(TrainConfig(data="x", out="r"), Splits(m, m, m, m, synthetic=1))
    ([0, -1, 1], ['ann', 'ann (synthetic)'])
    """
    keys: dict[tuple[bool, str], int] = {}
    numbers = []
    for it, synthetic in zip(data.train.items, data.is_synthetic):
        if it.group is None:
            numbers.append(-1)
            continue
        numbers.append(keys.setdefault((synthetic, it.group), len(keys)))
    if len(keys) < 2:
        raise DataError(config.data, "group-adversarial training needs training items of at "
                        f"least two groups (speakers, voices); they have {len(keys)}")
    names = [f"{g} (synthetic)" if synthetic else g for synthetic, g in keys]
    return numbers, names


def _train_clips(config: TrainConfig, data: Splits, sample_rate: int, clip_seconds: float,
                 cache: bool, balanced: bool, teacher_scores: dict | None = None):
    """The training data set: a stream of shards for a ``shards:`` data set (with stored
    teacher scores, crops and their scores; label-balanced where ``balanced`` and the data
    ask for it), else clips read by index (then sampled by :func:`_sampler`), with their
    group numbers for group-adversarial training."""
    if _streams(data.train):
        return ShardStream(data.train, sample_rate, clip_seconds, batch_size=config.batch_size,
                           fit=config.fit, seed=config.seed, buffer=config.shuffle_buffer,
                           balanced=balanced and _balanced(config, data.manifest),
                           teacher_scores=teacher_scores)
    groups = training_groups(config, data)[0] if config.group_adversarial else None
    return ClipDataset(data.train, sample_rate, clip_seconds, train=True, fit=config.fit,
                       seed=config.seed, cache=cache, groups=groups)


def _sampler(config: TrainConfig, data: Splits, train_ds, balanced: bool = True):
    """How training items are drawn: with ``synthetic_share``, a :class:`GroupShareSampler`
    (that share of synthetic items, groups equal within each part, label-balanced within
    each group where balanced); else label-balanced where balanced, else shuffled."""
    balanced = balanced and _balanced(config, data.manifest)
    if config.synthetic_share is not None:
        return GroupShareSampler(data.train, data.is_synthetic, config.synthetic_share,
                                 balanced=balanced, seed=config.seed)
    return (BalancedSampler(manifest_targets(data.train), num_samples=len(train_ds),
                            seed=config.seed)
            if balanced and not _streams(data.train) else None)


# ---- the model -------------------------------------------------------------------------------


def _create(config: TrainConfig, num_classes: int, multi_label: bool,
            init: InitWeights | None = None) -> nn.Module:
    """The model to train: ``config.model`` (or, with ``init``, the checkpoint's
    architecture, front end and sample rate: :func:`~earmark.train.weights.model_spec`)."""
    extra = config.regularisers()
    name, args = model_spec(config.model, config.model_args,
                            None if init is None else init.config)
    clip = {"clip_seconds": config.clip_seconds} if config.clip_seconds else {}
    try:
        model = create_model(name, num_classes, **{**args, "multi_label": multi_label,
                                                   "fit": config.fit, **clip, **extra})
    except TypeError as err:
        if not extra:
            raise
        raise ModelError(f"model {name!r} does not take {', '.join(extra)} ({err})"
                         ) from None
    if init is not None:
        check_front_end(model, init)
    return model


def _init(config: TrainConfig, model: nn.Module, labels: list[str],
          init: InitWeights | None) -> InitReport | None:
    if init is None:
        return None
    report = init_weights(model, init, labels)
    log.info("init: %s", report.summary())
    return report


# ---- the stages ------------------------------------------------------------------------------


class Stage:
    """What one stage trains on, in the pieces that differ between stages; these defaults
    are ``finetune``'s: supervised training of any model on the data's labels, whole clips,
    label-balanced sampling where asked for. One instance per run (a stage may keep what an
    earlier piece found, such as the teacher)."""

    # whether the training set may be drawn label-balanced (pretraining has no labels to
    # balance; stored teacher scores are soft labels of every clip)
    balanced = True

    def head(self, config: TrainConfig, data: Splits) -> tuple[list[str], bool]:
        """The labels the model learns, and whether they are multi-label."""
        multi = data.manifest.multi_label if config.multi_label is None else config.multi_label
        return data.manifest.labels, multi

    def check(self, config: TrainConfig, model: nn.Module) -> None:
        """Raise :class:`ModelError` for a model this stage cannot train."""

    def clip_seconds(self, config: TrainConfig, model: nn.Module) -> tuple[float, float]:
        """The length of training and of validation clips."""
        return model.clip_seconds, model.clip_seconds

    def vocabulary(self, manifest: Manifest, labels: list[str]) -> Manifest:
        """``manifest`` as the model's ``labels`` score it (validation and test)."""
        return manifest

    def train_set(self, config: TrainConfig, data: Splits, model: nn.Module, seconds: float,
                  cache: bool):
        return _train_clips(config, data, model.sample_rate, seconds, cache, self.balanced)

    def module(self, config: TrainConfig, model: nn.Module, labels: list[str],
               steps: int, groups: list[str] | None = None) -> TaggingModule:
        return TaggingModule(model, config, labels, steps, groups)

    def test(self, manifest: Manifest, labels: list[str]) -> Manifest | None:
        """What the exported model is tested on after training (None: nothing)."""
        return self.vocabulary(manifest, labels) if len(manifest) else manifest

    def provenance(self, config: TrainConfig, module: TaggingModule, seconds: float) -> dict:
        """What the model directory records about this stage."""
        return {}


class MAEStage(Stage):
    """Masked-autoencoder pretraining of a ViT or SAT encoder (no labels; no test)."""

    balanced = False

    def head(self, config, data):
        from earmark.train.mae import PLACEHOLDER_LABEL

        return [PLACEHOLDER_LABEL], True

    def check(self, config, model):
        if not isinstance(model, AudioViT):
            raise ModelError(f"stage 'mae' pretrains an audio ViT or SAT encoder; "
                             f"{model.registry_name!r} is not one")

    def clip_seconds(self, config, model):
        from earmark.train.mae import max_seconds

        clip = config.clip_seconds or min(model.clip_seconds, max_seconds(model))
        frames = model.frontend(torch.zeros(1, round(clip * model.sample_rate))).shape[-1]
        grid_t = model.patch_embed.grid(model.frontend.config.n_mels, frames)[1]
        if grid_t > model.time_pos_embed.shape[-1]:
            raise ModelError(f"{clip} s clips are longer than the {model.registry_name} encoder's "
                             f"position embeddings; give --clip-seconds "
                             f"{max_seconds(model):.2f} or less")
        return clip, clip

    def module(self, config, model, labels, steps):
        from earmark.train.mae import MAEModule

        return MAEModule(model, config, steps)

    def test(self, manifest, labels):
        return None

    def provenance(self, config, module, seconds):
        d = module.decoder
        return {"mask_ratio": config.mask_ratio, "clip_seconds_trained": seconds,
                "decoder": {"dim": d.input_proj.out_features, "depth": len(d.blocks),
                            "heads": d.blocks[0].attn.num_heads if len(d.blocks) else 0},
                "note": "MAE-pretrained encoder; its one-output head is a placeholder"}


class PseudoLabelStage(Stage):
    """A streaming SAT student learns a teacher model's scores on crops of two chunks
    (:mod:`earmark.train.psl`); the teacher's labels are the student's."""

    def head(self, config, data):
        from earmark.infer.tagger import load

        tagger = load(config.teacher)
        self.teacher, self.teacher_name = tagger.model, tagger.config.get("name")
        return tagger.labels, _student_multi_label(config, self.teacher.multi_label,
                                                   config.teacher)

    def check(self, config, model):
        if not isinstance(model, StreamingAudioViT):
            raise ModelError(f"stage 'psl' trains a streaming SAT student (sat-tiny, "
                             f"sat-small, sat-base); {model.registry_name!r} is not one")

    def clip_seconds(self, config, model):
        from earmark.train.psl import crop_seconds

        return crop_seconds(model), model.clip_seconds

    def vocabulary(self, manifest, labels):
        from earmark.train.psl import to_vocabulary

        return to_vocabulary(manifest, labels)

    def train_set(self, config, data, model, seconds, cache):
        from earmark.train.psl import TeacherCrops

        crops = ClipDataset(data.train, model.sample_rate, seconds, train=True, fit=config.fit,
                            seed=config.seed, cache=cache)
        return TeacherCrops(crops, self.teacher.sample_rate)

    def module(self, config, model, labels, steps):
        from earmark.train.psl import PseudoLabelModule

        return PseudoLabelModule(model, self.teacher, config, labels, steps)

    def provenance(self, config, module, seconds):
        return {"teacher": str(config.teacher), "teacher_model": self.teacher_name,
                "crop_seconds": seconds}


class StoredScoresStage(PseudoLabelStage):
    """Stage psl on the teacher scores stored beside the shards (:mod:`earmark.data.scores`)
    instead of a teacher run on the fly."""

    balanced = False

    def head(self, config, data):
        from earmark.data.scores import INFO, read_info

        if not _streams(data.train):
            raise DataError(config.data, "stored teacher scores lie beside tar shards: train "
                            "on shards:DIR after earmark psl-scores")
        self.root = Path(data.train.meta["shards"][0]["path"]).parent
        self.info = read_info(self.root)
        return self.info["labels"], _student_multi_label(config, self.info["multi_label"],
                                                         str(self.root / INFO))

    def clip_seconds(self, config, model):
        from earmark.data.scores import INFO

        crop, valid = super().clip_seconds(config, model)
        if abs(crop - self.info["crop_seconds"]) > 1e-6:
            raise ModelError(f"{self.root / INFO}: scores of {self.info['crop_seconds']} s "
                             f"crops, but {model.registry_name} learns from {crop} s crops (two "
                             f"chunks); write them with --crop-seconds {crop}")
        return crop, valid

    def train_set(self, config, data, model, seconds, cache):
        return _train_clips(config, data, model.sample_rate, seconds, cache, self.balanced,
                            self.info)

    def module(self, config, model, labels, steps):
        from earmark.train.psl import PseudoLabelModule

        return PseudoLabelModule(model, None, config, labels, steps)

    def provenance(self, config, module, seconds):
        from earmark.data.scores import INFO

        return {"teacher": self.info["teacher"], "teacher_model": self.info.get("teacher_model"),
                "teacher_scores": str(self.root / INFO), "crop_seconds": seconds}


def _student_multi_label(config: TrainConfig, teacher_multi: bool, teacher: str) -> bool:
    multi_label = teacher_multi if config.multi_label is None else config.multi_label
    if teacher_multi and not multi_label:
        raise ModelError(f"{teacher}: a multi-label teacher needs a multi-label student")
    return multi_label


def stage_for(config: TrainConfig) -> Stage:
    """The :class:`Stage` that ``config.stage`` names (psl: on stored scores where asked)."""
    if config.stage == "psl":
        return StoredScoresStage() if config.teacher_scores else PseudoLabelStage()
    return {"mae": MAEStage, "finetune": Stage}[config.stage]()


def prepare(config: TrainConfig, data: Splits, stage: Stage, resume: bool = False) -> RunSetup:
    """The one preparation every stage shares, with ``stage``'s pieces: the model for its
    labels, ``config.init`` loaded, the training and validation sets and their loaders, the
    Lightning module. A family in :data:`FAMILY_TRAINING` takes over once its model exists.
    """
    labels, multi_label = stage.head(config, data)
    init = InitWeights.read(config.init) if config.init else None
    model = _create(config, len(labels), multi_label, init)
    own = FAMILY_TRAINING.get(model.family)
    if own is not None:
        return own(config, data, model, labels, resume)
    stage.check(config, model)
    report = _init(config, model, labels, init)
    del init  # the weights are in the model now
    train_seconds, valid_seconds = stage.clip_seconds(config, model)
    valid = stage.vocabulary(data.valid, labels)
    cache = _use_cache(config, data.train, valid)
    train_ds = stage.train_set(config, data, model, train_seconds, cache)
    valid_ds = ClipDataset(valid, model.sample_rate, valid_seconds, train=False, fit=config.fit,
                           cache=cache)
    sampler = _sampler(config, data, train_ds, stage.balanced)
    train_dl, valid_dl, steps = _loaders(config, train_ds, valid_ds, sampler)
    # the group head of group-adversarial training (stage finetune only: TrainConfig checks)
    groups = {"groups": training_groups(config, data)[1]} if config.group_adversarial else {}
    module = stage.module(config, model, labels, steps, **groups)
    return RunSetup(model, labels, module, train_dl, valid_dl, stage.test(data.test, labels),
                    stage.provenance(config, module, train_seconds), report)


# ---- families that train their own way -------------------------------------------------------


def _codebook_stages(config: TrainConfig, data: Splits, model: nn.Module, labels: list[str],
                     resume: bool) -> RunSetup:
    """The codebook model's stages (:mod:`earmark.train.codebook`): its autoencoders, code
    books and histograms are made (or, resumed, reused) here; Lightning then trains its
    head."""
    from earmark.train.codebook import prepare_stages

    if config.stage != "finetune":
        raise ModelError(f"the codebook model trains in its own stages; --stage {config.stage} "
                         "does not apply to it")
    if config.init:
        raise ModelError("the codebook model does not start from other weights (--init); "
                         "--stages-from RUN reuses another codebook run's autoencoders and code "
                         "books")
    if config.group_adversarial:
        check_family(model)
    if config.synthetic_share is not None:
        raise ModelError("the codebook model draws its training clips its own way; "
                         f"{option_flag('synthetic_share')} does not apply to it")
    module, train_dl, valid_dl, provenance = prepare_stages(config, model, data.manifest,
                                                            data.train, data.valid, resume)
    return RunSetup(model, labels, module, train_dl, valid_dl, data.test, provenance)


# ``model.family`` -> how that family trains, where it is not by the stages above:
# procedure(config, data, model, labels, resume) -> RunSetup, given the model that the stage's
# labels built
FAMILY_TRAINING: dict[str, Callable[..., RunSetup]] = {
    "codebook": _codebook_stages,
}


def saved_own_stages(out: Path) -> bool:
    """Whether the run directory ``out`` holds stages that a family in
    :data:`FAMILY_TRAINING` saved (the codebook's, before its head's first checkpoint): such
    a run can be resumed without a checkpoint."""
    from earmark.train.codebook import STAGES_DIR

    return (Path(out) / STAGES_DIR).is_dir()


def prepare_run(config: TrainConfig, resume: bool = False,
                split: tuple[Manifest, Manifest, Manifest] | None = None) -> RunSetup:
    """Build what ``config.stage`` trains, with ``config.init`` loaded, without training.

    ``split``: the (train, valid, test) manifests to use instead of splitting ``config.data``
    (cross validation by group passes them); subsets of one manifest, so they share its
    vocabulary. ``config.synthetic``: its items join the training split, and no other
    (:func:`with_synthetic`). ``resume``: a family that trains in stages of its own reuses
    those it finished."""
    if split is None:
        manifest = from_spec(config.data)
        data = Splits(manifest, *split_manifest(manifest, config.fold, config.seed))
    else:
        train_m, valid_m, test_m = split
        manifest = replace(train_m, items=[*train_m.items, *valid_m.items, *test_m.items])
        data = Splits(manifest, train_m, valid_m, test_m)
    setup = prepare(config, with_synthetic(config, data), stage_for(config), resume)
    # Lightning keeps the train/eval mode each module has when fitting starts, so the model
    # must start in training mode (parts that stay frozen, such as the codebook model's
    # autoencoders and the batch norms of a frozen backbone, keep themselves in eval)
    setup.module.train()
    return setup
