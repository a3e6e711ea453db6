"""``mmpareto``: Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance", ICML 2024."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss


def mmpareto_weights(g_multi: torch.Tensor, g_uni: torch.Tensor) -> torch.Tensor:
    """MMPareto's weights (a_mm, a_u) of the multimodal and unimodal gradients of one encoder.

    Without conflict (cosine > 0) the weights are equal, 1/2 each; with conflict they are the
    min-norm point of the segment between the two gradients: a_mm = ((g_u - g_mm) . g_u) / |g_mm - g_u|^2,
    clipped to [0, 1] (Wei and Hu 2024, Alg. 1).
    """
    cosine = F.cosine_similarity(g_multi, g_uni, dim=0)
    diff = g_multi - g_uni
    a_mm = ((g_uni - g_multi) @ g_uni) / (diff @ diff).clamp_min(1e-20)
    a_mm = torch.where(cosine > 0, torch.full_like(a_mm, 0.5), a_mm.clamp(0.0, 1.0))
    return torch.stack([a_mm, 1 - a_mm])


class MMPareto(Method):
    """Pareto integration of the multimodal and unimodal gradients of each encoder (ICML 2024).

    For modality m's encoder, with g_mm the gradient of the fusion CE and g_u that of m's unimodal
    loss: h = 2 (a_mm g_mm + a_u g_u) (weights from :func:`mmpareto_weights`), then per parameter
    tensor h <- gamma * max(1, |g_mm + g_u| / |h|) * h, so the step is never smaller than plain
    summation's (the authors' implementation). Heads get the plain gradient of the summed loss.

    Args:
        gamma: the magnitude factor; 1.5 as in the authors' implementation.
    """

    name = "mmpareto"

    def __init__(self, gamma: float = 1.5) -> None:
        if not gamma > 0:
            raise ConfigError(f"mmpareto gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """One gradient pass per loss (fusion, then each modality's), then the Pareto combination."""
        out = forward(ctx, batch, self.modalities, detach_heads=False)
        ces, fusion = out.unimodal_losses, out.fusion_loss
        loss = total_loss(out, batch, self.modalities, weighted=True)
        if batch.n_paired == 0:  # nothing to integrate: a modality trains alone
            loss.backward()
            return MethodOutput(loss, fusion, ces, out.status)
        model = ctx.model
        encoder = {m: [p for p in model.encoders[m].parameters() if p.requires_grad] for m in self.modalities}
        fusion_params = [p for m in self.modalities for p in encoder[m]] + list(model.fusion.parameters())
        g_fusion = dict(zip(fusion_params, _fill(torch.autograd.grad(fusion, fusion_params, retain_graph=True,
                                                                     allow_unused=True), fusion_params),
                            strict=True))
        for p in model.fusion.parameters():
            p.grad = g_fusion[p]
        for i, m in enumerate(ces):
            params = encoder[m] + list(model.heads[m].parameters())
            g_uni = _fill(torch.autograd.grad(batch.weights[m] * ces[m], params, retain_graph=i < len(ces) - 1,
                                              allow_unused=True), params)
            for p, g in zip(params[len(encoder[m]) :], g_uni[len(encoder[m]) :], strict=True):
                p.grad = g
            g_mm, g_u = [g_fusion[p] for p in encoder[m]], g_uni[: len(encoder[m])]
            a = mmpareto_weights(torch.cat([g.flatten() for g in g_mm]), torch.cat([g.flatten() for g in g_u]))
            for p, gm, gu in zip(encoder[m], g_mm, g_u, strict=True):
                new = 2 * (a[0] * gm + a[1] * gu)
                scale = ((gm + gu).norm() / new.norm().clamp_min(1e-20)).clamp_min(1.0)
                p.grad = self.gamma * scale * new
        return MethodOutput(loss, fusion, ces, out.status)


def _fill(grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
