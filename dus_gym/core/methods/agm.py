"""``agm``: Li et al., "Boosting Multi-modal Model Performance with Adaptive Gradient Modulation", ICCV 2023."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, in_window, total_loss


def agm_responses(values: dict[frozenset[int], torch.Tensor], n_modalities: int) -> list[torch.Tensor]:
    """Each modality's mono-modal response: its Shapley value of the fused logits plus v(none) / M.

    ``values[S]`` are the fused logits with the modalities outside S masked (their inputs zeroed).
    For two modalities this is the authors' 0.5 (f(a, v) - f(0, v) + f(a, 0)) for a; the responses
    sum to the unmasked logits f(all).
    """
    M = n_modalities
    everyone = frozenset(range(M))
    responses = []
    for m in range(M):
        others = [k for k in range(M) if k != m]
        phi = values[frozenset()] / M
        for size in range(M):
            weight = math.factorial(size) * math.factorial(M - size - 1) / math.factorial(M)
            for subset in combinations(others, size):
                s = frozenset(subset)
                phi = phi + weight * (values[s | {m}] - values[s])
        responses.append(phi)
    if everyone not in values:
        raise ValueError("values must hold the unmasked logits (all modalities)")
    return responses


def agm_scores(responses: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """score(m): mean over the samples of -log softmax(response_m)[y], the probability floored at 1e-8."""
    return torch.stack([-(r.float().softmax(1).gather(1, target.view(-1, 1)).clamp_min(1e-8)).log().mean()
                        for r in responses])


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float) -> torch.Tensor:
    """AGM's modulation coefficient of every modality (the authors' code).

    ratio(m) = exp(mean of the others' scores - score(m)); its target, the same ratio of the running
    means of the scores over training; coeff(m) = exp(alpha * min(target(m) - ratio(m), 10)). For two
    modalities, "the mean of the others" is the other one, as in the authors' code.
    """
    M = scores.numel()
    others = (scores.sum() - scores) / (M - 1)
    running_others = (running.sum() - running) / (M - 1)
    ratio = torch.exp(others - scores)
    target = torch.exp(running_others - running)
    return torch.exp(alpha * torch.clamp(target - ratio, max=10.0))


class AGM(Method):
    """Adaptive gradient modulation (Li et al., ICCV 2023).

    On the paired samples, the fused logits f(all) and the logits with each set of modalities
    masked (inputs zeroed, encoders in eval mode, as the authors do) give each modality's response
    (:func:`agm_responses`) and its score (:func:`agm_scores`). Within the window, the fusion CE
    keeps its value CE(f(all), y) but back-propagates as if the logits were sum_m coeff(m) response_m
    (:func:`agm_coefficients`): each modality's share of the gradient is scaled by its coefficient.
    Then, as in the authors' code, when an entry of the fusion head's weight gradients leaves
    [-1, 1], the gradients of the encoders and the fusion head are clipped to norm 1. The running
    means of the scores (from 0) are updated after every iteration with paired samples. The
    unimodal heads learn on detached features (CMD monitors), as with ``joint``.

    Args:
        alpha: the modulation strength; 1.0, the default of the authors' code.
        start: the window's start, as a fraction of the budget.
        end: the window's end (exclusive); 1.0: the authors' default window (epochs 0-20) covers
            their default budget (10 epochs).
    """

    name = "agm"

    def __init__(self, alpha: float = 1.0, start: float = 0.0, end: float = 1.0) -> None:
        if not alpha > 0:
            raise ConfigError(f"agm alpha must be > 0, got {alpha}")
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"agm needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        self.alpha, self.start, self.end = float(alpha), float(start), float(end)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Running means of the scores start at 0."""
        super().setup(model, modalities, device, seed)
        self.running = torch.zeros(len(modalities), dtype=torch.float64)
        self.updates = 0

    def masked_logits(self, ctx: StepContext, batch: IterationBatch, encoded: dict[str, torch.Tensor]
                      ) -> dict[frozenset[int], torch.Tensor]:
        """Fused logits of the paired samples for every subset of modalities (the others' inputs zeroed)."""
        n, model = batch.n_paired, ctx.model
        M = len(self.modalities)
        values = {frozenset(range(M)): model.fuse([encoded[m][:n] for m in self.modalities])}
        model.eval()
        with ctx.autocast():
            present = [ctx.encoders[m](batch.inputs[m][:n]) for m in self.modalities]
            absent = [ctx.encoders[m](torch.zeros_like(batch.inputs[m][:1])).expand(n, -1) for m in self.modalities]
            for size in range(M):
                for subset in combinations(range(M), size):
                    features = [present[k] if k in subset else absent[k] for k in range(M)]
                    values[frozenset(subset)] = model.fuse(features)
        model.train()
        return values

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Fusion CE with each modality's gradient share scaled by its coefficient (in the window); monitors."""
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        if batch.n_paired == 0:  # nothing is fused: a modality trains its monitor head alone
            loss = total_loss(out, batch, self.modalities, weighted=False)
            loss.backward()
            return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
        values = self.masked_logits(ctx, batch, out.encoded)
        responses = agm_responses(values, len(self.modalities))
        with torch.no_grad():
            scores = agm_scores(responses, batch.paired_target).double().cpu()
        coefficients = agm_coefficients(scores, self.running, self.alpha)
        self.updates += 1
        self.running = self.running * (self.updates - 1) / self.updates + scores / self.updates
        fused = values[frozenset(range(len(self.modalities)))]
        if in_window(batch.progress, self.start, self.end):
            coefficients = coefficients.to(fused.device, fused.dtype)
            surrogate = sum(c * r for c, r in zip(coefficients, responses, strict=True))
            fused = surrogate + (fused - surrogate).detach()  # the value of f(all), the gradient of the surrogate
        fusion_ce = F.cross_entropy(fused.float(), batch.paired_target)
        monitors = sum(out.unimodal_losses.values())
        loss = fusion_ce + monitors
        loss.backward()
        model = ctx.model
        weights = [p for p in model.fusion.parameters() if p.dim() >= 2 and p.grad is not None]
        if any(bool((p.grad.abs() > 1).any()) for p in weights):
            clipped = [p for m in self.modalities for p in model.encoders[m].parameters()]
            nn.utils.clip_grad_norm_(clipped + list(model.fusion.parameters()), max_norm=1.0)
        return MethodOutput(loss, fusion_ce.detach(), out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """The running means of the scores and their count."""
        return {"running": self.running.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "running" in state:
            self.running = state["running"].double().cpu()
            self.updates = int(state["updates"])
