"""Training the codebook tagger of paper 001: autoencoders, code books, then the head.

``earmark train --model codebook`` runs the stages in order, each writing its result under
``OUT/stages/`` before the next starts:

    autoencoder  the four families' MLP autoencoders (MSE), fitted on the slices of up to
                 ``codebook_chunks`` 1 s chunks of the training split; also the log-mel mean
                 and standard deviation that standardise the slices
    codebook     mini-batch k-means (scikit-learn) with ``codebook_size`` centroids per
                 family on the bottlenecks of those slices
    features     the code-count histograms of every 1 s chunk of the training and
                 validation splits (each chunk carries its clip's labels, section 2);
                 ``feature_views`` > 1 adds shifted copies of each training clip (with
                 ``gain_db`` and the acoustic augmentations: speed, noise, rooms,
                 microphones), the head's augmentation
    head         the MLP head on those histograms, with count masking: a Lightning run with
                 checkpoints, logs and the best-epoch average, as for every earmark model

``--resume`` keeps every stage whose file is there and was made with the same settings
(recorded next to it), and continues the head from ``checkpoints/last.ckpt``.
``--stages-from RUN`` starts from another run's stages where their settings match (a grid
over code-book sizes fits the autoencoders once; over the head, the code books too). The exported
``OUT/model`` holds the whole chain; its forward pass goes from waveform to clip scores.

On a small synthetic set, with a tiny code book and few updates (the paper's sizes are
``codebook_size`` 256 or more and thousands of autoencoder updates):

    >>> import tempfile
    >>> from earmark.data.synth import synthesize
    >>> from earmark.train.config import TrainConfig
    >>> from earmark.train.run import train
    >>> root = tempfile.mkdtemp()
    >>> data = synthesize(f"{root}/data", clips_per_class=3, clip_seconds=1.0, soundscapes=0)
    >>> result = train(TrainConfig(data=f"synth:{data}", model="codebook", out=f"{root}/cb",
    ...                            model_args={"codebook_size": 4, "compression": 10,
    ...                                        "ae_hidden": 48, "hidden": 48},
    ...                            epochs=1, ae_steps=20, ae_batch=64, kmeans_batch=256,
    ...                            kmeans_epochs=1, progress=False))
    >>> sorted(p.name for p in Path(root, "cb", "stages").glob("*.safetensors"))
    ['autoencoder.safetensors', 'codebook.safetensors', 'features-train.safetensors', 'features-valid.safetensors']
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from earmark.audio.augment import AcousticAugment
from earmark.data.labels import targets as manifest_targets
from earmark.data.manifest import Manifest
from earmark.errors import AudioError, DataError, ModelError
from earmark.files import atomic_path, write_json
from earmark.models.codebook import FAMILIES, CodebookTagger, item_chunks
from earmark.train.config import ACOUSTIC_FIELDS, TrainConfig
from earmark.train.module import TaggingModule

log = logging.getLogger("earmark.train")

STAGES_DIR = "stages"
# the settings each stage depends on (with everything its predecessors depend on), so a
# stage can be reused by runs that differ only later in the chain (a grid over the head)
_AE_KEYS = ("data", "fold", "seed", "clip_seconds", "fit", "codebook_chunks", "ae_steps",
            "ae_batch", "ae_lr")
_AE_ARGS = ("compression", "ae_hidden", "ae_layers", "ae_dropout", "frontend", "tail_frames")
_CODEBOOK_KEYS = _AE_KEYS + ("kmeans_batch", "kmeans_epochs")
_CODEBOOK_ARGS = _AE_ARGS + ("codebook_size",)
_FEATURE_KEYS = _CODEBOOK_KEYS + ("feature_views", "gain_db", *ACOUSTIC_FIELDS)


def _device(config: TrainConfig) -> torch.device:
    if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


# ---- 1 s chunks of log-mel ------------------------------------------------------------------


@dataclass
class Chunks:
    """Log-mel chunks (N, 96, 100) of some items of a manifest, and whose they are."""

    spec: torch.Tensor  # float16, to halve the memory of large samples
    owner: torch.Tensor  # (N,) index of the item in the manifest
    failed: list[str]  # "path: reason" of the files that could not be read
    complete: bool  # every item of the manifest is in


def collect_chunks(model: CodebookTagger, manifest: Manifest, limit: int | None = None,
                   seed: int = 0, progress: bool = False, desc: str = "chunks", views: int = 1,
                   gain_db: float = 0.0, augment: AcousticAugment | None = None) -> Chunks:
    """The chunks of the manifest's items, in a seeded random order of items when ``limit``
    caps their number (the item that crosses the cap is taken whole); ``views`` and
    ``gain_db`` as :func:`item_chunks`. Unreadable files are skipped and listed in
    ``failed``."""
    rng = np.random.default_rng([seed, 1])
    order = list(range(len(manifest.items)))
    if limit is not None:
        np.random.default_rng(seed).shuffle(order)
    specs, owners, failed, total, seen = [], [], [], 0, 0
    bar = tqdm(total=limit or len(order), desc=desc, disable=not progress,
               unit="chunk" if limit else "file")
    for i in order:
        if limit is not None and total >= limit:
            break
        seen += 1
        try:
            chunks = item_chunks(model, manifest.items[i], views, gain_db, rng, augment)
        except AudioError as err:
            failed.append(str(err))
            continue
        specs.append(chunks.half())
        owners.append(torch.full((len(chunks),), i, dtype=torch.long))
        total += len(chunks)
        bar.update(len(chunks) if limit else 1)
    bar.close()
    if failed:
        log.warning("%s: skipped %d unreadable files (first: %s)", desc, len(failed), failed[0])
    if not specs:
        raise DataError(manifest.name, f"no audio could be read ({len(failed)} files failed)")
    complete = seen == len(order)
    return Chunks(torch.cat(specs), torch.cat(owners), failed, complete)


# ---- stage files -----------------------------------------------------------------------------


def _settings(config: TrainConfig, model: CodebookTagger, keys: tuple[str, ...],
              args: tuple[str, ...]) -> dict:
    d = config.to_dict()
    built = model.build_args()
    return {**{k: d[k] for k in keys}, "model_args": {k: built[k] for k in args}}


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], info: dict) -> None:
    """``path`` (safetensors) then ``path.json`` (its settings): the JSON marks it finished."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    write_json(path.with_name(path.name + ".json"), info)


def _load_stage(path: Path, settings: dict, sources: list[Path]) -> dict[str, torch.Tensor] | None:
    """The tensors of a finished stage made with ``settings``, from the first of the
    ``sources`` (stage folders) that has it; copied to ``path`` when it came from elsewhere.
    None when no source has it."""
    for folder in sources:
        found = folder / path.name
        meta = found.with_name(found.name + ".json")
        if not (found.is_file() and meta.is_file()):
            continue
        try:
            info = json.loads(meta.read_text())
        except json.JSONDecodeError:
            continue
        if info.get("settings") != json.loads(json.dumps(settings)):
            log.info("%s was made with other settings", found)
            continue
        tensors = load_file(str(found))
        if found != path:
            _save_tensors(path, tensors, {**info, "copied_from": str(found)})
        log.info("%s: reusing %s", path.stem, found)
        return tensors
    return None


# ---- stage 1: autoencoders ---------------------------------------------------------------------


def _random_slices(model: CodebookTagger, spec: torch.Tensor, batch: int,
                   gen: torch.Generator, device) -> dict[str, torch.Tensor]:
    """One random slice of each family from each of ``batch`` random chunks."""
    idx = torch.randint(len(spec), (batch,), generator=gen)
    slices = model.slices(spec[idx].to(device).float())
    out = {}
    for name, x in slices.items():
        pick = torch.randint(x.shape[1], (batch,), generator=gen).to(device)
        out[name] = x[torch.arange(batch, device=device), pick]
    return out


def train_autoencoders(model: CodebookTagger, spec: torch.Tensor, config: TrainConfig,
                       device) -> dict:
    """Fit the log-mel statistics and the four autoencoders (MSE, Adam); returns the losses."""
    total = squares = 0.0
    for s in range(0, len(spec), 1024):  # blockwise: the sample may be millions of values
        block = spec[s:s + 1024].double()
        total, squares = total + block.sum(), squares + (block * block).sum()
    mean = total / spec.numel()
    std = (squares / spec.numel() - mean * mean).clamp_min(1e-12).sqrt()
    model.norm.copy_(torch.stack([mean, std]).float())
    model.to(device)
    model.autoencoders_trainable = True
    model.train()
    opt = torch.optim.Adam(model.autoencoders.parameters(), lr=config.ae_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, config.ae_steps))
    gen = torch.Generator().manual_seed(config.seed)
    history: dict[str, list[float]] = {name: [] for name in FAMILIES}
    running = {name: 0.0 for name in FAMILIES}
    every = max(1, min(100, config.ae_steps // 10))
    bar = tqdm(range(config.ae_steps), desc="autoencoders", disable=not config.progress)
    for step in bar:
        batch = _random_slices(model, spec, config.ae_batch, gen, device)
        losses = {name: F.mse_loss(model.autoencoders[name](x), x) for name, x in batch.items()}
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
        sched.step()
        for name, loss in losses.items():
            running[name] += loss.item()
        if (step + 1) % every == 0 or step + 1 == config.ae_steps:
            n = (step % every) + 1
            for name in FAMILIES:
                history[name].append(running[name] / n)
                running[name] = 0.0
            bar.set_postfix({k[:5]: f"{v[-1]:.3f}" for k, v in history.items()})
            if not config.progress:
                log.info("autoencoders step %d/%d: %s", step + 1, config.ae_steps,
                         ", ".join(f"{k} {v[-1]:.4f}" for k, v in history.items()))
    model.autoencoders_trainable = False
    model.eval()
    return {"every": every, "mse": history}


# ---- stage 2: code books -----------------------------------------------------------------------


def encode_family(model: CodebookTagger, spec: torch.Tensor, family: str, device,
                  batch: int = 256) -> np.ndarray:
    """(N * slices, bottleneck) bottlenecks of one family over all chunks, as float32."""
    out = []
    with torch.no_grad():
        for s in range(0, len(spec), batch):
            x = model.slices(spec[s:s + batch].to(device).float())[family]
            out.append(model.autoencoders[family].encode(x).flatten(0, 1).cpu())
    return torch.cat(out).numpy().astype(np.float32)


def fit_codebook(vectors: np.ndarray, size: int, batch: int, epochs: int, seed: int,
                 progress: bool = False, desc: str = "k-means") -> tuple[np.ndarray, float]:
    """Mini-batch k-means (scikit-learn) over ``vectors`` in shuffled batches, ``epochs``
    passes, with a progress bar; returns (centroids (size, d), inertia per vector)."""
    from sklearn.cluster import MiniBatchKMeans

    n = len(vectors)
    if n < size:
        raise DataError(desc, f"{n} vectors cannot make {size} centroids; use a smaller "
                        "codebook_size or more training audio")
    rng = np.random.default_rng(seed)
    first = min(n, max(3 * size, batch))  # k-means++ starts from the first batch
    km = MiniBatchKMeans(n_clusters=size, batch_size=batch, random_state=seed, n_init=3,
                         init_size=first)
    bar = tqdm(total=epochs * n, desc=desc, disable=not progress, unit="vector")
    for epoch in range(epochs):
        order = rng.permutation(n)
        start = 0
        while start < n:
            stop = start + (first if epoch == 0 and start == 0 else batch)
            km.partial_fit(vectors[order[start:stop]])
            bar.update(min(stop, n) - start)
            start = stop
    bar.close()
    centres = km.cluster_centers_.astype(np.float32)
    inertia, sq = 0.0, (centres ** 2).sum(1)
    for s in range(0, n, 8192):  # bounded memory for millions of vectors
        part = vectors[s:s + 8192]
        d = (part ** 2).sum(1, keepdims=True) - 2 * part @ centres.T + sq
        inertia += float(np.maximum(d.min(1), 0).sum())
    return centres, inertia / n


# ---- stage 3: histograms ---------------------------------------------------------------------


def chunk_features(model: CodebookTagger, chunks: Chunks, manifest: Manifest, device,
                   batch: int = 256) -> dict[str, torch.Tensor]:
    """Counts (N, 4D) as uint8, targets (N, C) and clip ids (N,) of every chunk."""
    counts = []
    with torch.no_grad():
        for s in range(0, len(chunks.spec), batch):
            counts.append(model.histogram(chunks.spec[s:s + batch].to(device).float())
                          .to(torch.uint8).cpu())
    return {"counts": torch.cat(counts), "targets": manifest_targets(manifest)[chunks.owner],
            "clip": chunks.owner.clone()}


# ---- stage 4: the head -----------------------------------------------------------------------


class HeadModule(TaggingModule):
    """Trains the head on (counts, target, clip) batches: sigmoid + Huber for multi-label
    data, softmax + cross-entropy for single-label (section 3.3); validation scores clips as
    the mean of their chunks' scores."""

    def __init__(self, model: CodebookTagger, config: TrainConfig, labels: list[str],
                 steps_per_epoch: int):
        super().__init__(model, config, labels, steps_per_epoch)
        self._val_clips: list[torch.Tensor] = []

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.huber_loss(logits.sigmoid(), target)
        return F.cross_entropy(logits, target)

    def training_step(self, batch, batch_idx):
        counts, target, _ = batch
        loss = self.loss(self.model.head_logits(counts), target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=counts.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        counts, target, clip = batch
        logits = self.model.head_logits(counts)
        self.log("val/loss", self.loss(logits, target), prog_bar=True, sync_dist=True,
                 batch_size=counts.shape[0])
        self._val_scores.append(self.model.activation(logits).float())
        self._val_targets.append(target.float())
        self._val_clips.append(clip)

    def on_validation_epoch_end(self):
        if self._val_scores:  # chunks -> clips (a clip's chunks share its targets)
            _, clip = torch.unique(torch.cat(self._val_clips), return_inverse=True)
            n = int(clip.max()) + 1

            def clip_mean(x: torch.Tensor) -> torch.Tensor:
                total = x.new_zeros(n, x.shape[1]).index_add_(0, clip, x)
                return total / torch.bincount(clip, minlength=n)[:, None]

            self._val_scores = [clip_mean(torch.cat(self._val_scores))]
            self._val_targets = [clip_mean(torch.cat(self._val_targets))]
        self._val_clips = []
        super().on_validation_epoch_end()


def _loader(features: dict[str, torch.Tensor], config: TrainConfig, train: bool):
    ds = torch.utils.data.TensorDataset(features["counts"].float(), features["targets"],
                                        features["clip"])
    return torch.utils.data.DataLoader(ds, batch_size=config.batch_size, shuffle=train,
                                       drop_last=train and len(ds) > config.batch_size)


# ---- the stages together -------------------------------------------------------------------


def prepare_stages(config: TrainConfig, model: CodebookTagger, manifest: Manifest,
                   train_m: Manifest, valid_m: Manifest, resume: bool = False):
    """Run (or, with ``resume``, reuse) the stages before the head; returns the head's
    (module, train loader, valid loader, provenance)."""
    if not isinstance(model, CodebookTagger):
        raise ModelError(f"{config.model!r} is not a codebook model")
    stages = Path(config.out) / STAGES_DIR
    stages.mkdir(parents=True, exist_ok=True)
    device = _device(config)
    t0 = time.time()
    sample_chunks = None

    ae_settings = _settings(config, model, _AE_KEYS, _AE_ARGS)
    ae_path = stages / "autoencoder.safetensors"
    cb_settings = _settings(config, model, _CODEBOOK_KEYS, _CODEBOOK_ARGS)
    cb_path = stages / "codebook.safetensors"
    sources = ([stages] if resume else []) + (
        [Path(config.stages_from) / STAGES_DIR] if config.stages_from else [])
    ae_state = _load_stage(ae_path, ae_settings, sources)
    cb_state = _load_stage(cb_path, cb_settings, sources) if ae_state is not None else None
    sample = None
    if ae_state is None or cb_state is None:
        sample = collect_chunks(model, train_m, config.codebook_chunks, config.seed,
                                config.progress, desc="training chunks")
        sample_chunks = len(sample.spec)
    if ae_state is None:
        t = time.time()
        history = train_autoencoders(model, sample.spec, config, device)
        state = {k: v for k, v in model.state_dict().items()
                 if k.startswith("autoencoders.") or k == "norm"}
        _save_tensors(ae_path, state, {"settings": ae_settings, "chunks": len(sample.spec),
                                       "seconds": round(time.time() - t, 1), **history})
    else:
        model.load_state_dict(ae_state, strict=False)
    model.to(device).eval()
    if cb_state is None:
        t = time.time()
        inertia = {}
        for name in FAMILIES:
            vectors = encode_family(model, sample.spec, name, device)
            centroids, inertia[name] = fit_codebook(
                vectors, model.codebook_size, config.kmeans_batch, config.kmeans_epochs,
                config.seed, config.progress, desc=f"k-means {name} ({len(vectors)} vectors)")
            model.centroids(name).copy_(torch.from_numpy(centroids))
        state = {f"centroids_{n}": model.centroids(n) for n in FAMILIES}
        _save_tensors(cb_path, state, {"settings": cb_settings, "inertia": inertia,
                                       "seconds": round(time.time() - t, 1)})
    else:
        model.load_state_dict(cb_state, strict=False)

    features = {}
    ft_settings = _settings(config, model, _FEATURE_KEYS, _CODEBOOK_ARGS)
    augment = None  # built once, when the training histograms are computed

    for split, m in (("train", train_m), ("valid", valid_m)):
        path = stages / f"features-{split}.safetensors"
        done = _load_stage(path, ft_settings, sources) if cb_state is not None else None
        if done is None:
            t = time.time()
            views = config.feature_views if split == "train" else 1
            if views > 1:  # only the shifted copies of training clips are augmented
                augment = AcousticAugment(model.sample_rate, seed=config.seed,
                                          **config.acoustic())
            chunks = (sample if split == "train" and sample is not None and sample.complete
                      and views == 1
                      else collect_chunks(model, m, seed=config.seed, progress=config.progress,
                                          desc=f"{split} chunks", views=views,
                                          gain_db=config.gain_db if split == "train" else 0.0,
                                          augment=augment if views > 1 and augment.active
                                          else None))
            done = chunk_features(model, chunks, m, device)
            _save_tensors(path, done, {"settings": ft_settings, "failed": chunks.failed,
                                       "seconds": round(time.time() - t, 1)})
        features[split] = done
    used = (features["train"]["counts"].float().sum(0) > 0).view(len(FAMILIES), -1).sum(1)
    codes_used = dict(zip(FAMILIES, used.tolist()))
    log.info("codebook stages done in %.0f s; codes used per family: %s", time.time() - t0,
             codes_used)
    model.cpu()
    for p in model.autoencoders.parameters():
        p.requires_grad_(False)
    train_dl = _loader(features["train"], config, train=True)
    valid_dl = _loader(features["valid"], config, train=False)
    steps = max(1, len(train_dl) // max(1, config.devices))
    module = HeadModule(model, config, manifest.labels, steps)
    provenance = {"codebook": {"chunks": sample_chunks, "codes_used": codes_used}}
    return module, train_dl, valid_dl, provenance
