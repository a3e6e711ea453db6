"""The sampler interface: from the CMD state to per-modality sample counts (one decision per iteration).

Every sampler implements :meth:`Sampler.counts`; a learned policy plugs in the same way, reading
``SamplerState.observation`` (the env's observation vector, docs/env.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class SamplerState:
    """What a sampler sees before an iteration.

    Args:
        iteration: iterations done so far, t.
        n_iterations: the run's budget, T.
        batch_size: the base batch size B.
        cumulative: c_t(m) per modality.
        discrepancy: d_t(m) per modality.
        status: the last learning status s(m) per modality.
        counts: the counts of the last iteration (B each before the first).
        observation: the CMD observation vector of the run's env settings (docs/env.md), float32.
        val_status: each head's validation status v(m) at the last evaluation (when the sampler asked for it).
        val_acc: the fused validation accuracy at the last evaluation (idem).
    """

    iteration: int
    n_iterations: int
    batch_size: int
    cumulative: np.ndarray
    discrepancy: np.ndarray
    status: np.ndarray
    counts: np.ndarray
    observation: np.ndarray
    val_status: np.ndarray | None = None
    val_acc: float | None = None

    @property
    def progress(self) -> float:
        """Training progress t / T in [0, 1]."""
        return self.iteration / self.n_iterations


class Sampler(ABC):
    """Decides the per-modality counts of the next iteration.

    Args:
        batch_size: the base batch size B.
        n_modalities: M.
    """

    name: ClassVar[str]
    validation_every: int | None = None
    """Evaluate on the validation split every this many iterations, so that the state carries v(m) and the
    fused validation accuracy (None: the sampler does not read them)."""

    def __init__(self, batch_size: int, n_modalities: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.n_modalities = n_modalities

    @abstractmethod
    def counts(self, state: SamplerState) -> np.ndarray:
        """Return the counts n(m) of the next iteration (int64, length M)."""

    def reset(self) -> None:  # noqa: B027 (a hook: stateless samplers keep the default)
        """Prepare for a new run (stateless samplers need nothing)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to decide as this sampler would have (stateless samplers: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (a hook, as reset)
        """Restore a state saved by :meth:`state_dict`."""
