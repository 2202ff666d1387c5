"""The Lightning module that trains any earmark model on (waveform, target) batches, or
(waveform, target, group) batches with a group-adversarial head
(:mod:`earmark.train.adversarial`)."""

from __future__ import annotations

import bisect
import math

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


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then half-cycle cosine."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


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

    def configure_optimizers(self):
        decay, no_decay = [], []
        # the model and any training-only parts (the MAE decoder); a PSL teacher is no parameter
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            # no weight decay on norms, biases and position embeddings / tokens
            (no_decay if p.dim() <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token"))
             else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}], lr=self.config.lr,
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
