"""``mbsd``: the MBSD objective of BalanceBenchmark's toolkit (``balancemm/trainer/MBSD_trainer.py``).

The BalanceBenchmark survey (Xu et al., arXiv 2502.10816) lists it as an objective method of Liu et
al., 2023; that paper's own code was not found, so BalanceBenchmark's trainer is the reference.
"""

from __future__ import annotations

from itertools import combinations

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
)


def part_logits(model: nn.Module, modalities: tuple[str, ...], encoded: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """z_m = h_m W_m^T + b_m for every modality present in ``encoded``, on all of its own samples.

    (W_m, b_m) is the part of the fusion head that reads m (:func:`~dus_gym.core.methods.base.fusion_parts`),
    so z_m needs only m's features: a modality's extra samples get logits too.
    """
    parts = fusion_parts(model, [int(model.encoders[m].out_dim) for m in modalities])
    return {m: encoded[m] @ w.to(encoded[m].dtype).T + b.to(encoded[m].dtype)
            for m, (w, b) in zip(modalities, parts, strict=True) if m in encoded}


def mbsd_pair_loss(z_a: torch.Tensor, z_b: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MBSD's term of two modalities on paired samples: mean_i w_i ((1/C) |z_a - z_b|^2 + KL_i).

    With p_a, p_b the softmax probabilities of the true class, p_s = max and p_w = min of them:
    w_i = p_s - p_w = |p_a - p_b| when either modality's argmax is the true class, else 0; and
    KL_i = p_s log(p_s / p_w), the KL of the stronger from the weaker modality's true-class
    probability, i.e. F.kl_div(log p_w, p_s) with log-probabilities as the input, as F.kl_div
    expects (BalanceBenchmark passes the probabilities themselves: F.kl_div(p_s, p_w)).
    Nothing is detached, as in BalanceBenchmark: w_i, p_s and p_w all carry gradients.
    """
    z_a, z_b = z_a.float(), z_b.float()
    column = target.view(-1, 1)
    log_a = z_a.log_softmax(1).gather(1, column).squeeze(1)
    log_b = z_b.log_softmax(1).gather(1, column).squeeze(1)
    log_strong, log_weak = torch.maximum(log_a, log_b), torch.minimum(log_a, log_b)
    strong, weak = log_strong.exp(), log_weak.exp()
    either_right = (z_a.argmax(1) == target) | (z_b.argmax(1) == target)
    weight = torch.where(either_right, strong - weak, torch.zeros_like(strong))
    gap = (z_a - z_b).pow(2).mean(1)
    kl = strong * (log_strong - log_weak)
    return (weight * (gap + kl)).mean()


def mbsd_loss(logits: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """:func:`mbsd_pair_loss` averaged over every pair of modalities (one pair for M = 2)."""
    pairs = list(combinations(range(len(logits)), 2))
    if not pairs:
        raise ValueError("MBSD needs at least two modalities")
    return sum(mbsd_pair_loss(logits[i], logits[j], target) for i, j in pairs) / len(pairs)


class MBSD(Method):
    """MBSD (BalanceBenchmark's ``MBSD_trainer``): unimodal CEs and a sample-weighted distillation between modalities.

    Within the window: fusion CE on the paired samples + sum_m w(m) CE(z_m, y) on m's own samples,
    z_m the fusion head's logits restricted to m's features (:func:`part_logits`), + the pairwise
    term :func:`mbsd_loss` on the paired samples. Outside it, the fusion CE alone. The unimodal
    heads learn on detached features (CMD monitors), as with ``joint``.

    Args:
        start: the window's start, as a fraction of the budget.
        end: the window's end (exclusive); 1.0: BalanceBenchmark's window (epochs 0-80) covers its
            budget (30 epochs).
    """

    name = "mbsd"
    fusions = ("concat", "sum")

    def __init__(self, start: float = 0.0, end: float = 1.0) -> None:
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"mbsd needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        self.start, self.end = float(start), float(end)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Check there are pairs of modalities."""
        super().setup(model, modalities, device, seed)
        if len(modalities) < 2:
            raise ConfigError("mbsd needs at least two modalities")

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Fusion CE and monitors; in the window also the unimodal CEs and the pairwise term."""
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        device = out.fusion_loss.device
        loss = sum(out.unimodal_losses.values(), torch.zeros((), device=device))
        if batch.n_paired > 0:
            loss = loss + out.fusion_loss
        if in_window(batch.progress, self.start, self.end):
            with ctx.autocast():
                logits = part_logits(ctx.model, self.modalities, out.encoded)
            for m, z in logits.items():
                loss = loss + batch.weights[m] * F.cross_entropy(z.float(), batch.targets[m])
            if batch.n_paired > 0:
                loss = loss + mbsd_loss([logits[m][: batch.n_paired] for m in self.modalities], batch.paired_target)
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
