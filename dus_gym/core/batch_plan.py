"""From per-modality counts to the sample indices each modality trains on (docs/method.md).

One shared shuffled order of the training indices; the window at the cursor holds max_m n(m)
indices; modality m takes the first n(m) of them; the fusion loss takes the first min_m n(m)
(the paired samples); the cursor then advances by max_m n(m). A window that runs past the end of
the order continues into a fresh shuffle (the next epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class BatchPlan:
    """The indices of one learner iteration.

    Args:
        window: the training indices at the cursor, ``max(counts)`` of them.
        counts: per-modality counts, in the task's modality order.
    """

    window: torch.Tensor
    counts: tuple[int, ...]

    @property
    def n_paired(self) -> int:
        """Samples seen by every modality, which the fusion loss uses (min of the counts)."""
        return min(self.counts)

    def modality_indices(self, k: int) -> torch.Tensor:
        """Indices modality ``k`` trains on: the first ``counts[k]`` of the window."""
        return self.window[: self.counts[k]]

    @property
    def paired_indices(self) -> torch.Tensor:
        """Indices of the fusion loss: the first ``n_paired`` of the window."""
        return self.window[: self.n_paired]


class BatchPlanner:
    """Walks one shared shuffled order of ``n_train`` indices, reshuffled at each epoch.

    Args:
        n_train: number of training samples.
        generator: the torch generator that draws the orders (owned by the caller, seeded).
    """

    def __init__(self, n_train: int, generator: torch.Generator) -> None:
        if n_train < 1:
            raise ValueError(f"the training split is empty (n_train={n_train})")
        self.n_train = n_train
        self.generator = generator
        self.order = torch.randperm(n_train, generator=generator)
        self.cursor = 0
        self.epoch = 0

    @property
    def epochs_done(self) -> float:
        """Fractional epochs consumed so far."""
        return self.epoch + self.cursor / self.n_train

    def plan(self, counts: Sequence[int]) -> BatchPlan:
        """Draw the window for ``counts`` and advance the cursor by ``max(counts)``."""
        counts = tuple(int(n) for n in counts)
        if not counts or min(counts) < 0 or max(counts) < 1:
            raise ValueError(f"counts must be non-negative with at least one positive, got {list(counts)}")
        needed = max(counts)
        parts = []
        while needed > 0:
            take = min(needed, self.n_train - self.cursor)
            parts.append(self.order[self.cursor : self.cursor + take])
            self.cursor += take
            needed -= take
            if self.cursor == self.n_train:
                self.order = torch.randperm(self.n_train, generator=self.generator)
                self.cursor = 0
                self.epoch += 1
        return BatchPlan(torch.cat(parts), counts)

    def reseed(self, seed: int) -> None:
        """Start a fresh walk (new order, cursor 0, epoch kept) from ``seed``."""
        self.generator.manual_seed(seed)
        self.order = torch.randperm(self.n_train, generator=self.generator)
        self.cursor = 0

    def state_dict(self) -> dict[str, Any]:
        """What resumes the walk exactly (order, cursor, epoch, generator state)."""
        return {"order": self.order.clone(), "cursor": self.cursor, "epoch": self.epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a walk saved by :meth:`state_dict`."""
        self.order = state["order"].cpu().clone()
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["generator"].cpu())  # a checkpoint may be loaded onto a GPU
