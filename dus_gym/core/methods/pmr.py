"""``pmr``: Fan et al., "PMR: Prototypical Modal Rebalance for Multimodal Learning", CVPR 2023."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import (
    IterationBatch,
    Method,
    MethodOutput,
    StepContext,
    forward,
    in_window,
    total_loss,
)


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """PMR's prototype logits: minus the Euclidean distance of each feature to each class prototype, (n, C)."""
    return -torch.cdist(features.float(), prototypes.float())


def pmr_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The weight of each modality's prototypical CE (Fan et al. 2023; the authors' code).

    With s(m) = sum over the paired samples of softmax(prototype logits of m)[y]: for two
    modalities, the one with the lower score gets alpha and the other 0 (neither on a tie). Ours
    for M > 2: every modality whose score is below the highest gets alpha.
    """
    if scores.numel() < 2:
        raise ValueError("PMR needs at least two modalities")
    return torch.where(scores < scores.max(), torch.full_like(scores, alpha), torch.zeros_like(scores))


class PMR(Method):
    """Prototypical modal rebalance (Fan et al., CVPR 2023).

    Every modality keeps one prototype per class: the mean feature of the class on a random
    ``sample_fraction`` of the training split, recomputed at the start and at every new epoch of
    the data walk (P <- (1 - momentum) P_new + momentum P_old after the first). Within the window,
    the loss is the fusion CE on the paired samples plus, for the modality behind (the lower
    prototype score, :func:`pmr_coefficients`), alpha (proto_lr / lr) w(m) CE(-|h - P|, y) on its
    own n(m) samples: the prototypical CE pulls its encoder's features towards its class prototypes.
    Outside the window, the fusion CE alone. The unimodal heads learn on detached features (CMD
    monitors), as with ``joint``.

    Why proto_lr / lr: CE(-|h - P|) has no scale anchor (with P re-estimated from the features,
    scaling every feature up lowers it), so at weight alpha and the project's lr 0.05 with momentum
    0.9 the features grew until the fusion head diverged (mfeat). The authors train at lr 1e-3;
    with this ratio (lr the learner's base lr) the prototypical CE takes their step, alpha x 1e-3
    times its gradient under SGD, while the fusion CE keeps the learner's lr.

    Args:
        alpha: weight of the prototypical CE; 2.0 as in the authors' ``bash.sh`` runs of
            ``main_Prototype_grad.py`` with concatenation fusion (AVE with SGD, CREMA-D with Adam or AdaGrad).
        momentum: prototype momentum (``--momentum_coef``); 0.0 as in those runs.
        start: the window's start, as a fraction of the budget.
        end: the window's end (exclusive), as a fraction; 0.55: epochs 0-70 (inclusive) of 130 in those runs.
        sample_fraction: share of the training split the prototypes are computed on (the authors'
            code averages the first tenth of the shuffled training batches for CREMA-D).
        proto_lr: the learning rate the prototypical CE's step is scaled to (1e-3: every one of those
            runs); None: weight alpha at the learner's lr (the features may grow without bound).
    """

    name = "pmr"

    def __init__(self, alpha: float = 2.0, momentum: float = 0.0, start: float = 0.0, end: float = 0.55,
                 sample_fraction: float = 0.1, proto_lr: float | None = 1e-3) -> None:
        if not alpha >= 0:
            raise ConfigError(f"pmr alpha must be >= 0, got {alpha}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"pmr momentum must be in [0, 1), got {momentum}")
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"pmr needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        if not 0.0 < sample_fraction <= 1.0:
            raise ConfigError(f"pmr sample_fraction must be in (0, 1], got {sample_fraction}")
        if proto_lr is not None and not (proto_lr > 0 and math.isfinite(proto_lr)):
            raise ConfigError(f"pmr proto_lr must be a positive number or null, got {proto_lr}")
        self.proto_lr = None if proto_lr is None else float(proto_lr)
        self.alpha, self.momentum = float(alpha), float(momentum)
        self.start, self.end, self.sample_fraction = float(start), float(end), float(sample_fraction)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """No prototypes yet; their sample is drawn with the method's own generator."""
        super().setup(model, modalities, device, seed)
        self.n_classes = int(next(iter(model.heads.values())).out_features)
        self.generator = torch.Generator().manual_seed(seed + 104729)
        self.device = device
        self.prototypes: dict[str, torch.Tensor] | None = None
        self.prototype_epoch = -1

    @torch.no_grad()
    def update_prototypes(self, ctx: StepContext) -> None:
        """Class means of every encoder's features on a random sample of the training split (then momentum)."""
        split = ctx.splits["train"]
        n = max(1, math.ceil(self.sample_fraction * len(split)))
        sample = split.subset(torch.randperm(len(split), generator=self.generator)[:n])
        model = ctx.model
        training = model.training
        model.eval()
        sums = {m: None for m in self.modalities}
        counts = torch.zeros(self.n_classes)
        for features, labels in ctx.batches(sample):
            onehot = torch.nn.functional.one_hot(labels, self.n_classes).float()
            counts += onehot.sum(0).cpu()
            for m in self.modalities:
                part = onehot.T @ ctx.encoders[m](features[m]).float()
                sums[m] = part if sums[m] is None else sums[m] + part
        model.train(training)
        seen = (counts > 0).to(next(iter(sums.values())).device)
        new = {}
        for m in self.modalities:
            mean = sums[m] / counts.clamp(min=1).to(sums[m].device)[:, None]
            # a class absent from the sample keeps its last prototype (at the start: the sample's mean feature)
            fallback = self.prototypes[m] if self.prototypes is not None else sums[m].sum(0) / counts.sum()
            mean = torch.where(seen[:, None], mean, fallback)
            if self.prototypes is not None and self.momentum > 0:
                mean = (1 - self.momentum) * mean + self.momentum * self.prototypes[m]
            new[m] = mean
        self.prototypes = new

    def step_ratio(self, ctx: StepContext) -> float:
        """proto_lr / the learner's base learning rate (1 without proto_lr).

        Times this ratio, the prototypical CE moves the parameters (plain SGD) by alpha proto_lr times its
        gradient, the authors' step, whatever the learner's lr; a step decay of the learner's lr decays it
        too, as the authors' StepLR does. The base lr is the scheduler's ``initial_lr`` when there is one.
        """
        if self.proto_lr is None:
            return 1.0
        group = ctx.optimizer.param_groups[0]
        return self.proto_lr / float(group.get("initial_lr", group["lr"]))

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Fusion CE (and monitors), plus the prototypical CE of the modality behind, in the window."""
        if self.prototypes is None or batch.epoch != self.prototype_epoch:
            self.update_prototypes(ctx)
            self.prototype_epoch = batch.epoch
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        if batch.n_paired > 0 and in_window(batch.progress, self.start, self.end):
            logits = {m: prototype_logits(out.encoded[m], self.prototypes[m]) for m in batch.inputs}
            target = batch.paired_target.view(-1, 1)
            with torch.no_grad():
                scores = torch.stack([logits[m][: batch.n_paired].softmax(1).gather(1, target).sum()
                                      for m in self.modalities])
            coefficients = pmr_coefficients(scores, self.alpha) * self.step_ratio(ctx)
            for k, m in enumerate(self.modalities):
                proto_ce = nn.functional.cross_entropy(logits[m], batch.targets[m])
                loss = loss + coefficients[k] * batch.weights[m] * proto_ce
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """Prototypes, the epoch they belong to, and the sampling generator."""
        state: dict[str, Any] = {"epoch": self.prototype_epoch, "generator": self.generator.get_state()}
        if self.prototypes is not None:
            state["prototypes"] = {m: p.cpu() for m, p in self.prototypes.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())
            self.prototype_epoch = int(state["epoch"])
        if "prototypes" in state:
            self.prototypes = {m: p.to(self.device) for m, p in state["prototypes"].items()}
