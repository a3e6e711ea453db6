"""``ogm-ge``: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss


def ogm_ge_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM-GE's modulation coefficient k(m) of every modality (Peng et al. 2022, Eq. 10).

    With the score s(m) = sum over the batch of softmax(out_m)[y] (out_m: the fusion head's output
    restricted to m's features, plus its share of the bias), the discrepancy ratio is
    rho(m) = s(m) / s(other) for two modalities (ours for M > 2: s(m) / mean of the others), and
    k(m) = 1 - tanh(alpha * rho(m)) when rho(m) > 1 (the leading modality is slowed), else 1.
    """
    M = scores.numel()
    if M < 2:
        raise ValueError("OGM-GE needs at least two modalities")
    others = (scores.sum() - scores) / (M - 1)
    ratio = scores / others.clamp_min(1e-12)
    return torch.where(ratio > 1, 1 - torch.tanh(alpha * F.relu(ratio)), torch.ones_like(ratio))


class OGMGE(Method):
    """On-the-fly gradient modulation with generalisation enhancement (Peng et al., CVPR 2022).

    After the backward pass of the fusion CE, every weight tensor (dim >= 2) of modality m's
    encoder gets grad <- k(m) grad + N(0, std(grad)^2) (the GE noise; OGM without it). The
    authors' code modulates convolution kernels only; our encoders include MLPs, so every weight
    tensor of the encoder is modulated and biases are left alone.

    Args:
        alpha: the modulation strength; 0.8 as in the authors' published run scripts.
        ge: add the generalisation-enhancement noise (OGM-GE); False gives plain OGM.
        aux: add DUS's unimodal losses on each modality's own samples (not part of OGM-GE itself).
    """

    name = "ogm-ge"

    def __init__(self, alpha: float = 0.8, ge: bool = True, aux: bool = False) -> None:
        if not alpha > 0:
            raise ConfigError(f"ogm-ge alpha must be > 0, got {alpha}")
        self.alpha, self.ge, self.aux = float(alpha), bool(ge), bool(aux)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Seed the GE noise (its own generator on the learner's device: no global RNG is touched)."""
        super().setup(model, modalities, device, seed)
        self.generator = torch.Generator(device=device).manual_seed(seed + 7919)

    def scores(self, model: nn.Module, encoded: dict[str, torch.Tensor], n_paired: int,
               target: torch.Tensor) -> torch.Tensor:
        """s(m) of every modality on the paired samples, from the fusion head split by modality."""
        weight, bias = model.fusion.weight.detach(), model.fusion.bias.detach()
        M, start, scores = len(self.modalities), 0, []
        for m in self.modalities:
            h = encoded[m][:n_paired].detach().float()
            out = h @ weight[:, start : start + h.shape[1]].float().T + bias.float() / M
            start += h.shape[1]
            scores.append(out.softmax(1).gather(1, target.view(-1, 1)).sum())
        return torch.stack(scores)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the fusion CE (and monitors), then modulate each encoder's gradients."""
        out = forward(ctx, batch, self.modalities, detach_heads=not self.aux)
        encoded = out.encoded
        loss = total_loss(out, batch, self.modalities, weighted=self.aux)
        loss.backward()
        if batch.n_paired > 0:
            coefficients = ogm_ge_coefficients(
                self.scores(ctx.model, encoded, batch.n_paired, batch.paired_target), self.alpha)
            for k, m in enumerate(self.modalities):
                for p in ctx.model.encoders[m].parameters():
                    if p.grad is None or p.dim() < 2:
                        continue
                    grad = p.grad * coefficients[k]
                    if self.ge and p.grad.numel() > 1:
                        std = p.grad.std() + 1e-8
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
