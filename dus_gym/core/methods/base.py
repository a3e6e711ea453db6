"""The interface of a balancing method: how one iteration's losses and gradients are formed.

A method receives the iteration's per-modality batches (the sampler's counts, see docs/method.md)
and leaves gradients for the optimiser, or steps the optimiser itself (``mla``). Every method
works with every sampler. Those that train only on the paired part (``joint``, ``ogm-ge`` without
``aux``) see the counts through the paired batch size min_m n(m); the extra samples of a modality
then only train its unimodal head on detached features, which keeps the CMD measurable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dus_gym.core.objectives import head_terms, unimodal_aux_loss


@dataclass
class IterationBatch:
    """One iteration's data after the batch plan.

    Args:
        inputs: per modality with a positive count, its own samples (on the learner's device).
        targets: per modality, the labels of those samples.
        weights: per modality, the weight w(m) of its unimodal loss (n(m)/B, or 1 for "mean").
        n_paired: samples shared by all modalities (the first min_m n(m) of every batch).
        paired_target: labels of the paired samples (None when no sample is paired).
        epoch_fraction: position of the batch in the current epoch, in [0, 1).
    """

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    weights: dict[str, float]
    n_paired: int
    paired_target: torch.Tensor | None
    epoch_fraction: float


@dataclass
class StepContext:
    """What a method may use: the network, its (possibly compiled) encoders, the optimiser, autocast."""

    model: nn.Module
    encoders: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], AbstractContextManager]


@dataclass
class MethodOutput:
    """What a method computed (0-d tensors, not yet synchronised with the host).

    Args:
        loss: the total loss (what the learner reports and checks for NaN/inf).
        fusion_loss: CE of the fusion head on the paired samples (nan when none is paired or unused).
        unimodal_losses: per modality with a positive count, the CE of its head on its own samples.
        status: per modality with a positive count, its learning status s(m) on its own samples.
        stepped: True when the method already stepped the optimiser (the learner then does not).
    """

    loss: torch.Tensor
    fusion_loss: torch.Tensor
    unimodal_losses: dict[str, torch.Tensor]
    status: dict[str, torch.Tensor]
    stepped: bool = False


class Method(ABC):
    """Base class: forms the gradients of one iteration (subclasses define :meth:`step`)."""

    name: ClassVar[str] = ""
    shared_head: ClassVar[bool] = False
    """True when all modalities share one classification head (the model is built that way)."""
    batchable: ClassVar[bool] = False
    """True when :class:`dus_gym.core.batched_learner.BatchedLearner` can run it (N learners in one computation)."""

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Called once by the learner after the model is built (methods with state or noise)."""
        self.modalities = modalities

    @abstractmethod
    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Forward, loss and backward pass for one iteration."""

    def fuse(self, logits: dict[str, torch.Tensor], fused_logits: torch.Tensor) -> torch.Tensor:
        """Fused class probabilities at evaluation (default: softmax of the fusion head)."""
        return fused_logits.float().softmax(1)

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the learner (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless methods restore nothing)
        """Restore :meth:`state_dict`."""


def nan_scalar(device: torch.device) -> torch.Tensor:
    """A 0-d NaN (a loss that was not computed)."""
    return torch.full((), float("nan"), device=device)


@dataclass
class Forward:
    """The forward pass most methods share: features, per-modality CEs and status, fusion CE.

    Args:
        encoded: per modality, its encoder's features on its own samples.
        unimodal_losses: per modality, the CE of its head on its own samples.
        status: per modality, its learning status s(m) on its own samples.
        fusion_loss: CE of the fusion head on the paired samples (nan when none is paired).
    """

    encoded: dict[str, torch.Tensor]
    unimodal_losses: dict[str, torch.Tensor]
    status: dict[str, torch.Tensor]
    fusion_loss: torch.Tensor


def forward(ctx: StepContext, batch: IterationBatch, modalities: tuple[str, ...], detach_heads: bool) -> Forward:
    """Encode every modality's samples, score its head (CE and status) and the fusion head on the paired part."""
    model = ctx.model
    encoded, ces, status = {}, {}, {}
    device = next(iter(batch.targets.values())).device
    fusion = nan_scalar(device)
    with ctx.autocast():
        for m, x in batch.inputs.items():
            encoded[m] = ctx.encoders[m](x)
            logits = model.heads[m](encoded[m].detach() if detach_heads else encoded[m])
            ces[m], status[m] = head_terms(logits, batch.targets[m])
        if batch.n_paired > 0:
            paired = torch.cat([encoded[m][: batch.n_paired] for m in modalities], dim=1)
            fusion = head_terms(model.fusion(paired), batch.paired_target)[0]
    return Forward(encoded, ces, status, fusion)


def total_loss(out: Forward, batch: IterationBatch, modalities: tuple[str, ...], weighted: bool) -> torch.Tensor:
    """The fusion CE (when some sample is paired) plus each present modality's CE, times w(m) if ``weighted``."""
    device = out.fusion_loss.device
    zero = torch.zeros((), device=device)
    ce = torch.stack([out.unimodal_losses.get(m, zero) for m in modalities])
    M = len(modalities)
    # w(m), present(m) and paired in one host-to-device copy
    flags = torch.tensor([*(batch.weights.get(m, 0.0) if weighted else 1.0 for m in modalities),
                          *(float(m in out.unimodal_losses) for m in modalities), float(batch.n_paired > 0)],
                         device=device)
    return unimodal_aux_loss(ce, flags[:M], flags[M : 2 * M] > 0, out.fusion_loss, flags[2 * M] > 0)
