"""``sample``: Wei et al., "Enhancing Multimodal Cooperation via Sample-level Modality Valuation", CVPR 2024."""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dus_gym.core.config import ConfigError
from dus_gym.core.methods.base import IterationBatch, Method, MethodOutput, StepContext, nan_scalar
from dus_gym.core.objectives import head_terms
from dus_gym.core.task import MultimodalSplit

COPY_BINS = ((1.0, 0), (0.4, 1), (-0.1, 2))
"""(lower bound, copies) of the authors' re-sampling bins, highest first; a contribution below the last bound gets 3."""


def sample_contributions(correct: dict[frozenset[int], torch.Tensor], n_modalities: int) -> torch.Tensor:
    """Each sample's Shapley value of every modality, (n, M), from which coalitions predict it correctly.

    ``correct[S]`` (n,) says whether the fused prediction with only the modalities in S (the others'
    features zeroed) is right. The value of a coalition is v(S) = |S| when it is right, else 0 (the
    authors' code: 1 for one modality, 2 for both), so v(empty) = 0 and the values of a sample sum
    to M when all modalities together are right: a modality's fair share is 1. For two modalities,
    phi(a) = (v(a) + v(a, v) - v(v)) / 2, the authors' formula.
    """
    M = n_modalities
    n = len(next(iter(correct.values())))
    values = {s: len(s) * c.double() for s, c in correct.items()}
    values[frozenset()] = torch.zeros(n, dtype=torch.float64, device=next(iter(correct.values())).device)
    phi = []
    for m in range(M):
        others = [k for k in range(M) if k != m]
        total = torch.zeros_like(values[frozenset()])
        for size in range(M):
            weight = math.factorial(size) * math.factorial(M - size - 1) / math.factorial(M)
            for subset in combinations(others, size):
                s = frozenset(subset)
                total = total + weight * (values[s | {m}] - values[s])
        phi.append(total)
    return torch.stack(phi, 1)


def resample_copies(contributions: torch.Tensor) -> torch.Tensor:
    """How many extra copies of a sample train each modality: the authors' bins of its contribution.

    1 or more (the fair share): none; in (0.4, 1): 1; in (-0.1, 0.4]: 2; -0.1 or less: 3. The
    authors' bins are open at 0.4 and -0.1, values no contribution takes with two or three
    modalities (multiples of 1/2 and 1/6).
    """
    copies = torch.full(contributions.shape, 3, dtype=torch.long, device=contributions.device)
    for bound, count in reversed(COPY_BINS):
        copies = torch.where(contributions > bound, torch.full_like(copies, count), copies)
    return torch.where(contributions >= 1.0, torch.zeros_like(copies), copies)


class SampleLevel(Method):
    """Sample-level modality valuation and re-sampling (Wei et al., CVPR 2024).

    The loss is the fusion CE (joint training; the unimodal heads learn on detached features, as
    CMD monitors). From epoch ``warmup`` on, at the first iteration of every epoch, each training
    sample's contribution of every modality (:func:`sample_contributions`, eval mode, the others'
    features zeroed) sets how many extra copies of the sample train that modality
    (:func:`resample_copies`); a copy passes only that modality's features to the fusion head (the
    others zeroed), as the authors' re-sampled data set does. The copies, shuffled with the
    method's own generator, are spread over the epoch's iterations: an iteration whose window holds
    max_m n(m) samples adds max_m n(m) x (copies / training samples) of them (the remainder carried
    on). The loss is the fusion CE on the paired samples plus the sum of the copies' fusion CEs
    divided by B: every sample weighs 1/B, as in the authors' batches of B drawn from the enlarged
    data set, so an epoch carries the authors' gradient mass for the originals and for the copies
    (in N/B optimiser steps rather than their (N + copies)/B).

    Args:
        warmup: epochs of plain joint training before the first valuation; 5 as in the authors' script.
    """

    name = "sample"

    def __init__(self, warmup: int = 5) -> None:
        if warmup < 0:
            raise ConfigError(f"sample warmup must be >= 0 (epochs), got {warmup}")
        self.warmup = int(warmup)

    def setup(self, model: nn.Module, modalities: tuple[str, ...], device: torch.device, seed: int) -> None:
        """No valuation yet; the copies are shuffled with the method's own generator."""
        super().setup(model, modalities, device, seed)
        self.generator = torch.Generator().manual_seed(seed + 1299709)
        self.valued_epoch = -1
        self.copy_index = torch.zeros(0, dtype=torch.long)
        self.copy_modality = torch.zeros(0, dtype=torch.long)
        self.cursor = 0
        self.owed = 0.0
        self.copies_per_sample = 0.0
        self.contribution = torch.zeros(len(modalities), dtype=torch.float64)
        """Mean contribution of every modality over the training split at the last valuation."""

    @torch.no_grad()
    def valuate(self, ctx: StepContext) -> torch.Tensor:
        """(N, M) contributions of every modality to every training sample (eval mode)."""
        model = ctx.model
        training = model.training
        model.eval()
        M = len(self.modalities)
        parts = []
        for features, labels in ctx.batches(ctx.splits["train"]):
            with ctx.autocast():
                encoded = [ctx.encoders[m](features[m]) for m in self.modalities]
                correct = {}
                for size in range(1, M + 1):
                    for subset in combinations(range(M), size):
                        kept = [h if k in subset else torch.zeros_like(h) for k, h in enumerate(encoded)]
                        logits = self.fusion_logits(model, kept).float()
                        correct[frozenset(subset)] = logits.argmax(1) == labels
            parts.append(sample_contributions(correct, M).cpu())
        model.train(training)
        return torch.cat(parts)

    def plan_copies(self, contributions: torch.Tensor) -> None:
        """The epoch's extra copies, (sample, modality) pairs in a shuffled order, and the share per sample."""
        copies = resample_copies(contributions)
        n = len(contributions)
        samples = torch.arange(n)
        index = torch.cat([samples.repeat_interleave(copies[:, k]) for k in range(copies.shape[1])])
        modality = torch.cat([torch.full((int(copies[:, k].sum()),), k, dtype=torch.long)
                              for k in range(copies.shape[1])])
        order = torch.randperm(len(index), generator=self.generator)
        self.copy_index, self.copy_modality = index[order], modality[order]
        self.cursor, self.owed = 0, 0.0
        self.copies_per_sample = len(index) / n
        self.contribution = contributions.mean(0)

    def take_copies(self, window: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The copies of this iteration: window x copies per sample of them, in order (none once all are used)."""
        self.owed += window * self.copies_per_sample
        take = int(self.owed)
        self.owed -= take
        end = min(self.cursor + take, len(self.copy_index))
        index, modality = self.copy_index[self.cursor : end], self.copy_modality[self.cursor : end]
        self.cursor = end
        return index, modality

    def copy_inputs(self, ctx: StepContext, index: torch.Tensor, modality: torch.Tensor
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per modality with copies, their inputs and labels from the training split (on the learner's device)."""
        split = ctx.splits["train"]
        out = {}
        for k, m in enumerate(self.modalities):
            rows = index[modality == k]
            if len(rows) == 0:
                continue
            alone = MultimodalSplit({m: split.features[m]}, split.labels).subset(rows)
            chunks = list(ctx.batches(alone))
            out[m] = (torch.cat([x[m] for x, _ in chunks]), torch.cat([y for _, y in chunks]))
        return out

    def step(self, ctx: StepContext, batch: IterationBatch) -> MethodOutput:
        """Value the training split at a new epoch (after the warm-up); fusion CE over paired samples and copies."""
        if batch.epoch >= self.warmup and batch.epoch != self.valued_epoch:
            self.plan_copies(self.valuate(ctx))
            self.valued_epoch = batch.epoch
        window = max(len(y) for y in batch.targets.values())
        copies = self.copy_inputs(ctx, *self.take_copies(window)) if self.copies_per_sample > 0 else {}
        model = ctx.model
        device = next(iter(batch.targets.values())).device
        own, extra, ces, status = {}, {}, {}, {}
        with ctx.autocast():
            for m in self.modalities:
                parts = ([batch.inputs[m]] if m in batch.inputs else []) + ([copies[m][0]] if m in copies else [])
                if not parts:
                    continue
                # with copies the batch size varies: the plain module (a compiled encoder has static shapes)
                encoder = model.encoders[m] if m in copies else ctx.encoders[m]
                h = encoder(torch.cat(parts) if len(parts) > 1 else parts[0])
                n_own = len(batch.targets[m]) if m in batch.inputs else 0
                own[m], extra[m] = h[:n_own], h[n_own:]
                if n_own:
                    ces[m], status[m] = head_terms(model.heads[m](own[m].detach()), batch.targets[m])
            fused = []
            if batch.n_paired > 0:
                fused.append(self.fusion_logits(model, [own[m][: batch.n_paired] for m in self.modalities]))
            for m in copies:
                h = extra[m]
                features = [h if k == m else h.new_zeros(len(h), int(model.encoders[k].out_dim))
                            for k in self.modalities]
                fused.append(self.fusion_logits(model, features))
        loss = sum(ces.values(), torch.zeros((), device=device))
        fusion_loss = nan_scalar(device)
        if batch.n_paired > 0:
            fusion_loss = F.cross_entropy(fused[0].float(), batch.paired_target)
            loss = loss + fusion_loss
        if copies:  # each copy weighs 1/B, as one sample of the authors' batches of B
            logits = torch.cat([x.float() for x in fused[1 if batch.n_paired > 0 else 0 :]])
            labels = torch.cat([y for _, y in copies.values()])
            loss = loss + F.cross_entropy(logits, labels, reduction="sum") / (batch.batch_size or window)
        loss.backward()
        return MethodOutput(loss, fusion_loss, ces, status)

    def state_dict(self) -> dict[str, Any]:
        """The epoch of the last valuation, its shuffled copies and how far they are used, and the generator."""
        return {"valued_epoch": self.valued_epoch, "generator": self.generator.get_state(),
                "copy_index": self.copy_index.clone(), "copy_modality": self.copy_modality.clone(),
                "cursor": self.cursor, "owed": self.owed, "copies_per_sample": self.copies_per_sample,
                "contribution": self.contribution.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if "generator" not in state:
            return
        self.generator.set_state(state["generator"].cpu())
        self.valued_epoch = int(state["valued_epoch"])
        self.copy_index = state["copy_index"].long().cpu()
        self.copy_modality = state["copy_modality"].long().cpu()
        self.cursor, self.owed = int(state["cursor"]), float(state["owed"])
        self.copies_per_sample = float(state["copies_per_sample"])
        self.contribution = state["contribution"].double().cpu()
