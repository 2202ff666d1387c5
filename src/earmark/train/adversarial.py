"""Group-adversarial training: an embedding that does not know who is speaking.

The domain-adversarial network of Ganin & Lempitsky (2015, "Unsupervised Domain Adaptation by
Backpropagation"): a small head on the model's pooled embedding learns to tell an item's
group (its speaker or synthetic voice, over the groups of the training split), and reaches
the embedding through a gradient-reversal layer: the identity forward, the gradient times
``-weight`` backward. The head gets better at telling the groups apart while the model
learns an embedding from which it cannot.

The head lives in the training module only: the exported model directory holds the model
as it would be without it.

    >>> from earmark.models.registry import create_model
    >>> model = create_model("vit-tiny", 10, depth=1, embed_dim=32, num_heads=2,
    ...                      clip_seconds=0.5)
    >>> pooled = PooledEmbedding(model)
    >>> logits = model(torch.randn(3, 8000))
    >>> pooled.take(3).shape, pooled.dim
    (torch.Size([3, 32]), 32)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from earmark.errors import ModelError


class GradientReversal(torch.autograd.Function):
    """Identity forward; the incoming gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: float) -> torch.Tensor:
        ctx.weight = float(weight)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.weight * grad, None


def reverse_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``x`` unchanged; gradients flowing back through it are multiplied by ``-weight``.

    >>> x = torch.ones(2, requires_grad=True)
    >>> (reverse_gradient(x, 0.5) * 3).sum().backward()
    >>> x.grad
    tensor([-1.5000, -1.5000])
    """
    return GradientReversal.apply(x, weight)


def ganin_ramp(progress: float) -> float:
    """The reversal weight's factor at ``progress`` (0 to 1) through training, as Ganin &
    Lempitsky raise it: ``2 / (1 + exp(-10 p)) - 1``, from 0 to nearly 1, so that the head's
    early, noisy gradients do not disturb the model.

    >>> round(ganin_ramp(0.0), 3), round(ganin_ramp(0.1), 3), round(ganin_ramp(1.0), 3)
    (0.0, 0.462, 1.0)
    """
    return 2.0 / (1.0 + math.exp(-10.0 * min(max(progress, 0.0), 1.0))) - 1.0


# Where each family pools its tokens into one vector per clip: the module whose input is the
# pooled embedding, the embedding's width, and how that input becomes (B, D). Module-level
# functions rather than lambdas, so the module pickles for spawned processes.
def _as_is(x: torch.Tensor) -> torch.Tensor:
    return x  # (B, D): the mean of the tokens, or the class token


def _mean_map(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3))  # (B, D, F', T') feature map of the last group -> (B, D)


def _embed_dim(model: nn.Module) -> int:
    return model.embed_dim


def _num_features(model: nn.Module) -> int:
    return model.num_features


EMBEDDINGS: dict[str, tuple[str, Callable[[nn.Module], int],
                            Callable[[torch.Tensor], torch.Tensor]]] = {
    # ViT and SAT: the output layer (LayerNorm, Linear) takes the pooled tokens
    "vit": ("outputlayer", _embed_dim, _as_is),
    # TokenLearner transformer: the head takes the mean of the (learned) tokens
    "tokenlearner": ("head", _embed_dim, _as_is),
    # HTS-AT: the token-semantic module takes the last group's normalised feature map
    "htsat": ("tscam_conv", _num_features, _mean_map),
}


def check_family(model: nn.Module) -> str:
    """``model``'s family, or a :class:`ModelError` naming a family without a pooled
    embedding for the group head."""
    family = getattr(model, "family", type(model).__name__)
    if family not in EMBEDDINGS:
        raise ModelError(f"group-adversarial training needs a pooled embedding, which the "
                         f"{family!r} family does not have (those that do: "
                         f"{', '.join(sorted(EMBEDDINGS))})")
    return family


class PooledEmbedding:
    """Keeps the pooled embedding (B, D) of each forward pass of ``model`` (a hook on the
    module that takes it, :data:`EMBEDDINGS`), with its gradient. :meth:`take` returns what
    the last training step's forward pass pooled; a clip scored in several pieces (ViT
    windows, SAT chunks) gives the mean of its pieces' embeddings."""

    def __init__(self, model: nn.Module):
        name, dim, self.pool = EMBEDDINGS[check_family(model)]
        self.dim = int(dim(model))
        self.seen: list[torch.Tensor] = []
        self.handle = getattr(model, name).register_forward_pre_hook(self._keep)

    def _keep(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self.seen.append(self.pool(args[0]))

    def clear(self) -> None:
        self.seen = []

    def remove(self) -> None:
        """Stop keeping embeddings (the hook goes; the model is as before)."""
        self.handle.remove()
        self.seen = []

    def take(self, batch: int) -> torch.Tensor:
        """The (batch, D) embedding pooled since the last :meth:`clear` (or take)."""
        if not self.seen:
            raise RuntimeError("no pooled embedding: the model has not run in training mode")
        x = torch.cat(self.seen)  # (pieces * batch, D), piece-major
        self.seen = []
        return x.unflatten(0, (-1, batch)).mean(0)


class GroupHead(nn.Module):
    """The group classifier of the adversarial branch: a small MLP on the pooled embedding
    (Ganin & Lempitsky's domain classifier), behind the gradient reversal."""

    def __init__(self, dim: int, num_groups: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_groups))

    def forward(self, embedding: torch.Tensor, weight: float) -> torch.Tensor:
        """(B, D) -> (B, groups) logits; the embedding's gradient is reversed (``weight``)."""
        return self.net(reverse_gradient(embedding, weight))


def group_loss(logits: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the group head against (B, groups) group probabilities (one-hot, or
    mixed by mixup); rows without a group (all zero) count for nothing.

    >>> group_loss(torch.zeros(2, 4), torch.tensor([[1., 0, 0, 0], [0, 0, 0, 0]]))
    tensor(1.3863)
    """
    known = groups.sum(-1)  # (B,) 1 for an item with a group, 0 without
    per_item = -(groups * logits.log_softmax(-1)).sum(-1)
    return per_item.sum() / known.sum().clamp_min(1.0)
