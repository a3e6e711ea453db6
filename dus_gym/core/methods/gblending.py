"""``g-blending``: Wang, Tran, Feiszli, "What Makes Training Multi-Modal Classification Networks Hard?", CVPR 2020."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward


def blending_weights(previous: dict[str, torch.Tensor], current: dict[str, torch.Tensor],
                     eps: float = 1e-8) -> torch.Tensor | None:
    """Gradient-Blending weights of the heads from two measurements of their train and validation losses.

    For each head k: the generalisation gain G_k = L_val(before) - L_val(after) (0 when the validation
    loss rose), the overfitting change O_k = (L_val - L_train)(after) - (L_val - L_train)(before), and
    w_k = G_k / (O_k^2 + eps), normalised to sum to 1 (Wang et al. 2020, Eq. 6). None when no head gained.

    Args:
        previous: {"train": (K,), "val": (K,)} losses of the K heads before their training.
        current: the same after it.
        eps: added to O_k^2 (a head whose overfitting did not change would get an infinite weight).
    """
    gain = (previous["val"] - current["val"]).clamp_min(0.0)
    overfit = (current["val"] - current["train"]) - (previous["val"] - previous["train"])
    raw = gain / (overfit**2 + eps)
    total = raw.sum()
    return raw / total if total > 0 else None


def super_epoch_iterations(super_epoch: int, n_train: int, batch_size: int) -> int:
    """Learner iterations in ``super_epoch`` epochs of uniform sampling: round(super_epoch n_train / B), at least 1.

    Uniform sampling draws B samples of every modality per iteration, one epoch every n_train / B
    iterations; a super-epoch counted in iterations is the same for every sampler (the heuristic's
    data walk, which draws max_m n(m) > B samples per iteration, would finish epochs sooner).
    """
    return max(1, round(super_epoch * n_train / batch_size))


class GBlending(Method):
    """Gradient-Blending (Wang et al., CVPR 2020): a weighted sum of the heads' losses.

    loss = w_fusion CE(fusion head, paired samples) + sum_m w_m w(m) CE(head_m, m's own samples).
    ``weights`` fixes the w (used as given, as the authors' code takes its audio, visual and AV
    weights). By default they are estimated online (the paper's online G-Blend): at the start of
    every super-epoch (learner iterations 0, L, 2L, ... with L = :func:`super_epoch_iterations`),
    for each head k a copy of the current model is trained on head k's CE alone for L iterations
    (B samples of the training split per iteration, in the method's own shuffled order, a fresh
    optimiser of the learner's kind and learning rate), each head's CE is measured on the training
    and validation splits (eval mode) before and after, and :func:`blending_weights` turns the
    changes into the weights of the next super-epoch. The copies are discarded. An estimate costs
    (M + 1) L extra training iterations plus the measurements.

    Args:
        super_epoch: epochs of uniform sampling per super-epoch (10 as in BalanceBenchmark's online G-Blending).
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
        """The fixed weights (or equal ones until the first estimate); the estimation data's own generator."""
        super().setup(model, modalities, device, seed)
        K = len(modalities) + 1
        if self.fixed is not None and len(self.fixed) != K:
            raise ConfigError(f"g-blending weights need {K} entries (one per modality {list(modalities)}, then the "
                              f"fusion head), got {self.fixed}")
        self.weights = torch.tensor(self.fixed) if self.fixed is not None else torch.full((K,), 1.0 / K)
        self.iterations = 0
        """Learner iterations done (one :meth:`step` per iteration)."""
        self.generator = torch.Generator().manual_seed(seed + 7919)

    @torch.no_grad()
    def head_losses(self, ctx: StepContext, model: nn.Module, encoders: dict[str, nn.Module],
                    split_name: str) -> torch.Tensor:
        """(M + 1,) mean CE of every unimodal head, then of the fusion head, of ``model`` on a split (eval mode)."""
        training = model.training
        model.eval()
        sums, n = torch.zeros(len(self.modalities) + 1, dtype=torch.float64), 0
        for features, labels in ctx.batches(ctx.splits[split_name]):
            with ctx.autocast():
                encoded = [encoders[m](features[m]) for m in self.modalities]
                logits = [model.heads[m](h) for m, h in zip(self.modalities, encoded, strict=True)]
                logits.append(model.fuse(encoded))
            for k, out in enumerate(logits):
                sums[k] += float(F.cross_entropy(out.float(), labels, reduction="sum"))
            n += len(labels)
        model.train(training)
        return sums / max(n, 1)

    def training_batches(self, ctx: StepContext, n_iterations: int,
                         batch_size: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """``n_iterations`` batches of ``batch_size`` training samples, walking fresh shuffles of the split in turn.

        Each shuffle is read through ``ctx.batches`` (one pass, with the loader's workers for on-disk
        data) and cut into batches, a batch continuing into the next shuffle where one runs out.
        """
        split = ctx.splits["train"]
        xs: list[dict[str, torch.Tensor]] = []
        ys: list[torch.Tensor] = []
        held = made = 0
        while made < n_iterations:
            order = torch.randperm(len(split), generator=self.generator)[: (n_iterations - made) * batch_size - held]
            for features, labels in ctx.batches(split.subset(order)):
                xs.append(features)
                ys.append(labels)
                held += len(labels)
                while held >= batch_size:
                    x = {m: torch.cat([part[m] for part in xs]) for m in self.modalities}
                    y = torch.cat(ys)
                    yield {m: v[:batch_size] for m, v in x.items()}, y[:batch_size]
                    made += 1
                    xs, ys, held = [{m: v[batch_size:] for m, v in x.items()}], [y[batch_size:]], held - batch_size

    def train_head(self, ctx: StepContext, k: int, n_iterations: int, batch_size: int) -> nn.Module:
        """A copy of the model trained on head k's CE alone (k < M: modality k's head, k = M: the fusion head)."""
        model = copy.deepcopy(ctx.model)
        model.train()
        source = ctx.optimizer
        # the learner's optimiser class with its current hyper-parameters (lr after the schedule), as one param group:
        # the constructor's keywords differ between classes and torch versions, a group's keys do not
        group = {key: value for key, value in source.param_groups[0].items() if key != "params"}
        optimizer = type(source)([{**group, "params": list(model.parameters())}])
        for features, labels in self.training_batches(ctx, n_iterations, batch_size):
            with ctx.autocast():
                if k < len(self.modalities):
                    m = self.modalities[k]
                    logits = model.heads[m](model.encoders[m](features[m]))
                else:
                    logits = model.fuse([model.encoders[m](features[m]) for m in self.modalities])
            F.cross_entropy(logits.float(), labels).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return model

    def estimate(self, ctx: StepContext, n_iterations: int, batch_size: int) -> torch.Tensor | None:
        """The weights from each head trained alone for ``n_iterations`` from the current model (None: none gained)."""
        before = {s: self.head_losses(ctx, ctx.model, ctx.encoders, s) for s in ("train", "val")}
        after = {s: torch.zeros_like(before[s]) for s in before}
        for k in range(len(self.modalities) + 1):
            trained = self.train_head(ctx, k, n_iterations, batch_size)
            for s in after:
                after[s][k] = self.head_losses(ctx, trained, dict(trained.encoders.items()), s)[k]
        return blending_weights(before, after)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Re-estimate the weights at a super-epoch boundary (online), then back-propagate the weighted losses."""
        B = batch.batch_size or max(len(t) for t in batch.targets.values())
        period = super_epoch_iterations(self.super_epoch, len(ctx.splits["train"]), B)
        if self.fixed is None and self.iterations % period == 0:
            estimate = self.estimate(ctx, period, B)
            if estimate is not None:
                self.weights = estimate.float()
        self.iterations += 1
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
        """The current weights, the iterations done and the estimation data's generator."""
        return {"weights": self.weights.clone(), "iterations": self.iterations, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint of an earlier version restores its weights only)."""
        if "weights" in state:
            self.weights = state["weights"].float().cpu()
        if "iterations" in state:
            self.iterations = int(state["iterations"])
            self.generator.set_state(state["generator"].cpu())
