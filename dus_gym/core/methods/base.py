"""The interface of a balancing method: how one iteration's losses and gradients are formed.

A method receives the iteration's per-modality batches (the sampler's counts, see docs/method.md)
and leaves gradients for the optimiser, or steps the optimiser itself (``mla``). Every method
works with every sampler. Those that train the encoders on the paired part (``joint``,
``ogm-ge`` without ``aux``, ``pmr``, ``agm``, ``mmcosine``, ``sample``, ``relearning``) see the counts
through the paired batch size min_m n(m) (PMR's prototype loss also through n(m), ``sample``'s copies
through max_m n(m)); the extra samples of a modality train its unimodal head on detached
features, which keeps the CMD measurable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
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
        epoch: epochs of the data walk completed before this batch.
        progress: iterations done / the run's budget, in [0, 1) (None when the learner is not
            told its budget: methods with a window over training then act at every iteration).
        batch_size: the base batch size B (None: not known).
    """

    inputs: dict[str, torch.Tensor]
    targets: dict[str, torch.Tensor]
    weights: dict[str, float]
    n_paired: int
    paired_target: torch.Tensor | None
    epoch_fraction: float
    epoch: int = 0
    progress: float | None = None
    batch_size: int | None = None


@dataclass
class StepContext:
    """What a method may use: the network, its (possibly compiled) encoders, the optimiser, autocast.

    ``splits`` gives the learner's own data by name ("train": the training split less the probe,
    "val": the validation split), for methods that measure the model on data (PMR's prototypes,
    G-Blending's losses); ``batches`` iterates a split in evaluation-sized chunks.
    """

    model: nn.Module
    encoders: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    autocast: Callable[[], AbstractContextManager]
    splits: dict[str, Any] = field(default_factory=dict)
    batches: Callable[[Any], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]] | None = None


@dataclass
class MethodOutput:
    """What a method computed (0-d tensors, not yet synchronised with the host).

    Args:
        loss: the total loss (what the learner reports and checks for NaN/inf).
        fusion_loss: CE of the fusion head on the paired samples (nan when none is paired or unused).
        unimodal_losses: per modality with a positive count, the CE of its head on its own samples.
        status: per modality with a positive count, its learning status s(m) on its own samples.
        optimizer_steps: None when the learner is to step the optimiser (once, when the loss is
            finite); else the number of steps the method took itself (MLA: one per modality).
    """

    loss: torch.Tensor
    fusion_loss: torch.Tensor
    unimodal_losses: dict[str, torch.Tensor]
    status: dict[str, torch.Tensor]
    optimizer_steps: int | None = None


class Method(ABC):
    """Base class: forms the gradients of one iteration (subclasses define :meth:`step`)."""

    name: ClassVar[str] = ""
    shared_head: ClassVar[bool] = False
    """True when all modalities share one classification head (the model is built that way)."""
    batchable: ClassVar[bool] = False
    """True when :class:`dus_gym.core.batched_learner.BatchedLearner` can run it (N learners in one computation)."""
    fusions: ClassVar[tuple[str, ...] | None] = None
    """The fusion heads (``learner.fusion``) the method is defined for (None: every one)."""

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Called once by the learner after the model is built (methods with state or noise)."""
        self.modalities = modalities

    @abstractmethod
    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Forward, loss and backward pass for one iteration."""

    def fusion_logits(self, model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """Fused logits of paired per-modality features, in training and at evaluation (default: the fusion head)."""
        return model.fuse(features)

    def fuse(self, logits: dict[str, torch.Tensor], fused_logits: torch.Tensor) -> torch.Tensor:
        """Fused class probabilities at evaluation (default: softmax of :meth:`fusion_logits`)."""
        return fused_logits.float().softmax(1)

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint with the learner (empty for stateless methods)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (stateless methods restore nothing)
        """Restore :meth:`state_dict`."""


def in_window(progress: float | None, start: float, end: float) -> bool:
    """Whether a method's window [start, end) of the budget holds ``progress`` (always, when progress is unknown)."""
    return progress is None or start <= progress < end


def fusion_parts(model: nn.Module, dims: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fusion head's (weight, bias) part that reads each modality, for features of sizes ``dims``.

    Concatenation: the columns of the fusion weight that read m's features and b / M (the split of
    OGM-GE's and MMCosine's code); sum: m's own linear map. The gated and FiLM heads do not split.
    """
    kind = getattr(model, "fusion_kind", "concat")
    if kind == "sum":
        return [(part.weight, part.bias) for part in model.fusion.parts]
    if kind != "concat":
        raise ValueError(f"the fusion head '{kind}' does not split by modality (concat and sum do)")
    weight, bias = model.fusion.weight, model.fusion.bias
    parts, start = [], 0
    for d in dims:
        parts.append((weight[:, start : start + d], bias / len(dims)))
        start += d
    return parts


def modality_logits(model: nn.Module, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """The fusion head's logits split by modality: out_m = h_m W_m^T + b_m (:func:`fusion_parts`; OGM-GE's scores)."""
    parts = fusion_parts(model, [h.shape[1] for h in features])
    return [h @ w.to(h.dtype).T + b.to(h.dtype) for h, (w, b) in zip(features, parts, strict=True)]


def modality_scores(model: nn.Module, features: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """OGM-GE's score s(m) of every modality on paired features: sum over the samples of softmax(out_m)[y].

    out_m is the fusion head restricted to m's features (:func:`modality_logits`); no gradient flows.
    OGM-GE and OPM compare the modalities by it.
    """
    with torch.no_grad():
        logits = modality_logits(model, [h.detach().float() for h in features])
        return torch.stack([out.softmax(1).gather(1, target.view(-1, 1)).sum() for out in logits])


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


def forward(ctx: StepContext, batch: IterationBatch, modalities: tuple[str, ...], detach_heads: bool,
            fuse: Callable[[nn.Module, list[torch.Tensor]], torch.Tensor] | None = None) -> Forward:
    """Encode every modality's samples, score its head (CE and status) and the fused logits on the paired part.

    ``fuse(model, features)`` gives the fused logits (default: the model's fusion head).
    """
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
            paired = [encoded[m][: batch.n_paired] for m in modalities]
            fused = fuse(model, paired) if fuse is not None else model.fuse(paired)
            fusion = head_terms(fused, batch.paired_target)[0]
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
