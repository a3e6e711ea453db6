"""``lfm``: Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality Gap".

NeurIPS 2024; the authors' code: github.com/njustkmg/NeurIPS24-LFM, ``Crema_epoch_learnable.py`` (the
learnable strategy).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, modality_logits

ALIGNMENT_BOUNDS = (0.05, 0.95)
"""The range the alignment weight is clipped to after every update (the authors' code)."""


def mixture_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """The authors' alignment term of two modalities' logits: 0.5 (KL(r || p) + KL(r || q)), r = (p + q) / 2.

    p and q are the softmax of the logits; each KL is summed over the classes and averaged over the
    samples (``batchmean``). This is what the authors' ``Alignment`` computes: it passes log p as
    F.kl_div's input and r as its target, and F.kl_div(input, target) is KL(target || exp(input)).
    It is therefore the reverse of the Jensen-Shannon divergence 0.5 (KL(p || r) + KL(q || r)) its
    name suggests (both are 0 exactly when p = q). Log-probabilities come from log_softmax, so a
    class whose probability underflows gives no inf (the authors take log(softmax)).
    """
    log_p, log_q = p_logits.float().log_softmax(1), q_logits.float().log_softmax(1)
    mixture = 0.5 * (log_p.exp() + log_q.exp())
    entropy_term = torch.xlogy(mixture, mixture)  # r log r, 0 where r = 0 (as F.kl_div)
    kl_p = (entropy_term - mixture * log_p).sum(1).mean()
    kl_q = (entropy_term - mixture * log_q).sum(1).mean()
    return 0.5 * (kl_p + kl_q)


def alignment_loss(logits: list[torch.Tensor]) -> torch.Tensor:
    """:func:`mixture_divergence` averaged over every pair of modalities (BalanceBenchmark's rule for M > 2)."""
    pairs = list(combinations(range(len(logits)), 2))
    if not pairs:
        raise ValueError("LFM's alignment needs at least two modalities")
    return sum(mixture_divergence(logits[i], logits[j]) for i, j in pairs) / len(pairs)


def curvature_signal(classification: torch.Tensor, total: torch.Tensor, params: list[torch.Tensor]) -> float:
    """The authors' alpha gradient: the mean entry of (H g)[0], on the first parameter tensor.

    H is the Hessian of ``total`` over ``params``, g the gradient of ``classification`` (taken as a
    constant vector); only the block of the first parameter is read, as the authors'
    ``hessian_vector_prod[0].mean()``, so only that block is formed (one double backward pass).
    """
    first = torch.autograd.grad(total, params, create_graph=True, allow_unused=True)
    direction = torch.autograd.grad(classification, params, retain_graph=True, allow_unused=True)
    pairs = [(g, d) for g, d in zip(first, direction, strict=True)
             if g is not None and d is not None and g.requires_grad]
    if not pairs:
        return 0.0
    inner = sum((g * d.detach()).sum() for g, d in pairs)
    (block,) = torch.autograd.grad(inner, [params[0]], allow_unused=True)
    return 0.0 if block is None else float(block.mean())


class LFM(Method):
    """Dynamically learning the modality gap (Yang et al., NeurIPS 2024), as in the authors' learnable strategy.

    On the paired samples, with z_m the fusion head's logits restricted to m's features (the
    authors' per-modality classifiers, :func:`~dus_gym.core.methods.base.modality_logits`), the loss is
    2 ((1 - alpha) CE(mean_m z_m, y) + alpha A), A the alignment of :func:`alignment_loss` (the
    authors' cls_k = [1 - alpha, alpha]). The fused logits mean_m z_m (the authors' 0.5 o_a + 0.5 o_v)
    are used in training and at evaluation. Once per epoch of the data walk, before its first
    iteration, the alignment weight alpha is moved by one step on a fixed validation batch:
    alpha <- clip(alpha - lr_alpha * :func:`curvature_signal`, 0.05, 0.95), with lr_alpha halved at
    every multiple of ``halve_every`` epochs; the validation batch is ``val_samples`` samples drawn
    once from the validation split (encoders in eval mode, full precision). The unimodal heads learn
    on detached features (CMD monitors), as with ``joint``.

    Args:
        alpha: the alignment weight at the start; 0.95 as in the authors' code (cls_k = [0.05, 0.95]).
        lr_alpha: the step size of alpha's update; 1e-4 as in the authors' code.
        halve_every: lr_alpha is halved at every multiple of this many epochs; 20 as in the authors' code.
        val_samples: the size of the validation batch; 8 as in the authors' code (half of 16 samples).
    """

    name = "lfm"
    fusions = ("concat", "sum")

    def __init__(self, alpha: float = 0.95, lr_alpha: float = 1e-4, halve_every: int = 20,
                 val_samples: int = 8) -> None:
        low, high = ALIGNMENT_BOUNDS
        if not low <= alpha <= high:
            raise ConfigError(f"lfm alpha must be in [{low}, {high}] (the alignment weight's range), got {alpha}")
        if not lr_alpha >= 0:
            raise ConfigError(f"lfm lr_alpha must be >= 0, got {lr_alpha}")
        if halve_every < 1:
            raise ConfigError(f"lfm halve_every must be >= 1 (epochs), got {halve_every}")
        if val_samples < 1:
            raise ConfigError(f"lfm val_samples must be >= 1, got {val_samples}")
        self.alpha, self.lr_alpha = float(alpha), float(lr_alpha)
        self.halve_every, self.val_samples = int(halve_every), int(val_samples)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """No update yet; the validation batch is drawn at the first one with the method's own generator."""
        super().setup(model, modalities, device, seed)
        if len(modalities) < 2:
            raise ConfigError("lfm needs at least two modalities")
        self.generator = torch.Generator().manual_seed(seed + 7907)
        self.val_index: torch.Tensor | None = None
        self.updated_epoch: int | None = None

    def fusion_logits(self, model: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        """mean_m z_m: the fusion head's logits divided by M (training and evaluation)."""
        return model.fuse(features) / len(features)

    def validation_batch(self, ctx: StepContext) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The fixed validation batch (drawn at the first call) on the learner's device."""
        split = ctx.splits.get("val")
        if split is None or len(split) == 0 or ctx.batches is None:
            raise ValueError("lfm updates its alignment weight on the validation split; the learner gave none")
        if self.val_index is None:
            self.val_index = torch.randperm(len(split), generator=self.generator)[: self.val_samples]
        chunks = list(ctx.batches(split.subset(self.val_index)))
        features = {m: torch.cat([c[0][m] for c in chunks]) for m in self.modalities}
        return features, torch.cat([c[1] for c in chunks])

    def update_alpha(self, ctx: StepContext, epoch: int) -> None:
        """One step of alpha on the validation batch (lr_alpha first halved at each multiple of halve_every passed)."""
        features, labels = self.validation_batch(ctx)
        model = ctx.model
        training = model.training
        model.eval()
        params = [p for m in self.modalities for p in model.encoders[m].parameters() if p.requires_grad]
        params += [p for p in model.fusion.parameters() if p.requires_grad]
        encoded = [model.encoders[m](features[m]) for m in self.modalities]  # plain modules: double backward
        classification = F.cross_entropy(self.fusion_logits(model, encoded).float(), labels)
        total = (1 - self.alpha) * classification + self.alpha * alignment_loss(modality_logits(model, encoded))
        signal = curvature_signal(classification, total, params)
        model.train(training)
        last = 0 if self.updated_epoch is None else self.updated_epoch
        self.lr_alpha /= 2 ** max(0, epoch // self.halve_every - last // self.halve_every)
        low, high = ALIGNMENT_BOUNDS
        self.alpha = min(max(self.alpha - self.lr_alpha * signal, low), high)
        self.updated_epoch = epoch

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Update alpha at a new epoch; then 2 ((1 - alpha) fused CE + alpha alignment) (paired samples); monitors."""
        if batch.epoch != self.updated_epoch:
            self.update_alpha(ctx, batch.epoch)
        out = forward(ctx, batch, self.modalities, detach_heads=True, fuse=self.fusion_logits)
        loss = sum(out.unimodal_losses.values(), torch.zeros((), device=out.fusion_loss.device))
        if batch.n_paired > 0:
            with ctx.autocast():
                parts = modality_logits(ctx.model, [out.encoded[m][: batch.n_paired] for m in self.modalities])
            loss = loss + 2 * ((1 - self.alpha) * out.fusion_loss + self.alpha * alignment_loss(parts))
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """alpha, its step size, the epoch of the last update and the validation batch's indices."""
        state: dict[str, Any] = {"alpha": self.alpha, "lr_alpha": self.lr_alpha, "updated_epoch": self.updated_epoch}
        if self.val_index is not None:
            state["val_index"] = self.val_index.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "alpha" in state:
            self.alpha, self.lr_alpha = float(state["alpha"]), float(state["lr_alpha"])
            self.updated_epoch = None if state["updated_epoch"] is None else int(state["updated_epoch"])
            self.val_index = state["val_index"].cpu() if "val_index" in state else None
