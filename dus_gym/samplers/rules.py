"""Rule-based samplers: uniform, the DUS heuristic, constant counts, and an open-loop count schedule."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dus_gym.core.config import check_count_range, check_counts, shown
from dus_gym.samplers.action import allocate, heuristic_weights
from dus_gym.samplers.base import Sampler, SamplerState


class UniformSampler(Sampler):
    """B samples of every modality at every iteration: plain joint training."""

    name = "uniform"

    def counts(self, state: SamplerState) -> np.ndarray:
        """B for every modality."""
        return np.full(self.n_modalities, self.batch_size, dtype=np.int64)


class HeuristicSampler(Sampler):
    """DUS heuristic: n(m) = clip(round(M B softmax_m(-alpha d(m))), n_min, n_max).

    The modality ahead (d > 0) gets fewer samples, the one behind more; with d = 0 every modality
    gets B. d(m) = c(m) - mean_k c(k): for two modalities d(a) = (c(a) - c(b)) / 2, so
    n(a) = 2B / (1 + exp(alpha (c(a) - c(b)))): alpha acts on half the gap, and alpha = 10 here
    is as sharp as 5 would be on the gap c(a) - c(b) itself. During the first ``warmup``
    iterations every modality gets B; the default is 0 (the heuristic acts from the first
    iteration, on a CMD that is then an average of few statuses).
    With ``allocation`` the M B samples of an iteration are split exactly by the same softmax
    (:func:`dus_gym.samplers.action.allocate`, n_min each at least, n_max unused): every iteration
    then costs M B samples, as uniform sampling does (a compute-fair comparison).

    The discrepancy comes from ``source``: "train", the run's CMD monitor (training batches, or the
    probe slice when the run's ``cmd.source`` is "probe"); "val", the running mean over evaluations of
    each head's validation status v(m) (the split is scored every ``val_every`` iterations), minus its
    mean over modalities. With ``reverse`` the sign is flipped (the modality ahead gets *more*): the
    control that tells whether the direction of the discrepancy matters.

    Args:
        batch_size: B.
        n_modalities: M.
        alpha: sharpness, bounded to [0, 100] (an aggressive alpha hurt at short budgets).
        n_min: smallest count (>= 1).
        n_max: largest count (>= n_min).
        warmup: iterations at B each before the heuristic acts (default 0: none).
        allocation: split exactly M B samples (True) or clip each count to [n_min, n_max] (False).
        source: where d comes from, "train" (the run's CMD) or "val" (validation statuses).
        reverse: flip the sign of the rule.
        val_every: with source "val", iterations between evaluations.
    """

    name = "heuristic"
    max_alpha: ClassVar[float] = 100.0
    sources: ClassVar[tuple[str, ...]] = ("train", "val")

    def __init__(
        self,
        batch_size: int,
        n_modalities: int,
        alpha: float = 10.0,
        n_min: int = 8,
        n_max: int = 256,
        warmup: int = 0,
        allocation: bool = False,
        source: str = "train",
        reverse: bool = False,
        val_every: int = 20,
    ) -> None:
        super().__init__(batch_size, n_modalities)
        if not 0.0 <= alpha <= self.max_alpha:
            raise ValueError(f"heuristic alpha must be in [0, {self.max_alpha}], got {alpha}")
        check_count_range(n_min, n_max, "heuristic")
        if warmup < 0:
            raise ValueError(f"heuristic warmup must be >= 0, got {warmup}")
        self.alpha = float(alpha)
        self.n_min = int(n_min)
        self.n_max = int(n_max)
        self.warmup = int(warmup)
        self.allocation = bool(allocation)
        if self.allocation and self.n_min > self.batch_size:
            raise ValueError(f"heuristic allocation needs n_min <= B, got n_min={n_min}, B={batch_size}")
        if source not in self.sources:
            raise ValueError(f"heuristic source must be one of {list(self.sources)}, got '{shown(source)}'")
        if val_every < 1:
            raise ValueError(f"heuristic val_every must be >= 1, got {val_every}")
        self.source = source
        self.reverse = bool(reverse)
        if source == "val":
            self.validation_every = int(val_every)
        self._val_sum = np.zeros(n_modalities)
        self._val_seen = 0
        self._val_iteration = -1

    def reset(self) -> None:
        """Forget the validation statuses seen (source "val")."""
        self._val_sum = np.zeros(self.n_modalities)
        self._val_seen = 0
        self._val_iteration = -1

    def state_dict(self) -> dict[str, Any]:
        """The running sum of validation statuses (source "val")."""
        return {"val_sum": self._val_sum.tolist(), "val_seen": self._val_seen, "val_iteration": self._val_iteration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        if state:
            self._val_sum = np.asarray(state["val_sum"], dtype=np.float64)
            self._val_seen = int(state["val_seen"])
            self._val_iteration = int(state["val_iteration"])

    def discrepancy(self, state: SamplerState) -> np.ndarray:
        """d(m) of the chosen source."""
        if self.source == "train":
            return np.asarray(state.discrepancy, dtype=np.float64)
        if state.val_status is None:
            raise ValueError("the heuristic's 'val' source needs the validation statuses in the sampler state")
        if state.iteration % self.validation_every == 0 and state.iteration != self._val_iteration:
            self._val_sum += np.asarray(state.val_status, dtype=np.float64)
            self._val_seen += 1
            self._val_iteration = state.iteration
        mean = self._val_sum / max(self._val_seen, 1)
        return mean - mean.mean()

    def counts(self, state: SamplerState) -> np.ndarray:
        """The formula above, from the state's discrepancy."""
        if state.iteration < self.warmup:
            return np.full(self.n_modalities, self.batch_size, dtype=np.int64)
        weights = heuristic_weights(self.discrepancy(state), -self.alpha if self.reverse else self.alpha)
        if self.allocation:
            return allocate(weights, self.n_modalities * self.batch_size, self.n_min)
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
        check_counts(counts, "constant sampler counts")
        fixed = np.asarray(counts, dtype=np.int64)
        if fixed.shape != (n_modalities,) or fixed.min() < 0 or fixed.max() < 1:
            raise ValueError(f"constant sampler needs {n_modalities} non-negative counts with one positive, "
                             f"got {shown(counts)}")
        self.fixed = fixed

    def counts(self, state: SamplerState) -> np.ndarray:
        """The fixed counts."""
        return self.fixed.copy()


class ScheduleSampler(Sampler):
    """Replays a count schedule open-loop, indexed by training progress t / T.

    Args:
        batch_size: B.
        n_modalities: M.
        schedule: (L, M) counts, or the path of a ``counts.npy`` written by a run; at progress p
            the sampler returns row floor(p L), so a schedule of any length fits any budget.
    """

    name = "schedule"

    def __init__(self, batch_size: int, n_modalities: int, schedule: Sequence[Sequence[int]] | str = ()) -> None:
        super().__init__(batch_size, n_modalities)
        if isinstance(schedule, (str, Path)):
            path = Path(schedule)
            if not path.is_file():
                raise FileNotFoundError(f"count schedule not found: {path}")
            try:
                schedule = np.load(path, allow_pickle=False)
            except (OSError, ValueError, EOFError) as err:
                raise ValueError(f"count schedule {path} is not a readable .npy array ({err})") from err
        check_counts(schedule, "schedule")
        try:
            table = np.asarray(schedule, dtype=np.int64)
        except ValueError as err:  # ragged rows
            raise ValueError(f"schedule must be a non-empty (L, {n_modalities}) table of counts ({err})") from err
        if table.ndim != 2 or table.shape[1] != n_modalities or len(table) == 0:
            raise ValueError(f"schedule must be a non-empty (L, {n_modalities}) table of counts, "
                             f"got shape {table.shape}")
        if table.min() < 0 or (table.max(axis=1) < 1).any():
            raise ValueError("schedule counts must be >= 0 with one positive count per row")
        self.schedule = table

    def counts(self, state: SamplerState) -> np.ndarray:
        """The row of the schedule at the state's progress."""
        row = min(len(self.schedule) - 1, int(state.progress * len(self.schedule)))
        return self.schedule[row].copy()
