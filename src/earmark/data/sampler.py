"""Weighted sampling of training items: balanced over labels, or over groups with a share
of synthetic items.

:class:`BalancedSampler`: an item's weight is the sum over its labels of ``1 / count(label)``:
the importance sampling on label frequency of paper 003 (section 4.3) and the balanced
sampling HTS-AT trains AudioSet with. A label seen 10 times is drawn about as often as one
seen 10,000 times.

:class:`GroupShareSampler`: real recordings and synthetic voices together, a fixed expected
share of synthetic items in every batch, and every group (speaker, voice) of a part drawn as
often as any other of that part (:func:`group_share_weights`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from earmark.data.labels import positions
from earmark.data.manifest import Manifest


def balanced_weights(data: Manifest | torch.Tensor) -> torch.Tensor:
    """Per-item weights (N,) = sum over the item's labels of 1 / (items with that label).

    ``data`` is a manifest or its (N, C) targets. Items without any label count as one more
    class of their own, so they are neither lost nor flooding the draw.

    >>> balanced_weights(torch.tensor([[1., 0.], [1., 0.], [0., 1.]]))
    tensor([0.5000, 0.5000, 1.0000])
    """
    if isinstance(data, Manifest):
        rows, cols = positions(data)
        n, c = len(data.items), len(data.labels)
    else:
        rows, cols = data.nonzero(as_tuple=True)
        n, c = data.shape
    count = torch.bincount(cols, minlength=c).double()
    weights = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, 1.0 / count[cols])
    unlabelled = weights == 0
    if unlabelled.any():
        weights[unlabelled] = 1.0 / unlabelled.sum()
    return weights.float()


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Draws ``num_samples`` item indices per epoch with probability ∝ :func:`balanced_weights`.

    ``replacement=True`` (the default) lets rare items come back several times an epoch,
    which is what balances the classes; ``replacement=False`` draws distinct items, as paper
    003 does with 200k clips of AudioSet's 2M per epoch, and needs ``num_samples <= N``.

    The draw of epoch ``e`` depends only on ``seed`` and ``e``. :meth:`set_epoch` picks the
    epoch; without it each new iteration moves on to the next epoch, like a seeded
    ``RandomSampler`` (useful when Lightning wraps the sampler for distributed training and
    calls ``set_epoch`` on its wrapper only).

    >>> from earmark.data.manifest import Item
    >>> manifest = Manifest([Item("dog1.wav", ("dog",)), Item("dog2.wav", ("dog",)),
    ...                      Item("dog3.wav", ("dog",)), Item("owl.wav", ("owl",))], ["dog", "owl"])
    >>> sampler = BalancedSampler(manifest, num_samples=8, seed=0)
    >>> sampler.weights
    tensor([0.3333, 0.3333, 0.3333, 1.0000])
    >>> list(sampler)  # epoch 0: the one owl clip (3) is drawn as often as the three dogs
    [3, 1, 3, 3, 1, 3, 3, 2]
    >>> sampler.set_epoch(0)
    >>> list(sampler)
    [3, 1, 3, 3, 1, 3, 3, 2]

    In training, it is the DataLoader's sampler:

    >>> from earmark.data.dataset import ClipDataset
    >>> loader = torch.utils.data.DataLoader(ClipDataset(manifest, 32000, 10.0), sampler=sampler,
    ...                                      batch_size=4)
    >>> len(loader)
    2
    """

    def __init__(self, data: Manifest | torch.Tensor, num_samples: int | None = None,
                 replacement: bool = True, seed: int = 0):
        self.weights = balanced_weights(data)  # (N,)
        self.num_samples = len(self.weights) if num_samples is None else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not replacement and self.num_samples > len(self.weights):
            raise ValueError(f"cannot draw {self.num_samples} distinct items from "
                             f"{len(self.weights)} without replacement")
        self.replacement = replacement
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        drawn = torch.multinomial(self.weights, self.num_samples, self.replacement,
                                  generator=generator)
        self.epoch += 1
        return iter(drawn.tolist())


def group_share_weights(manifest: Manifest, synthetic: Sequence[bool], share: float,
                        balanced: bool = False) -> torch.Tensor:
    """Per-item weights (N,), summing to 1: ``share`` for the synthetic items (those where
    ``synthetic`` is true), ``1 - share`` for the real ones, and within each part an equal
    amount for every group (:attr:`Item.group`: speaker, voice; the part's items without a
    group count as one more group). Within a group, items weigh the same, or with
    ``balanced`` in proportion to their :func:`balanced_weights` over the part's items, so
    rare labels come more often while each group keeps its share.

    >>> from earmark.data.manifest import Item
    >>> items = [Item(f"{g}{i}.wav", ("yes",), group=g) for g, n in (("ann", 3), ("bob", 1))
    ...          for i in range(n)] + [Item("voice0.wav", ("yes",), group="kal")]
    >>> m = Manifest(items, ["yes"])
    >>> group_share_weights(m, [False] * 4 + [True], share=0.2)  # ann, ann, ann, bob; kal
    tensor([0.1333, 0.1333, 0.1333, 0.4000, 0.2000])
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the synthetic share is a fraction between 0 and 1, got {share}")
    synthetic = [bool(s) for s in synthetic]
    if len(synthetic) != len(manifest.items):
        raise ValueError(f"{len(synthetic)} synthetic flags for {len(manifest.items)} items")
    weights = torch.zeros(len(synthetic), dtype=torch.float64)
    for part, mass in ((False, 1.0 - share), (True, share)):
        index = [i for i, s in enumerate(synthetic) if s == part]
        if not index:
            if mass > 0:
                raise ValueError(f"no {'synthetic' if part else 'real'} items to draw a share "
                                 f"of {mass:g} from")
            continue
        items = [manifest.items[i] for i in index]
        within = (balanced_weights(Manifest(items, manifest.labels)).double() if balanced
                  else torch.ones(len(items), dtype=torch.float64))
        groups = [it.group for it in items]
        total: dict[str | None, float] = {}
        for g, w in zip(groups, within.tolist()):
            total[g] = total.get(g, 0.0) + w
        scale = torch.tensor([mass / len(total) / total[g] for g in groups], dtype=torch.float64)
        weights[index] = within * scale
    return weights.float()


class GroupShareSampler(BalancedSampler):
    """Draws item indices with replacement by :func:`group_share_weights`: in expectation a
    ``share`` of every batch is synthetic, and within the real and the synthetic part every
    group (speaker, voice) is drawn equally often. An epoch is ``num_samples`` draws, by
    default as many as there are real items, so that adding thousands of synthetic clips
    does not lengthen the epoch (a run with the synthetic items takes as many steps as one
    without them).

    Seeded and moving on by epoch as :class:`BalancedSampler`; where several processes
    train, Lightning gives each its share of every epoch's draws, as for that sampler.

    >>> from earmark.data.manifest import Item
    >>> items = [Item(f"{g}{i}.wav", ("yes",), group=g) for g in ("ann", "bob")
    ...          for i in range(4)]
    >>> items += [Item(f"v{i}.wav", ("yes",), group=f"voice{i % 4}") for i in range(40)]
    >>> sampler = GroupShareSampler(Manifest(items, ["yes"]), [i >= 8 for i in range(48)],
    ...                             share=0.25, seed=0)
    >>> len(sampler)  # the 8 real items
    8
    >>> drawn = [i for _ in range(500) for i in sampler]  # 500 epochs
    >>> abs(sum(i >= 8 for i in drawn) / len(drawn) - 0.25) < 0.02  # 25 % synthetic draws
    True
    """

    def __init__(self, data: Manifest, synthetic: Sequence[bool], share: float,
                 num_samples: int | None = None, balanced: bool = False, seed: int = 0):
        self.weights = group_share_weights(data, synthetic, share, balanced)  # (N,)
        real = sum(not s for s in synthetic)
        self.num_samples = int(real or len(self.weights)) if num_samples is None \
            else int(num_samples)
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.replacement = True
        self.seed = seed
        self.epoch = 0


def world() -> tuple[int, int]:
    """(rank, world size) of this process: torch.distributed's when it is initialised, else the
    ``RANK`` and ``WORLD_SIZE`` environment variables (torchrun sets them), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShareSampler(torch.utils.data.distributed.DistributedSampler):
    """A rank's share of a data set for evaluation: rank ``r`` of ``W`` takes items
    ``r, r + W, r + 2W, ...``, so every item is scored once across the ranks (the
    ``DistributedSampler`` that Lightning would put in pads the shares with repeats to make them
    equal). Rank and world size are read when iterating, in the rank's own process; being a
    ``DistributedSampler``, Lightning leaves it in place.

    >>> list(ShareSampler(range(5), rank=1, num_replicas=2))
    [1, 3]
    """

    def __init__(self, dataset, rank: int | None = None, num_replicas: int | None = None):
        # not DistributedSampler.__init__: the process group may not exist yet
        self.dataset = dataset
        self._rank, self._replicas = rank, num_replicas

    @property
    def rank(self) -> int:
        return world()[0] if self._rank is None else self._rank

    @property
    def num_replicas(self) -> int:
        return world()[1] if self._replicas is None else self._replicas

    def set_epoch(self, epoch: int) -> None:  # the order does not change
        pass

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
