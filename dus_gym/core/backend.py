"""The interface the training episodes use to drive N learners: one backend per way of running them.

Two backends implement :class:`LearnerBackend`:

- :class:`dus_gym.core.learner.LearnerGroup`: N independent :class:`~dus_gym.core.learner.Learner`
  objects, one after the other (N = 1 for ``DUSEnv`` and ``dus-gym run``); every method, optimiser,
  precision and data source;
- :class:`dus_gym.core.batched_learner.BatchedLearner`: N learners in one vmapped computation
  (the vectorised env); the default method, SGD, fp32, in-memory data.

Given the same seeds and counts, both give the same iterations (to float tolerance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class IterationStats:
    """What one iteration of one learner measured.

    Args:
        loss: the total loss that was back-propagated.
        fusion_loss: CE of the fusion head on the paired samples (nan when no sample is paired).
        unimodal_losses: CE of each modality's head on its own samples (nan for a count of 0).
        status: s(m) on the modality's own training samples (nan for a count of 0).
        counts: the counts used.
    """

    loss: float
    fusion_loss: float
    unimodal_losses: np.ndarray
    status: np.ndarray
    counts: np.ndarray

    @property
    def finite(self) -> bool:
        """False when the loss diverged (NaN or inf)."""
        return bool(np.isfinite(self.loss))


@dataclass(frozen=True)
class BatchedIterationStats:
    """What one iteration of N learners measured, one row per learner (rows of inactive learners are nan).

    Args:
        loss: (N,) the total loss of each learner.
        fusion_loss: (N,) CE of each learner's fusion head on its paired samples.
        unimodal_losses: (N, M) CE of each head on its own samples (nan for a count of 0).
        status: (N, M) s(m) on each learner's own training samples (nan for a count of 0).
        counts: (N, M) the counts used (after quantisation; 0 for inactive learners).
        active: (N,) which learners ran the iteration.
    """

    loss: np.ndarray
    fusion_loss: np.ndarray
    unimodal_losses: np.ndarray
    status: np.ndarray
    counts: np.ndarray
    active: np.ndarray

    @property
    def finite(self) -> np.ndarray:
        """(N,) False where an active learner's loss diverged (NaN or inf); True for inactive ones."""
        return np.isfinite(self.loss) | ~self.active

    @classmethod
    def gather(cls, stats: Sequence[IterationStats | None], n_modalities: int) -> BatchedIterationStats:
        """N learners' stats from their single stats (None: the learner did not run)."""
        nan = np.full(n_modalities, np.nan)
        return cls(
            loss=np.array([s.loss if s is not None else np.nan for s in stats]),
            fusion_loss=np.array([s.fusion_loss if s is not None else np.nan for s in stats]),
            unimodal_losses=np.stack([s.unimodal_losses if s is not None else nan for s in stats]),
            status=np.stack([s.status if s is not None else nan for s in stats]),
            counts=np.stack([s.counts if s is not None else np.zeros(n_modalities, np.int64) for s in stats]),
            active=np.array([s is not None for s in stats]),
        )


class LearnerBackend(Protocol):
    """N learners of one task, reset and stepped by index (see the module docstring)."""

    n_learners: int
    probe_size: int

    @property
    def iteration(self) -> np.ndarray:
        """(N,) iterations each learner has run since its start (a checkpoint's count included)."""

    def reset_learner(self, i: int, seed: int, checkpoint: str | Path | None = None) -> None:
        """Start learner ``i`` afresh from ``seed`` (model, data order, probe slice), or from a learner checkpoint."""

    def step(self, counts: np.ndarray, active: np.ndarray | None = None, progress: np.ndarray | None = None
             ) -> BatchedIterationStats:
        """One iteration of every active learner, learner i with ``counts[i, m]`` samples of modality m.

        ``progress[i]`` is learner i's iterations done over its budget (for methods that act over
        a window of training; None: not known).
        """

    def accuracies(self, split_name: str) -> tuple[np.ndarray, np.ndarray]:
        """Fused (N,) and per-modality (N, M) accuracy of every learner on a split of the task."""

    def scores(self, split_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`accuracies` and each head's status (N, M): the mean true-class probability on the split."""

    def probe_status(self) -> np.ndarray:
        """(N, M) s(m) of every learner on its own held-out probe slice."""
