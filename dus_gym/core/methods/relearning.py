"""``relearning``: Wei et al., "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV 2024."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, forward, total_loss

INITS = ("initial", "fresh")
"""What the encoders are softly re-initialised towards (``init``)."""


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Every feature column mapped linearly onto [-1, 1] (scikit-learn's MinMaxScaler; a constant column -> -1)."""
    low, high = x.min(0).values, x.max(0).values
    span = torch.where(high - low > 0, high - low, torch.ones_like(high))
    return (x - low) / span * 2 - 1


def kmeans(x: torch.Tensor, k: int, generator: torch.Generator, max_iter: int = 300, tol: float = 1e-4
           ) -> torch.Tensor:
    """Cluster of every row of ``x`` (n, d) by k-means: k-means++ seeding, then Lloyd's iterations.

    As scikit-learn's KMeans with one initialisation (``n_init`` "auto" with k-means++): it stops
    when the labels no longer change or the centres moved by at most ``tol`` times the mean
    variance of the columns (squared shift summed over the centres), after ``max_iter``
    iterations at most. The seeding draws from ``generator`` (plain k-means++: each next centre
    with probability proportional to the squared distance to the nearest centre chosen so far); a
    cluster left empty keeps its centre.
    """
    x = x.double()
    n = len(x)
    k = min(k, n)
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [x[first]]
    nearest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total > 0:
            pick = int(torch.multinomial(nearest / total, 1, generator=generator))
        else:  # every row sits on a centre: any row will do
            pick = int(torch.randint(n, (1,), generator=generator))
        centres.append(x[pick])
        nearest = torch.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    centres = torch.stack(centres)
    threshold = tol * float(x.var(0, unbiased=False).mean())
    labels = torch.cdist(x, centres).argmin(1)
    for _ in range(max_iter):
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        moved = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        new_labels = torch.cdist(x, centres).argmin(1)
        if torch.equal(new_labels, labels) or shift <= threshold:
            labels = new_labels
            break
        labels = new_labels
    return labels


def purity(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Share of the samples whose class is the most frequent class of their cluster (the authors' purity score)."""
    table = torch.zeros(int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    table.index_put_((clusters.long(), labels.long()), torch.ones_like(labels, dtype=torch.long), accumulate=True)
    return float(table.max(1).values.sum()) / len(labels)


def relearning_strength(train_purity: float, val_purity: float, move_lambda: float) -> float:
    """The re-initialisation strength alpha = tanh(lambda |purity(train) - purity(val)|) (the authors' code)."""
    return math.tanh(move_lambda * abs(train_purity - val_purity))


def fresh_parameters(encoder: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A fresh initialisation of ``encoder``'s parameters: ``reset_parameters()`` of every submodule of a CPU copy.

    The copy is initialised under the CPU generator seeded with ``seed``, inside ``fork_rng``, so
    no global random state changes. A parameter of a module without ``reset_parameters`` keeps its
    current value.
    """
    clone = copy.deepcopy(encoder).to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return {name: p.detach() for name, p in clone.named_parameters()}


class Relearning(Method):
    """Diagnosing and re-learning (Wei et al., ECCV 2024).

    The loss is the fusion CE (joint training; the unimodal heads learn on detached features, as
    CMD monitors). Once ``period`` + 1 epochs of the data walk are done, and every ``period``
    epochs after, ``count`` times at most (the authors re-initialise after epochs 20, 40 and 60,
    counted from 0), every modality is diagnosed: its encoder's features on the training split and
    on the validation split (eval mode) are min-max scaled column by column to [-1, 1] and
    clustered by k-means into as many clusters as classes (:func:`kmeans`); the purity of each
    clustering (:func:`purity`) gives the strength alpha(m) = tanh(move_lambda |P_train - P_val|),
    and every parameter of encoder m becomes alpha(m) theta_init + (1 - alpha(m)) theta. A
    modality whose features generalise (similar purity on both splits) is barely touched; one
    that separates the training data much better than unseen data is pulled back towards its
    initialisation. The optimiser's state is kept.

    Args:
        move_lambda: lambda of the strength; 3 as in the authors' script (``--move_lambda 3``).
        period: epochs between two re-initialisations; 20 as in that script (``--reinit_epoch``).
        count: re-initialisations at most; 3 as in that script (``--reinit_num``).
        init: what theta_init is: "initial", the encoder's parameters when the learner was built
            (the authors' saved initial state), or "fresh", a new initialisation of the encoder's
            modules drawn at each re-initialisation with the method's own seeded generator.
    """

    name = "relearning"

    def __init__(self, move_lambda: float = 3.0, period: int = 20, count: int = 3, init: str = "initial") -> None:
        if not move_lambda >= 0:
            raise ConfigError(f"relearning move_lambda must be >= 0, got {move_lambda}")
        if period < 1:
            raise ConfigError(f"relearning period must be >= 1 (epochs), got {period}")
        if count < 0:
            raise ConfigError(f"relearning count must be >= 0, got {count}")
        if init not in INITS:
            raise ConfigError(f"relearning init must be one of {list(INITS)}, got '{init}'")
        self.move_lambda, self.period, self.count, self.init = float(move_lambda), int(period), int(count), init

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """Keep the encoders' initial parameters ("initial"); seed the method's own generator."""
        super().setup(model, modalities, device, seed)
        self.n_classes = int(next(iter(model.heads.values())).out_features)
        self.device = device
        self.generator = torch.Generator().manual_seed(seed + 15485863)
        self.initial: dict[str, dict[str, torch.Tensor]] | None = None
        if self.init == "initial" and self.count > 0:
            self.initial = {m: {n: p.detach().clone() for n, p in model.encoders[m].named_parameters()}
                            for m in modalities}
        self.done = 0
        self.strengths: dict[str, float] = {}
        """alpha(m) of the last re-initialisation."""

    @torch.no_grad()
    def features(self, ctx: StepContext, split_name: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every encoder's features on a split (eval mode, on the CPU in float64) and the labels."""
        model = ctx.model
        training = model.training
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        labels = []
        for x, y in ctx.batches(ctx.splits[split_name]):
            with ctx.autocast():
                for m in self.modalities:
                    parts[m].append(ctx.encoders[m](x[m]).double().cpu())
            labels.append(y.cpu())
        model.train(training)
        return {m: torch.cat(p) for m, p in parts.items()}, torch.cat(labels)

    def diagnose(self, ctx: StepContext) -> dict[str, float]:
        """alpha(m) of every modality from the purity of its clustered features on the training and validation split."""
        purities = {}
        for split_name in ("train", "val"):
            features, labels = self.features(ctx, split_name)
            for m in self.modalities:
                clusters = kmeans(minmax_scale(features[m]), self.n_classes, self.generator)
                purities[split_name, m] = purity(labels, clusters)
        return {m: relearning_strength(purities["train", m], purities["val", m], self.move_lambda)
                for m in self.modalities}

    @torch.no_grad()
    def relearn(self, ctx: StepContext, strengths: dict[str, float]) -> None:
        """Mix every parameter of every encoder with its initialisation: alpha theta_init + (1 - alpha) theta."""
        for m in self.modalities:
            encoder = ctx.model.encoders[m]
            if self.init == "initial":
                target = self.initial[m]
            else:
                target = fresh_parameters(encoder, int(torch.randint(2**62, (1,), generator=self.generator)))
            alpha = strengths[m]
            for name, p in encoder.named_parameters():
                p.mul_(1 - alpha).add_(target[name].to(p.device, p.dtype), alpha=alpha)

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Diagnose and re-initialise when a period has passed, then the fusion CE (and the monitors)."""
        if self.done < self.count and batch.epoch >= self.period * (self.done + 1) + 1:
            self.strengths = self.diagnose(ctx)
            self.relearn(ctx, self.strengths)
            self.done += 1
            if self.done == self.count:
                self.initial = None  # no longer needed
        out = forward(ctx, batch, self.modalities, detach_heads=True)
        loss = total_loss(out, batch, self.modalities, weighted=False)
        loss.backward()
        return MethodOutput(loss, out.fusion_loss, out.unimodal_losses, out.status)

    def state_dict(self) -> dict[str, Any]:
        """Re-initialisations done, the last strengths, the generator and, while needed, the initial parameters."""
        state: dict[str, Any] = {"done": self.done, "strengths": dict(self.strengths),
                                 "generator": self.generator.get_state()}
        if self.initial is not None:
            state["initial"] = {m: {n: p.cpu() for n, p in params.items()} for m, params in self.initial.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "generator" not in state:
            return
        self.generator.set_state(state["generator"].cpu())
        self.done = int(state["done"])
        self.strengths = {m: float(a) for m, a in state["strengths"].items()}
        if "initial" in state:
            self.initial = {m: {n: p.to(self.device) for n, p in params.items()}
                            for m, params in state["initial"].items()}
        elif self.done >= self.count:
            self.initial = None
