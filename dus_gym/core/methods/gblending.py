"""``g-blending``: Wang, Tran, Feiszli, "What Makes Training Multi-Modal Classification Networks Hard?", CVPR 2020."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward


def blending_weights(previous: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                     eps: float = 1e-8) -> torch.Tensor | None:
    """Gradient-Blending weights of the heads from two measurements of their train and validation losses.

    For each head k: the generalisation gain G_k = L_val(before) - L_val(now) (0 when the validation
    loss rose), the overfitting change O_k = (L_val - L_train)(now) - (L_val - L_train)(before), and
    w_k = G_k / (O_k^2 + eps), normalised to sum to 1 (Wang et al. 2020, Eq. 6). None when no head gained.

    Args:
        previous: {"train": (K,), "val": (K,)} losses of the K heads at the earlier measurement.
        current: the same now.
        eps: added to O_k^2 (a head whose overfitting did not change would get an infinite weight).
    """
    gain = (previous["val"] - current["val"]).clamp_min(0.0)
    overfit = (current["val"] - current["train"]) - (previous["val"] - previous["train"])
    raw = gain / (overfit**2 + eps)
    total = raw.sum()
    return raw / total if total > 0 else None


class GBlending(Method):
    """Gradient-Blending (Wang et al., CVPR 2020): a weighted sum of the heads' losses.

    loss = w_fusion CE(fusion head, paired samples) + sum_m w_m w(m) CE(head_m, m's own samples),
    with the weights summing to 1. ``weights`` fixes them (the authors' code takes them as
    settings: audio, visual and AV weights); by default they are estimated online: every
    ``super_epoch`` epochs of the data walk, each head's CE is measured on the training split and on
    the validation split (eval mode), and :func:`blending_weights` turns the change since the last
    measurement into the new weights (equal weights before the first estimate).

    Args:
        super_epoch: epochs between two weight estimates (10 as in BalanceBenchmark's online G-Blending).
        weights: fixed weights, one per modality then the fusion head (None: estimated online).
    """

    name = "g-blending"

    def __init__(self, super_epoch: int = 10, weights: tuple[float, ...] | None = None) -> None:
        if super_epoch < 1:
            raise ConfigError(f"g-blending super_epoch must be >= 1, got {super_epoch}")
        if weights is not None and (min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(f"g-blending weights must be non-negative with a positive sum, got {list(weights)}")
        self.super_epoch = int(super_epoch)
        self.fixed = None if weights is None else [float(w) for w in weights]

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Equal weights (or the fixed ones) until the first estimate."""
        super().setup(model, modalities, device, seed)
        K = len(modalities) + 1
        if self.fixed is not None and len(self.fixed) != K:
            raise ConfigError(f"g-blending weights need {K} entries (one per modality {list(modalities)}, then the "
                              f"fusion head), got {self.fixed}")
        fixed = torch.tensor(self.fixed) if self.fixed is not None else torch.full((K,), 1.0 / K)
        self.weights = fixed / fixed.sum()
        self.measured: dict[str, torch.Tensor] | None = None
        self.next_epoch = 0

    @torch.no_grad()
    def head_losses(self, ctx: StepContext, split_name: str) -> torch.Tensor:
        """(M + 1,) mean CE of every unimodal head, then of the fusion head, on a split (eval mode)."""
        model = ctx.model
        training = model.training
        model.eval()
        sums, n = torch.zeros(len(self.modalities) + 1, dtype=torch.float64), 0
        for features, labels in ctx.batches(ctx.splits[split_name]):
            with ctx.autocast():
                encoded = [ctx.encoders[m](features[m]) for m in self.modalities]
                logits = [model.heads[m](h) for m, h in zip(self.modalities, encoded, strict=True)]
                logits.append(model.fuse(encoded))
            for k, out in enumerate(logits):
                sums[k] += float(F.cross_entropy(out.float(), labels, reduction="sum"))
            n += len(labels)
        model.train(training)
        return sums / max(n, 1)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Re-estimate the weights at a super-epoch boundary (online), then back-propagate the weighted losses."""
        if self.fixed is None and batch.epoch >= self.next_epoch:
            current = {"train": self.head_losses(ctx, "train"), "val": self.head_losses(ctx, "val")}
            if self.measured is not None:
                estimate = blending_weights(self.measured, current)
                if estimate is not None:
                    self.weights = estimate.float()
            self.measured = current
            self.next_epoch = batch.epoch + self.super_epoch
        out = forward(ctx, batch, self.modalities, detach_heads=False)
        device = out.fusion_loss.device
        w = self.weights.to(device)
        loss = torch.zeros((), device=device)
        for k, m in enumerate(self.modalities):
            if m in out.unimodal_losses:
                loss = loss + w[k] * batch.weights[m] * out.unimodal_losses[m]
        if batch.n_paired > 0:
            loss = loss + w[-1] * out.fusion_loss
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """The current weights, the last measurement and the epoch of the next one."""
        state: dict[str, Any] = {"weights": self.weights.clone(), "next_epoch": self.next_epoch}
        if self.measured is not None:
            state["measured"] = {k: v.clone() for k, v in self.measured.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "weights" in state:
            self.weights = state["weights"].float().cpu()
            self.next_epoch = int(state["next_epoch"])
            self.measured = ({k: v.double().cpu() for k, v in state["measured"].items()}
                             if "measured" in state else None)
