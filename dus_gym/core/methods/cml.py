"""``cml``: Ma et al., "Calibrating Multimodal Learning", ICML 2023 (CML)."""

from __future__ import annotations

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
    total_loss,
)


def removal_order(n_modalities: int, seed: int, epoch: int) -> list[int]:
    """The order in which CML removes the modalities during one epoch of the data walk.

    A random permutation drawn once per epoch (as BalanceBenchmark's CML trainer shuffles its
    modality list at each epoch's start), from a generator seeded by (seed, epoch): no state to
    checkpoint, the same order after a resume.
    """
    generator = torch.Generator().manual_seed(seed * 100003 + epoch + 15485863)
    return torch.randperm(n_modalities, generator=generator).tolist()


def confidence_penalty(more: torch.Tensor, fewer: torch.Tensor, target: torch.Tensor,
                       margin: float = 0.0) -> torch.Tensor:
    """CML's regulariser for one removal: sum over samples of relu(conf(fewer) - conf(more) - margin).

    conf is the largest softmax probability of the logits with more / fewer modalities. As in the
    authors' training loop (``miwae/train.py``), a sample is left out when the prediction with
    fewer modalities is right and the one with more is wrong; when both are wrong, conf(more) is
    detached (only the prediction with fewer modalities is pushed down).
    """
    conf_more, pred_more = more.float().softmax(1).max(1)
    conf_fewer, pred_fewer = fewer.float().softmax(1).max(1)
    right_more, right_fewer = pred_more == target, pred_fewer == target
    both_wrong = ~right_more & ~right_fewer
    anchor = torch.where(both_wrong, conf_more.detach(), conf_more)
    counted = (right_more | both_wrong).float()
    return F.relu((conf_fewer - anchor) * counted - margin).sum()


class CML(Method):
    """Calibrating multimodal learning (Ma et al., ICML 2023).

    Within the window, on the paired samples: the modalities are removed one at a time in a random
    order (:func:`removal_order`; a removed modality's features are zeroed before the fusion head,
    for concatenation exactly BalanceBenchmark's logits minus m's part plus bias/M), giving logits
    f_0 (all modalities), f_1, ..., f_{M-1}; the loss is
    (1/M) sum_k CE(f_k, y) + lam sum_k :func:`confidence_penalty` (f_{k-1}, f_k): a prediction's
    confidence must not rise when a modality is removed. Outside the window, the fusion CE. The
    unimodal heads learn on detached features (CMD monitors), as with ``joint``.

    Args:
        lam: weight of the confidence regulariser; 0.1 as BalanceBenchmark (the authors' README
            runs beta = 10, i.e. 10/100).
        margin: the tolerance margin epsilon of the authors' code (0.0 there).
        start: the window's start, as a fraction of the budget.
        end: the window's end (exclusive); 1.0: BalanceBenchmark's window (epochs 0-80) covers its
            30-epoch runs.
    """

    name = "cml"

    def __init__(self, lam: float = 0.1, margin: float = 0.0, start: float = 0.0, end: float = 1.0) -> None:
        if not lam >= 0:
            raise ConfigError(f"cml lam must be >= 0, got {lam}")
        if not margin >= 0:
            raise ConfigError(f"cml margin must be >= 0, got {margin}")
        if not 0.0 <= start <= end <= 1.0:
            raise ConfigError(f"cml needs 0 <= start <= end <= 1 (fractions of the budget), got {start}, {end}")
        self.lam, self.margin, self.start, self.end = float(lam), float(margin), float(start), float(end)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Keep the seed (the removal order of every epoch derives from it)."""
        super().setup(model, modalities, device, seed)
        self.seed = seed

    def removed_logits(self, model: nn.Module, features: list[torch.Tensor], order: list[int]) -> list[torch.Tensor]:
        """f_0, ..., f_{M-1}: the fused logits with the first k modalities of ``order`` zeroed."""
        logits, current = [], list(features)
        logits.append(model.fuse(current))
        for k in order[:-1]:
            current[k] = torch.zeros_like(current[k])
            logits.append(model.fuse(current))
        return logits

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Backward of the CML loss (in the window) or of the fusion CE, and of the monitor heads' CEs."""
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        if batch.n_paired == 0 or not in_window(batch.progress, self.start, self.end):
            loss = total_loss(out, batch, self.modalities, weighted=False)
        else:
            n, y = batch.n_paired, batch.paired_target
            order = removal_order(len(self.modalities), self.seed, batch.epoch)
            with ctx.autocast():
                logits = self.removed_logits(ctx.model, [out.encoded[m][:n] for m in self.modalities], order)
            ce = sum(F.cross_entropy(f.float(), y) for f in logits) / len(logits)
            penalty = sum(confidence_penalty(more, fewer, y, self.margin)
                          for more, fewer in zip(logits[:-1], logits[1:], strict=True))
            loss = ce + self.lam * penalty + sum(out.unimodal_losses.values())
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)
