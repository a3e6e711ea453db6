"""``amco``: Zhou et al., "Adaptive Mask Co-Optimization for Modal Dependence in Multimodal Learning", ICASSP 2023."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import (
    IterationBatch,
    Method,
    MethodOutput,
    StepContext,
    forward,
    fusion_parts,
    in_window,
    total_loss,
)

HEAD_NAME = "amco_head"
"""The model attribute of AMCo's extra C x C linear layer on the fused logits (BalanceBenchmark's ``linear_star``)."""


def mask_ratio(iteration_in_epoch: int, epoch: int, eps: float, rate: float) -> float:
    """The share p_t of masked logit entries: sin(pi/2 min(eps, l_t) / eps), l_t = iteration_in_epoch * epoch * rate.

    BalanceBenchmark's schedule: l_t starts at 0 every epoch and grows by epoch / 10 per batch, so
    nothing is masked in the first epoch and p_t reaches 1 within ceil(eps / (epoch rate)) batches
    of every later epoch.
    """
    progress = iteration_in_epoch * epoch * rate
    return math.sin(math.pi / 2 * min(eps, progress) / eps)


def class_mask(n_classes: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A (C,) 0/1 vector with floor(ratio C) zeros at random classes (one mask for the whole batch)."""
    mask = torch.ones(n_classes)
    mask[torch.randperm(n_classes, generator=generator)[: int(ratio * n_classes)]] = 0.0
    return mask


def dependence_shares(logits: list[torch.Tensor]) -> torch.Tensor:
    """Each modality's share of a softmax over all modalities' logits side by side, averaged over the samples.

    softmax([out_1, ..., out_M]) over the M C entries of each sample; share(m) = the mass on m's C
    entries, averaged over the samples (the shares sum to 1). A modality whose share exceeds sigma
    is "dependent" (the one the model relies on).
    """
    probs = torch.cat([out.float() for out in logits], 1).softmax(1)
    return torch.stack([part.sum(1).mean() for part in probs.split([out.shape[1] for out in logits], 1)])


class AMCo(Method):
    """Adaptive mask co-optimisation (Zhou et al., ICASSP 2023; as BalanceBenchmark's AMCo trainer and model).

    The fused logits are A (sum_m out_m) + a, with out_m = h_m W_m^T + b_m the fusion head split by
    modality (concatenation: the columns reading m plus b/M) and A, a an extra C x C linear layer
    that AMCo adds to the model (``amco_head``; used at evaluation too). Within the window, the
    logits out_m of every modality found dependent at the last measurement (share > sigma,
    :func:`dependence_shares`) are multiplied by a random class mask (:func:`class_mask`) with
    a share :func:`mask_ratio` of zeros; the loss is the fused CE on the paired samples plus the
    co-optimisation terms sum_m w(m) CE(out_m (masked if dependent), y) on each modality's own
    samples; then the dependence is measured again on the paired samples' (masked) out_m, for the
    next iteration. Outside the window, the fused CE alone. The unimodal heads learn on detached
    features (CMD monitors), as with ``joint``.

    Args:
        sigma: the share above which a modality is dependent; 0.5 as BalanceBenchmark.
        eps: the schedule's saturation point (:func:`mask_ratio`); 0.3 as BalanceBenchmark.
        rate: l_t's growth per iteration per completed epoch; 0.1 (BalanceBenchmark's epoch / 10).
        start: the window's start, as a fraction of the budget.
        end: the window's end (exclusive); 1.0: BalanceBenchmark's window (epochs 0-80) covers its
            30-epoch runs.
    """

    name = "amco"
    fusions = ("concat", "sum")

    def __init__(self, sigma: float = 0.5, eps: float = 0.3, rate: float = 0.1, start: float = 0.0,
                 end: float = 1.0) -> None:
        if not 0.0 < sigma < 1.0:
            raise ConfigError(f"amco sigma must be in (0, 1), got {sigma}")
        if not eps > 0:
            raise ConfigError(f"amco eps must be > 0, got {eps}")
        if not rate >= 0:
            raise ConfigError(f"amco rate must be >= 0, got {rate}")
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"amco needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        self.sigma, self.eps, self.rate = float(sigma), float(eps), float(rate)
        self.start, self.end = float(start), float(end)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Add the C x C layer to the model (seeded, before the optimiser is built); no modality dependent yet."""
        super().setup(model, modalities, device, seed)
        self.n_classes = int(next(iter(model.heads.values())).out_features)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 2971)
            model.add_module(HEAD_NAME, nn.Linear(self.n_classes, self.n_classes).to(device))
        self.dims = [int(model.encoders[m].out_dim) for m in modalities]
        self.generator = torch.Generator().manual_seed(seed + 3571)
        self.device = device
        self.dependent = torch.zeros(len(modalities), dtype=torch.bool, device=device)
        self.epoch, self.iteration_in_epoch = 0, 0

    def fusion_logits(self, model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """The fusion head's logits through AMCo's C x C layer (outside the window and at evaluation)."""
        return getattr(model, HEAD_NAME)(model.fuse(features))

    def masked_logits(self, model: nn.Module, k: int, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """out_m = h_m W_m^T + b_m of modality number ``k``, times ``mask`` when m is dependent."""
        w, b = fusion_parts(model, self.dims)[k]
        logits = h @ w.to(h.dtype).T + b.to(h.dtype)
        return torch.where(self.dependent[k], logits * mask.to(logits.dtype), logits)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Fused CE with the dependent modalities' logits masked, plus the co-optimisation CEs (in the window)."""
        if batch.epoch != self.epoch:
            self.epoch, self.iteration_in_epoch = batch.epoch, 0
        ratio = mask_ratio(self.iteration_in_epoch, self.epoch, self.eps, self.rate)
        self.iteration_in_epoch += 1
        if not in_window(batch.progress, self.start, self.end):
            out = forward(ctx, batch, self.modalities, detach_heads=True, fuse=self.fusion_logits)
            loss = total_loss(out, batch, self.modalities, weighted=False)
            loss.backward()
            return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
        mask = class_mask(self.n_classes, ratio, self.generator).to(self.device)

        def masked_fusion(model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
            """The C x C layer on the sum of the (masked) per-modality logits."""
            return getattr(model, HEAD_NAME)(sum(self.masked_logits(model, k, h, mask) for k, h in enumerate(features)))

        out = forward(ctx, batch, self.modalities, detach_heads=True, fuse=masked_fusion)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        with ctx.autocast():
            logits = {m: self.masked_logits(ctx.model, k, out.encoded[m], mask)
                      for k, m in enumerate(self.modalities) if m in out.encoded}
        for m, out_m in logits.items():  # co-optimisation: each modality's (masked) logits on its own samples
            loss = loss + batch.weights[m] * F.cross_entropy(out_m.float(), batch.targets[m])
        loss.backward()
        if batch.n_paired > 0:
            shares = dependence_shares([logits[m][: batch.n_paired].detach() for m in self.modalities])
            self.dependent = shares > self.sigma
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """The dependent modalities, the place in the epoch and the mask generator (the C x C layer is the model's)."""
        return {"dependent": self.dependent.cpu(), "epoch": self.epoch, "iteration_in_epoch": self.iteration_in_epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "generator" in state:
            self.dependent = state["dependent"].to(self.device)
            self.epoch, self.iteration_in_epoch = int(state["epoch"]), int(state["iteration_in_epoch"])
            self.generator.set_state(state["generator"].cpu())
