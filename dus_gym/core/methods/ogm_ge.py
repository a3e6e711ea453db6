"""``ogm-ge``: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022."""

from __future__ import annotations

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
    in_window,
    modality_scores,
    total_loss,
)

PARAMETER_RULES = ("auto", "conv", "weights")
"""Which parameters of an encoder OGM-GE modulates (``params``)."""


def ogm_ge_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM-GE's modulation coefficient k(m) of every modality (Peng et al. 2022, Eq. 10).

    With the score s(m) = sum over the batch of softmax(out_m)[y] (out_m: the fusion head's output
    restricted to m's features), the discrepancy ratio is rho(m) = s(m) / s(other) for two
    modalities (ours for M > 2: s(m) / mean of the others), and k(m) = 1 - tanh(alpha * rho(m))
    when rho(m) > 1 (the leading modality is slowed), else 1.
    """
    M = scores.numel()
    if M < 2:
        raise ValueError("OGM-GE needs at least two modalities")
    others = (scores.sum() - scores) / (M - 1)
    ratio = scores / others.clamp_min(1e-12)
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * F.relu(ratio)), torch.ones_like(ratio))


def noise_scale(n_paired: int, batch_size: int) -> float:
    """The GE noise's scale for a paired batch of ``n_paired`` samples: min(1, sqrt(n_paired / B)).

    The noise's std is the spread of the batch gradient's entries; with fewer than B paired
    samples that spread grows as 1 / sqrt(n_paired), and so would the noise. Scaling by
    sqrt(n_paired / B) gives it the spread of a batch of B (the authors' batch), and leaves the
    authors' noise unchanged whenever at least B samples are paired.
    """
    return min(1.0, (n_paired / batch_size) ** 0.5)


def modulated_parameters(encoder: nn.Module, rule: str) -> list[nn.Parameter]:
    """The parameters of ``encoder`` that OGM-GE modulates under ``rule``.

    - ``conv``: convolution kernels (tensors of 3 or more dimensions; the authors' code modulates
      the 4-d kernels of its ResNet-18s, each followed by BatchNorm);
    - ``weights``: every weight tensor (2 or more dimensions; biases left alone, as BalanceBenchmark);
    - ``auto``: ``conv`` for an encoder with convolution kernels, else ``weights`` (an MLP).
    """
    params = [p for p in encoder.parameters() if p.requires_grad]
    kernels = [p for p in params if p.dim() >= 3]
    if rule == "conv" or (rule == "auto" and kernels):
        return kernels
    return [p for p in params if p.dim() >= 2]


class OGMGE(Method):
    """On-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

    After the backward pass of the fusion CE, within the modulation window, every modulated
    parameter of modality m's encoder (see :func:`modulated_parameters`) gets
    grad <- k(m) grad + N(0, (c std(grad))^2): the coefficient of :func:`ogm_ge_coefficients` and
    the GE noise (OGM without it), with c = :func:`noise_scale` (1 when at least B samples are
    paired). Outside the window the fusion gradient is left as it is (joint training).

    Args:
        alpha: the modulation strength; 0.8 as in the authors' published run scripts.
        ge: add the generalisation-enhancement noise (OGM-GE); False gives plain OGM.
        aux: add DUS's unimodal losses on each modality's own samples (not part of OGM-GE itself).
        start: the window's start, as a fraction of the run's budget.
        end: the window's end (exclusive), as a fraction of the budget; 0.5: epochs 0-50 of 100
            in the authors' scripts.
        params: which encoder parameters are modulated: "auto", "conv" or "weights" (see
            :func:`modulated_parameters`).
    """

    name = "ogm-ge"
    fusions = ("concat", "sum")

    def __init__(self, alpha: float = 0.8, ge: bool = True, aux: bool = False, start: float = 0.0,
                 end: float = 0.5, params: str = "auto") -> None:
        if not alpha > 0:
            raise ConfigError(f"ogm-ge alpha must be > 0, got {alpha}")
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"ogm-ge needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        if params not in PARAMETER_RULES:
            raise ConfigError(f"ogm-ge params must be one of {list(PARAMETER_RULES)}, got '{params}'")
        self.alpha, self.ge, self.aux = float(alpha), bool(ge), bool(aux)
        self.start, self.end, self.params = float(start), float(end), params

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Seed the GE noise (its own generator on the learner's device: no global RNG is touched)."""
        super().setup(model, modalities, device, seed)
        self.generator = torch.Generator(device=device).manual_seed(seed + 7919)
        self.modulated = {m: modulated_parameters(model.encoders[m], self.params) for m in modalities}

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the fusion CE (and monitors), then modulate each encoder's gradients in the window."""
        out = forward(ctx, batch, self.modalities, detach_heads=not self.aux)
        loss = total_loss(out, batch, self.modalities, weighted=self.aux)
        loss.backward()
        if batch.n_paired > 0 and in_window(batch.progress, self.start, self.end):
            paired = [out.encoded[m][: batch.n_paired] for m in self.modalities]
            coefficients = ogm_ge_coefficients(modality_scores(ctx.model, paired, batch.paired_target), self.alpha)
            scale = noise_scale(batch.n_paired, batch.batch_size) if batch.batch_size else 1.0
            for k, m in enumerate(self.modalities):
                for p in self.modulated[m]:
                    if p.grad is None:
                        continue
                    grad = p.grad * coefficients[k]
                    if self.ge and p.grad.numel() > 1:
                        std = scale * (p.grad.std() + 1e-8)
                        grad = grad + torch.randn(p.grad.shape, generator=self.generator, device=p.grad.device,
                                                  dtype=p.grad.dtype) * std
                    p.grad = grad
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """The noise generator's state (for an exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the noise generator."""
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())

