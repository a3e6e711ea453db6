"""Balancing methods: how one iteration's losses and gradients are formed (DUS is a plug-in to them).

A method receives the iteration's per-modality batches (the sampler's counts, DESIGN.md §2) and
leaves gradients for the optimiser, or steps the optimiser itself (``mla``). Every method works
with every sampler. Those that train only on the paired part (``joint``, ``ogm-ge`` without
``aux``) see the counts through the paired batch size min_m n(m); the extra samples of a modality
then only train its unimodal head on detached features, which keeps the CMD measurable.

- ``joint``: CE of the concatenation fusion head only.
- ``unimodal-aux``: fusion CE + sum_m w(m) CE(head_m) on m's own samples (DUS's base; the default).
- ``ogm-ge``: Peng et al., "Balanced Multimodal Learning via On-the-fly Gradient Modulation", CVPR 2022.
- ``mmpareto``: Wei and Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
  Assistance", ICML 2024.
- ``mla``: Zhang et al., "Multimodal Representation Learning by Alternating Unimodal Adaptation",
  CVPR 2024.

Formulas are implemented from the papers (and the authors' published hyper-parameters); the
pure functions (:func:`ogm_ge_coefficients`, :func:`mmpareto_weights`, :func:`mla_projector_update`,
:func:`entropy_fusion`) are unit-tested on hand-made numbers.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.config import ConfigError, checked_kwargs, did_you_mean


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
        logits: per modality, its head's logits on its own samples (for the learning status).
        stepped: True when the method already stepped the optimiser (the learner then does not).
    """

    loss: torch.Tensor
    fusion_loss: torch.Tensor
    unimodal_losses: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]
    stepped: bool = False


class Method(ABC):
    """Base class: forms the gradients of one iteration (subclasses define :meth:`step`)."""

    name: ClassVar[str] = ""
    shared_head: ClassVar[bool] = False
    """True when all modalities share one classification head (the model is built that way)."""

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

    # helpers shared by the methods below
    @staticmethod
    def _nan(device: torch.device) -> torch.Tensor:
        return torch.full((), float("nan"), device=device)

    def _forward(self, ctx: StepContext, batch: IterationBatch, detach_heads: bool
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Encoded features, unimodal logits and CEs on own samples, and the fusion CE on the paired part."""
        model = ctx.model
        encoded, logits, ces = {}, {}, {}
        device = next(iter(batch.targets.values())).device
        fusion = self._nan(device)
        with ctx.autocast():
            for m, x in batch.inputs.items():
                encoded[m] = ctx.encoders[m](x)
                logits[m] = model.heads[m](encoded[m].detach() if detach_heads else encoded[m])
                ces[m] = F.cross_entropy(logits[m].float(), batch.targets[m])
            if batch.n_paired > 0:
                paired = torch.cat([encoded[m][: batch.n_paired] for m in self.modalities], dim=1)
                fusion = F.cross_entropy(model.fusion(paired).float(), batch.paired_target)
        return encoded, logits, ces, fusion


class UnimodalAux(Method):
    """Fusion CE on the paired samples + sum_m w(m) CE of head m on m's own samples (DUS's base)."""

    name = "unimodal-aux"

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """One backward pass of the summed loss."""
        _, logits, ces, fusion = self._forward(ctx, batch, detach_heads=False)
        loss = _total([batch.weights[m] * ce for m, ce in ces.items()], fusion, batch)
        loss.backward()
        return MethodOutput(loss, fusion, ces, logits)


class Joint(Method):
    """Fusion CE only; the unimodal heads learn on detached features (monitors for the CMD)."""

    name = "joint"

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the fusion CE (encoders, fusion head) and of the monitor heads' CEs (heads only)."""
        _, logits, ces, fusion = self._forward(ctx, batch, detach_heads=True)
        loss = _total(list(ces.values()), fusion, batch)
        loss.backward()
        return MethodOutput(loss, fusion, ces, logits)


def _total(terms: list[torch.Tensor], fusion: torch.Tensor, batch: IterationBatch) -> torch.Tensor:
    """Sum of the unimodal terms, plus the fusion CE when some sample is paired (no device sync)."""
    total = sum(terms, torch.zeros((), device=fusion.device))
    return total + fusion if batch.n_paired > 0 else total


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
        encoded, logits, ces, fusion = self._forward(ctx, batch, detach_heads=not self.aux)
        terms = [batch.weights[m] * ce for m, ce in ces.items()] if self.aux else list(ces.values())
        loss = _total(terms, fusion, batch)
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
        return MethodOutput(loss, fusion, ces, logits)

    def state_dict(self) -> dict[str, Any]:
        """The noise generator's state (for an exact resume)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the noise generator."""
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())


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
        _, logits, ces, fusion = self._forward(ctx, batch, detach_heads=False)
        loss = _total([batch.weights[m] * ce for m, ce in ces.items()], fusion, batch)
        if batch.n_paired == 0:  # nothing to integrate: a modality trains alone
            loss.backward()
            return MethodOutput(loss, fusion, ces, logits)
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
        return MethodOutput(loss, fusion, ces, logits)


def _fill(grads: tuple[torch.Tensor | None, ...], params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def mla_projector_update(projector: torch.Tensor, features: torch.Tensor, alpha: float) -> torch.Tensor:
    """MLA's gradient-modification projector after a batch (recursive orthogonal projection).

    With r the batch's mean feature (1 x d) and k = P r^T: P <- P - k k^T / (alpha + r k), then
    P <- P / |P|_F (the authors' implementation normalises by the Frobenius norm).
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
    but the very first, the shared head's weight gradient is projected with P (see
    :func:`mla_projector_update`, alpha = 0.1^(1 + position in the epoch) as in the authors' code)
    so that a modality's update disturbs the others' less. At evaluation the modalities are fused
    by :func:`entropy_fusion`; the concatenation fusion head is not used.
    """

    name = "mla"
    shared_head = True

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """The projector starts as the identity over the shared feature size."""
        super().setup(model, modalities, device, seed)
        dims = {int(model.encoders[m].out_dim) for m in modalities}
        self.projector = torch.eye(dims.pop(), device=device)
        self.updates = 0

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """One optimiser step per modality (a modality whose loss is NaN/inf is not stepped)."""
        head = ctx.model.heads[self.modalities[0]]
        logits, ces, total = {}, {}, []
        alpha = 0.1 ** (1 + batch.epoch_fraction)
        for m, x in batch.inputs.items():
            ctx.optimizer.zero_grad(set_to_none=True)
            with ctx.autocast():
                h = ctx.encoders[m](x)
                logits[m] = head(h)
                ces[m] = F.cross_entropy(logits[m].float(), batch.targets[m])
            loss = batch.weights[m] * ces[m]
            loss.backward()
            if self.updates > 0:
                self.projector = mla_projector_update(self.projector, h.detach(), alpha)
                head.weight.grad = head.weight.grad @ self.projector.T.to(head.weight.grad.dtype)
            self.updates += 1
            total.append(loss.detach())
            if math.isfinite(float(loss.detach())):
                ctx.optimizer.step()
        ctx.optimizer.zero_grad(set_to_none=True)
        device = batch.paired_target.device if batch.paired_target is not None else self.projector.device
        return MethodOutput(sum(total, torch.zeros((), device=device)), self._nan(device), ces, logits, stepped=True)

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


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Joint, UnimodalAux, OGMGE, MMPareto, MLA)}
"""Registered methods by name."""


def make_method(name: str, **kwargs: Any) -> Method:
    """Build a registered method; one clear error for an unknown name or keyword."""
    if name not in METHODS:
        lower = name.lower()
        close = f" (did you mean '{lower}'?)" if lower in METHODS else did_you_mean(lower, METHODS)
        raise ConfigError(f"unknown method '{name}'{close}; choose from {sorted(METHODS)}")
    try:
        checked = checked_kwargs(METHODS[name], kwargs, "learner.method_kwargs")
    except ConfigError as err:
        raise ConfigError(f"{err} (method '{name}')") from err
    if any(isinstance(v, float) and not math.isfinite(v) for v in checked.values()):
        raise ConfigError(f"learner.method_kwargs of method '{name}' must be finite numbers, got {checked}")
    return METHODS[name](**checked)
