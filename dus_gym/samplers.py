"""Samplers: from the CMD state to per-modality sample counts (one decision per iteration).

Every sampler implements :meth:`Sampler.counts`; a learned policy plugs in the same way, reading
``SamplerState.observation`` (the env's observation vector, DESIGN.md §3).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dus_gym.config import ConfigError, checked_kwargs, did_you_mean


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
        observation: the CMD observation vector (DESIGN.md §3), float32.
    """

    iteration: int
    n_iterations: int
    batch_size: int
    cumulative: np.ndarray
    discrepancy: np.ndarray
    status: np.ndarray
    counts: np.ndarray
    observation: np.ndarray

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


class UniformSampler(Sampler):
    """B samples of every modality at every iteration: plain joint training."""

    name = "uniform"

    def counts(self, state: SamplerState) -> np.ndarray:
        """B for every modality."""
        return np.full(self.n_modalities, self.batch_size, dtype=np.int64)


class HeuristicSampler(Sampler):
    """DUS heuristic: n(m) = clip(round(M B softmax_m(-alpha d(m))), n_min, n_max).

    The modality ahead (d > 0) gets fewer samples, the one behind more; with d = 0 every modality
    gets B. During the first ``warmup`` iterations every modality gets B (the CMD is still noise).

    Args:
        batch_size: B.
        n_modalities: M.
        alpha: sharpness, bounded to [0, 100] (an aggressive alpha hurt at short budgets).
        n_min: smallest count (>= 1).
        n_max: largest count (>= n_min).
        warmup: iterations at B each before the heuristic acts.
    """

    name = "heuristic"
    max_alpha: ClassVar[float] = 100.0

    def __init__(
        self,
        batch_size: int,
        n_modalities: int,
        alpha: float = 10.0,
        n_min: int = 8,
        n_max: int = 256,
        warmup: int = 0,
    ) -> None:
        super().__init__(batch_size, n_modalities)
        if not 0.0 <= alpha <= self.max_alpha:
            raise ValueError(f"heuristic alpha must be in [0, {self.max_alpha}], got {alpha}")
        if not 1 <= n_min <= n_max:
            raise ValueError(f"heuristic needs 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
        if warmup < 0:
            raise ValueError(f"heuristic warmup must be >= 0, got {warmup}")
        self.alpha = float(alpha)
        self.n_min = int(n_min)
        self.n_max = int(n_max)
        self.warmup = int(warmup)

    def counts(self, state: SamplerState) -> np.ndarray:
        """The formula above, from the state's discrepancy."""
        if state.iteration < self.warmup:
            return np.full(self.n_modalities, self.batch_size, dtype=np.int64)
        logits = -self.alpha * np.asarray(state.discrepancy, dtype=np.float64)
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        raw = np.rint(self.n_modalities * self.batch_size * weights)
        return np.clip(raw, self.n_min, self.n_max).astype(np.int64)


class ConstantSampler(Sampler):
    """The same fixed counts at every iteration (also trains one modality alone: counts (B, 0)).

    Args:
        batch_size: B.
        n_modalities: M.
        counts: the M fixed counts (non-negative, at least one positive).
    """

    name = "constant"

    def __init__(self, batch_size: int, n_modalities: int, counts: Sequence[int] = ()) -> None:
        super().__init__(batch_size, n_modalities)
        fixed = np.asarray(counts, dtype=np.int64)
        if fixed.shape != (n_modalities,) or fixed.min() < 0 or fixed.max() < 1:
            raise ValueError(f"constant sampler needs {n_modalities} non-negative counts with one positive, "
                             f"got {list(counts)}")
        self.fixed = fixed

    def counts(self, state: SamplerState) -> np.ndarray:
        """The fixed counts."""
        return self.fixed.copy()


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (UniformSampler, HeuristicSampler, ConstantSampler)
}
"""Sampler name -> class (``schedule`` and ``ppo`` join from ``dus_gym.policy`` on first use)."""


def _sampler_table() -> dict[str, type[Sampler]]:
    from dus_gym.policy import PolicySampler, ScheduleSampler

    for cls in (ScheduleSampler, PolicySampler):
        SAMPLERS.setdefault(cls.name, cls)
    return SAMPLERS


def make_sampler(name: str, batch_size: int, n_modalities: int, **kwargs: Any) -> Sampler:
    """Build the sampler ``name`` with its keyword arguments."""
    table = _sampler_table()
    if name not in table:
        raise ValueError(f"unknown sampler '{name}'{did_you_mean(name, table)}; known: {sorted(table)}")
    try:
        kwargs = checked_kwargs(table[name], kwargs, "sampler_kwargs", reserved=("batch_size", "n_modalities"))
        return table[name](batch_size, n_modalities, **kwargs)
    except (TypeError, ConfigError) as err:
        raise ValueError(f"bad arguments for sampler '{name}': {err}") from err
