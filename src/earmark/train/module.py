"""The Lightning module that trains any earmark model on (waveform, target) batches, or
(waveform, target, group) batches with a group-adversarial head
(:mod:`earmark.train.adversarial`)."""

from __future__ import annotations

import bisect
import math
import re

import lightning as L
import torch
import torch.nn.functional as F

from earmark.audio.augment import (
    VTLP,
    AcousticAugment,
    SpecAugment,
    WaveAugment,
    bin_centres,
    mixup,
)
from earmark.evaluate.metrics import mean_average_precision, top_k_accuracy
from earmark.models.directory import model_config
from earmark.train.adversarial import GroupHead, PooledEmbedding, ganin_ramp, group_loss
from earmark.train.config import TrainConfig
from earmark.train.weights import head_keys


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then half-cycle cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


_BLOCK = re.compile(r"^(.*\bblocks\.\d+)\.")  # a transformer block: blocks.i, layers.s.blocks.j


def layer_ids(model: torch.nn.Module, head: set[str]) -> tuple[dict[str, int], int]:
    """The depth of each backbone parameter of ``model`` (names not in ``head``), and the
    number of blocks L: what comes before the first block (front end, patch and position
    embeddings) is 0, block i (in the order the model holds them: ``blocks.i``, HTS-AT's
    ``layers.s.blocks.j``) is i, a part between blocks (HTS-AT's patch merging) goes with
    the block before it, and what follows the last block (the final norm) is L + 1.

    >>> import earmark
    >>> vit = earmark.create_model("vit-tiny", 2, depth=2, embed_dim=32, num_heads=2)
    >>> ids, n = layer_ids(vit, {"outputlayer.1.weight", "outputlayer.1.bias"})
    >>> n, ids["patch_embed.proj.weight"], ids["blocks.1.attn.qkv.weight"], ids["norm.weight"]
    (2, 0, 2, 3)
    """
    names = [name for name, _ in model.named_parameters() if name not in head]
    blocks: dict[str, int] = {}
    for name in names:
        if (m := _BLOCK.match(name)) and m.group(1) not in blocks:
            blocks[m.group(1)] = len(blocks) + 1
    ids, seen = {}, 0
    for name in names:
        m = _BLOCK.match(name)
        if m:
            seen = blocks[m.group(1)]
            ids[name] = seen
        else:
            ids[name] = seen if seen < len(blocks) or not blocks else len(blocks) + 1
    return ids, len(blocks)


def htsat_lr_factor(epoch: int) -> float:
    """The learning-rate factor of the released HTS-AT code, per epoch: 0.02, 0.05, 0.1 in the
    three warm-up epochs, 0.1 to epoch 10, 0.05 to 20, 0.02 to 30, then 0.03. (Paper 002's
    text gives 0.05, 0.1, 0.2 and halving every ten epochs; earmark follows the code.)"""
    warmup, milestones = (0.02, 0.05, 0.1), (10, 20, 30)
    if epoch < len(warmup):
        return warmup[epoch]
    pos = -1 - bisect.bisect_left(milestones, epoch)
    return warmup[pos] if pos >= -len(warmup) else max(warmup[0] * 0.98 ** epoch, 0.03)


class TaggingModule(L.LightningModule):
    """Trains ``model`` on ``labels``. ``groups``: the groups (speakers, voices) of the
    training items, which a head on the pooled embedding learns to tell apart through a
    gradient reversal of weight ``config.group_adversarial``; the batches then carry each
    item's group number (-1: none) third. The head is no part of ``model``."""

    def __init__(self, model: torch.nn.Module, config: TrainConfig, labels: list[str],
                 steps_per_epoch: int, groups: list[str] | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self.labels = labels
        self.steps_per_epoch = steps_per_epoch
        self.groups = groups
        self.pooled: PooledEmbedding | None = None
        self.group_head: GroupHead | None = None
        if groups is not None:
            self.pooled = PooledEmbedding(model)
            self.group_head = GroupHead(self.pooled.dim, len(groups))
        self.wave_augment = WaveAugment(config.gain_db, config.shift, config.polarity)
        self.acoustic = AcousticAugment(model.sample_rate, seed=config.seed, **config.acoustic())
        # spectrogram augmentations run inside the model's forward, in training mode only
        spec: list[torch.nn.Module] = []
        self.vtlp = None
        if config.vtlp:
            front = model.frontend.config
            top = front.f_max if front.n_mels else front.sample_rate / 2
            self.vtlp = VTLP(bin_centres(front), config.vtlp, tuple(config.vtlp_range),
                             f_hi=0.6 * top, nyquist=top)
            spec.append(self.vtlp)
        if config.time_mask or config.freq_mask:
            spec.append(SpecAugment(config.time_mask, config.freq_mask, config.time_masks,
                                    config.freq_masks))
        if spec:
            model.spec_augment = spec[0] if len(spec) == 1 else torch.nn.Sequential(*spec)
        self._val_scores: list[torch.Tensor] = []
        self._val_targets: list[torch.Tensor] = []
        # the classifier that reset_classifier replaces; everything else of the model is the
        # backbone (fine-tuning options: its learning-rate scale, layer decay, freezing)
        tuned = (config.freeze_backbone or config.backbone_lr_scale != 1.0
                 or config.layer_decay != 1.0)
        self.head_keys = head_keys(model) if tuned else set()
        if config.freeze_backbone:
            for name, p in model.named_parameters():
                if name not in self.head_keys:
                    p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_backbone:  # a frozen backbone keeps its batch-norm statistics
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
                        p.requires_grad for p in m.parameters()):
                    m.eval()
        return self

    @property
    def multi_label(self) -> bool:
        return bool(self.model.multi_label)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.cross_entropy(logits, target)  # target: (B, C) probabilities (one-hot or mixed)

    def on_train_epoch_start(self) -> None:
        # fresh random crops each epoch, reproducible from (seed, epoch, item)
        dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def step_generator(self, step: int) -> torch.Generator:
        """The random source of one training step's augmentations: the same run seed, step
        and process give the same draws, also after a resume."""
        seed = (self.config.seed * 1_000_003 + step * 131 + self.global_rank) % (2 ** 63)
        return torch.Generator().manual_seed(seed)

    def augment(self, wave: torch.Tensor, target: torch.Tensor, step: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The waveform augmentations and mixup of training step ``step``. VTLP draws from
        the same generator inside the model's forward; SpecAugment from torch's global one,
        which Lightning seeds with the run's seed."""
        gen = self.step_generator(step)
        if self.vtlp is not None:
            self.vtlp.generator = gen
        wave = self.acoustic(wave, gen)
        wave = self.wave_augment(wave, gen)
        return mixup(wave, target, self.config.mixup, gen)

    def training_step(self, batch, batch_idx):
        if self.group_head is not None:
            return self.adversarial_step(*batch)
        wave, target = batch
        wave, target = self.augment(wave, target, self.global_step)
        loss = self.loss(self.model(wave), target)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=wave.shape[0])
        return loss

    def group_weight(self) -> float:
        """The gradient-reversal weight at this step: ``config.group_adversarial``, ramped
        up over the run's steps where ``config.group_adversarial_ramp``."""
        weight = self.config.group_adversarial
        if self.config.group_adversarial_ramp:
            total = max(1, self.config.epochs * self.steps_per_epoch)
            weight *= ganin_ramp(self.global_step / total)
        return weight

    def adversarial_step(self, wave: torch.Tensor, target: torch.Tensor, group: torch.Tensor):
        """The task loss plus the group head's: mixup mixes the groups as it mixes targets,
        and items without a group (-1) teach the head nothing."""
        n = len(self.groups)
        onehot = F.one_hot(group.clamp_min(0), n).to(target) * (group >= 0).unsqueeze(1)
        wave, both = self.augment(wave, torch.cat((target, onehot), 1), self.global_step)
        target, groups = both[:, :-n], both[:, -n:]  # (B, C), (B, groups)
        self.pooled.clear()
        task = self.loss(self.model(wave), target)
        weight = self.group_weight()
        adversary = group_loss(self.group_head(self.pooled.take(wave.shape[0]), weight), groups)
        b = wave.shape[0]
        self.log("train/loss", task, prog_bar=True, on_step=True, on_epoch=True, batch_size=b)
        self.log("train/group_loss", adversary, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=b)
        self.log("train/group_weight", weight, on_step=True, on_epoch=False, batch_size=b)
        return task + adversary

    def on_fit_end(self) -> None:
        if self.pooled is not None:  # the trained model goes on without the hook
            self.pooled.remove()

    def validation_step(self, batch, batch_idx):
        wave, target = batch
        logits = self.model(wave)
        self.log("val/loss", self.loss(logits, target), prog_bar=True, sync_dist=True,
                 batch_size=wave.shape[0])
        self._val_scores.append(self.model.activation(logits).float())
        self._val_targets.append(target.float())

    def on_validation_epoch_end(self):
        n = len(self.labels)
        scores = torch.cat(self._val_scores) if self._val_scores else torch.zeros(0, n)
        targets = torch.cat(self._val_targets) if self._val_targets else torch.zeros(0, n)
        self._val_scores, self._val_targets = [], []
        if self.trainer.world_size > 1:  # every rank's share, of any size, each row once
            scores, targets = self._gather_rows(scores), self._gather_rows(targets)
        if not len(scores):
            return
        self.log("val/clips", float(len(scores)))  # every clip once, over all ranks
        s, t = scores.cpu().numpy(), targets.cpu().numpy()
        mAP = float(mean_average_precision(s, t))
        self.log("val/mAP", mAP, prog_bar=self.multi_label)
        if self.multi_label:
            score = mAP
        else:
            score = float(top_k_accuracy(s, t, k=1))
            self.log("val/accuracy", score, prog_bar=True)
        # one name for "higher is better" that checkpoint file names can carry
        self.log("val_score", score)

    def _gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The rows (n_r, C) of every rank, concatenated; the shares may differ in size."""
        x = x.to(self.device)
        counts = self.all_gather(torch.tensor([x.shape[0]], device=self.device)).flatten()
        padded = F.pad(x, (0, 0, 0, int(counts.max()) - x.shape[0]))
        gathered = self.all_gather(padded)  # (world, max rows, C)
        return torch.cat([gathered[r, :int(c)] for r, c in enumerate(counts)])

    def lr_scales(self) -> dict[str, float]:
        """The learning rate of each trainable parameter as a fraction of ``config.lr``: 1
        for the head and the training-only parts (MAE decoder, group head), and for the
        model's backbone ``backbone_lr_scale`` times ``layer_decay`` to the power of its
        distance from the head (:func:`layer_ids`)."""
        c = self.config
        tuned = c.backbone_lr_scale != 1.0 or c.layer_decay != 1.0
        ids, n = layer_ids(self.model, self.head_keys) if tuned else ({}, 0)
        scales = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            own = name.removeprefix("model.")
            if name.startswith("model.") and own in ids:
                scales[name] = c.backbone_lr_scale * c.layer_decay ** (n + 1 - ids[own])
            else:
                scales[name] = 1.0
        return scales

    def configure_optimizers(self):
        groups: dict[tuple[float, bool], dict] = {}
        # the model and any training-only parts (the MAE decoder); a PSL teacher is no parameter
        for name, scale in self.lr_scales().items():
            p = self.get_parameter(name)
            # no weight decay on norms, biases and position embeddings / tokens
            decay = not (p.dim() <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token")))
            group = groups.setdefault((scale, decay), {
                "params": [], "weight_decay": self.config.weight_decay if decay else 0.0,
                "lr": self.config.lr * scale, "lr_scale": scale})
            group["params"].append(p)
        # the head's rate first, with decay before without (the order of runs saved before
        # the backbone had rates of its own, which --resume restores); a scale of 0 trains
        # nothing: those parameters stay as they are
        order = sorted((key for key in groups if key[0] > 0),
                       key=lambda key: (-key[0], not key[1]))
        opt = torch.optim.AdamW([groups[key] for key in order], lr=self.config.lr,
                                betas=(0.9, 0.999), eps=1e-8)
        total = max(1, self.config.epochs * self.steps_per_epoch)
        warmup = int(self.config.warmup_epochs * self.steps_per_epoch)
        if self.config.lr_schedule == "htsat":
            def factor(step):
                return htsat_lr_factor(step // self.steps_per_epoch)
        elif self.config.lr_schedule == "cosine":
            def factor(step):
                return warmup_cosine(step, warmup, total, self.config.min_lr_ratio)
        else:
            raise ValueError(f"unknown lr_schedule {self.config.lr_schedule!r}")
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # lets earmark.load() rebuild the model from the checkpoint alone
        checkpoint["earmark_model"] = model_config(self.model, self.labels,
                                                   {"source": "earmark train",
                                                    "stage": self.config.stage})
