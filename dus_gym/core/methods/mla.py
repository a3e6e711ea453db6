"""``mla``: Zhang et al., "Multimodal Representation Learning by Alternating Unimodal Adaptation", CVPR 2024."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, nan_scalar
from dus_gym.core.objectives import head_terms


def mla_projector_update(projector: torch.Tensor, features: torch.Tensor, alpha: float) -> torch.Tensor:
    """MLA's gradient-modification projector after a batch (recursive orthogonal projection).

    With r the batch's mean feature (1 x d) and k = P r^T: P <- P - k k^T / (alpha + r k) (the
    paper's recursive projector), then P <- P / |P|_F (the Frobenius normalisation written in the
    authors' code, in a branch that never runs there: see :class:`MLA`).
    """
    r = features.float().mean(0, keepdim=True)
    k = projector @ r.T
    updated = projector - (k @ k.T) / (alpha + r @ k)
    return updated / torch.linalg.matrix_norm(updated)


def entropy_fusion(logits: dict[str, torch.Tensor]) -> torch.Tensor:
    """MLA's test-time fusion: per sample, weights softmax_m(-entropy(p_m)) on the probabilities p_m.

    The more certain a modality is on a sample, the more it counts: w(m) = exp(max_k e_k - e_m) /
    sum_j exp(max_k e_k - e_j), with e_m the entropy of p_m (Zhang et al. 2024, Eq. 8).
    """
    probabilities = torch.stack([x.float().softmax(1) for x in logits.values()])  # (M, n, C)
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum(2)  # (M, n)
    weights = (-entropy).softmax(0)
    return (weights.unsqueeze(2) * probabilities).sum(0)


class MLA(Method):
    """Alternating unimodal adaptation with a shared head (Zhang et al., CVPR 2024).

    Every iteration trains the modalities in turn, each on its own n(m) samples with its own
    optimiser step: encoder m and the shared head on w(m) CE(head(encoder_m(x))). Before each step
    but the very first, the shared head's weight gradient is projected, grad <- grad P^T, with the
    recursive projector P of the paper (see :func:`mla_projector_update`), so that a modality's
    update disturbs the others' less. This follows the paper: in the authors' code the projection
    sits behind a parameter-name check (``n == "weight"``) that no parameter name matches, so it
    never runs there (and would add grad P^T to grad rather than replace it). The schedule
    alpha = 0.1^(1 + position in the epoch) and the Frobenius normalisation are taken from that
    unreached code. At evaluation the modalities are fused by :func:`entropy_fusion`; the fusion
    head is not used. One iteration takes M optimiser steps (counted in ``optimizer_steps``).
    """

    name = "mla"
    shared_head = True
    fusions = ("concat",)  # the fusion head is not used: other fusion settings would mislead

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """The projector starts as the identity over the shared feature size."""
        super().setup(model, modalities, device, seed)
        dims = {int(model.encoders[m].out_dim) for m in modalities}
        self.projector = torch.eye(dims.pop(), device=device)
        self.updates = 0

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """One optimiser step per modality (a modality whose loss is NaN/inf is not stepped)."""
        head = ctx.model.heads[self.modalities[0]]
        ces, status, total, steps = {}, {}, [], 0
        alpha = 0.1 ** (1 + batch.epoch_fraction)
        for m, x in batch.inputs.items():
            ctx.optimizer.zero_grad(set_to_none=True)
            with ctx.autocast():
                h = ctx.encoders[m](x)
                ces[m], status[m] = head_terms(head(h), batch.targets[m])
            loss = batch.weights[m] * ces[m]
            loss.backward()
            if self.updates > 0:
                self.projector = mla_projector_update(self.projector, h.detach(), alpha)
                head.weight.grad = head.weight.grad @ self.projector.T.to(head.weight.grad.dtype)
            self.updates += 1
            total.append(loss.detach())
            if math.isfinite(float(loss.detach())):
                ctx.optimizer.step()
                steps += 1
        ctx.optimizer.zero_grad(set_to_none=True)
        device = batch.paired_target.device if batch.paired_target is not None else self.projector.device
        return MethodOutput(sum(total, torch.zeros((), device=device)), nan_scalar(device), ces, status,
                            optimizer_steps=steps)

    def fuse(self, logits: dict[str, torch.Tensor], fused_logits: torch.Tensor) -> torch.Tensor:
        """Entropy-weighted fusion of the shared head's outputs."""
        return entropy_fusion(logits)

    def state_dict(self) -> dict[str, Any]:
        """The projector and the number of updates so far."""
        return {"projector": self.projector.cpu(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the projector."""
        if "projector" in state:
            self.projector = state["projector"].to(self.projector.device)
            self.updates = int(state["updates"])
