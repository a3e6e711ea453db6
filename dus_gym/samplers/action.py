"""The action of a sampling policy and its mapping to per-modality counts (docs/env.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from dus_gym.core.config import ACTION_TYPES, EnvConfig, check_count_range
from dus_gym.error import ActionError


def allocate(weights: np.ndarray | Sequence[float], total: int, n_min: int) -> np.ndarray:
    """Split ``total`` samples across modalities: n_min each, the rest in proportion to ``weights``.

    The remainder is rounded by largest remainders (ties to the first modality), so the counts
    are integers >= n_min that sum to ``total`` exactly.

    Args:
        weights: non-negative weights, one per modality (normalised here); or (N, M), one row per
            episode, each split on its own (the counts are then (N, M)).
        total: the samples of the iteration (M x B for a compute-fair budget).
        n_min: the smallest count of a modality.
    """
    w = np.asarray(weights, dtype=np.float64)
    rows = np.atleast_2d(w)
    if w.ndim not in (1, 2) or rows.shape[1] == 0 or not np.isfinite(w).all() or (w < 0).any() \
            or (rows.sum(1) <= 0).any():
        raise ValueError(f"allocation weights must be finite, non-negative and not all zero, got {w.tolist()}")
    M = rows.shape[1]
    rest = total - n_min * M
    if rest < 0:
        raise ValueError(f"cannot give {M} modalities n_min = {n_min} samples each out of {total}")
    share = rest * rows / rows.sum(1, keepdims=True)
    counts = np.floor(share).astype(np.int64)
    left = rest - counts.sum(1, keepdims=True)
    order = np.argsort(-(share - counts), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(M)[None, :].repeat(len(rows), 0), axis=1)
    counts += rank < left  # the `left` largest remainders get one more sample each
    counts += n_min
    return counts if w.ndim == 2 else counts[0]


def heuristic_weights(discrepancy: np.ndarray | Sequence[float], alpha: float | np.ndarray) -> np.ndarray:
    """The DUS heuristic's shares softmax_m(-alpha d(m)): the modality ahead (d > 0) gets less.

    ``discrepancy`` may be (N, M) with ``alpha`` a scalar or (N,): one row of shares per episode.
    """
    d = np.asarray(discrepancy, dtype=np.float64)
    a = np.asarray(alpha, dtype=np.float64)
    logits = -(a[:, None] if a.ndim == 1 else a) * d
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)


@dataclass(frozen=True)
class CountsAction:
    """Maps a policy's action to per-modality sample counts.

    - ``"box"`` (default): a Box in [-1, 1]^M, mapped affinely to [n_min, n_max] and rounded;
    - ``"multidiscrete"``: one choice per modality among ``count_levels``;
    - ``"allocation"``: a Box in [-1, 1]^M of preferences; the iteration's M x B samples are split
      by :func:`allocate` with weights softmax(temperature x action), at least n_min each, so every
      iteration costs the same samples whatever the policy does (a compute-fair budget);
    - ``"strength"``: a Box in [-1, 1]^1, the DUS heuristic's alpha for the step, alpha = max_alpha x
      (a + 1) / 2: -1 is uniform sampling, +1 the sharpest heuristic. The counts of every iteration are
      the heuristic's allocation softmax(-alpha d_t) of M x B samples, with d_t the discrepancy at that
      iteration (:meth:`to_counts` needs it), so the policy chooses how strongly to react and the rule
      reacts within the step (the heuristic with allocation, :class:`dus_gym.samplers.rules.HeuristicSampler`,
      is this action held constant).

    With ``n_slots`` > M (a policy that serves tasks of up to ``n_slots`` modalities) the action has
    ``n_slots`` entries and those past the task's M are ignored.

    Args:
        n_modalities: M, the task's modalities.
        n_min: count at action -1 (box); smallest count (allocation).
        n_max: count at action +1 (box).
        action_type: "box", "multidiscrete" or "allocation".
        count_levels: the counts a multidiscrete action chooses from (ascending).
        batch_size: B (allocation: the iteration's total is M x B).
        temperature: allocation: the softmax temperature on the [-1, 1] preferences.
        n_slots: the action's length (None: M).
        max_alpha: strength: the alpha of action +1.
    """

    n_modalities: int
    n_min: int = 8
    n_max: int = 256
    action_type: str = "box"
    count_levels: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    batch_size: int = 64
    temperature: float = 3.0
    n_slots: int | None = None
    max_alpha: float = 60.0

    def __post_init__(self) -> None:
        check_count_range(self.n_min, self.n_max, "the action")
        if self.action_type not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {list(ACTION_TYPES)}, got '{self.action_type}'")
        levels = tuple(int(n) for n in self.count_levels)
        if not levels or min(levels) < 1 or list(levels) != sorted(set(levels)):
            raise ValueError(f"count_levels must be distinct positive counts in ascending order, got {levels}")
        object.__setattr__(self, "count_levels", levels)
        if self.n_slots is not None and self.n_slots < self.n_modalities:
            raise ValueError(f"the action has {self.n_slots} slots, fewer than the task's {self.n_modalities} "
                             "modalities")
        if self.action_type in ("allocation", "strength") and self.n_min * self.n_modalities > self.total:
            raise ValueError(f"allocation needs M x n_min <= M x B, got n_min = {self.n_min} > B = {self.batch_size}")

    @classmethod
    def of(cls, env: EnvConfig, n_modalities: int, batch_size: int) -> CountsAction:
        """The action an env's settings ask for, for a task of ``n_modalities`` (M) at base batch size B."""
        slots = env.max_modalities if env.observation == "modalities" else None
        return cls(n_modalities, env.n_min, env.n_max, env.action_type, env.count_levels, batch_size,
                   env.temperature, slots, env.max_alpha)

    @property
    def slots(self) -> int:
        """The action's length (1 for the strength action)."""
        return 1 if self.action_type == "strength" else self.n_slots or self.n_modalities

    @property
    def reacts(self) -> bool:
        """The counts depend on the discrepancy at every iteration (strength), not on the action alone."""
        return self.action_type == "strength"

    @property
    def total(self) -> int:
        """Allocation: the samples of every iteration, M x B."""
        return self.n_modalities * self.batch_size

    @property
    def space(self) -> spaces.Space:
        """The Gymnasium action space."""
        if self.action_type == "multidiscrete":
            return spaces.MultiDiscrete([len(self.count_levels)] * self.slots)
        return spaces.Box(-1.0, 1.0, shape=(self.slots,), dtype=np.float32)

    @property
    def max_count(self) -> int:
        """The largest count an action can give."""
        if self.action_type in ("allocation", "strength"):
            return self.total - (self.n_modalities - 1) * self.n_min
        return self.n_max if self.action_type == "box" else self.count_levels[-1]

    def alpha(self, action: np.ndarray | Sequence[float]) -> float:
        """Strength: the heuristic's alpha of a (valid) action."""
        return float(self.max_alpha * (np.clip(float(np.asarray(action).reshape(-1)[0]), -1.0, 1.0) + 1.0) / 2.0)

    def to_counts(self, action: np.ndarray | Sequence[float], discrepancy: np.ndarray | None = None) -> np.ndarray:
        """Validate ``action`` and return the counts (int64, length M).

        Args:
            action: an action of :attr:`space`.
            discrepancy: d_t(m) of the task's M modalities; the strength action needs it (None: zero,
                which gives uniform counts: only the action is validated).

        Raises:
            ActionError: wrong shape, NaN/inf, non-integer or out-of-range entries; the message names
                the expected space.
        """
        try:
            a = np.asarray(action)
        except (ValueError, TypeError) as err:  # ragged sequences
            raise ActionError(f"action {action!r} is not an array ({err}); {self._expected()}") from err
        if a.shape != (self.slots,):
            raise ActionError(f"action has shape {a.shape}; {self._expected()}")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):  # no complex, no text
            raise ActionError(f"action has dtype {a.dtype}; {self._expected()}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ActionError(f"action {a.tolist()} has NaN/inf; {self._expected()}")
        if self.action_type != "multidiscrete" and (np.abs(a) > 1.0 + 1e-6).any():
            raise ActionError(f"action {a.tolist()} is outside [-1, 1]; {self._expected()}")
        if self.action_type == "strength":
            d = np.zeros(self.n_modalities) if discrepancy is None else np.asarray(discrepancy, dtype=np.float64)
            if d.shape != (self.n_modalities,) or not np.isfinite(d).all():
                raise ValueError(f"the strength action needs {self.n_modalities} finite discrepancies, got {d}")
            return allocate(heuristic_weights(d, self.alpha(a)), self.total, self.n_min)
        a = a[: self.n_modalities]
        if self.action_type == "allocation":
            logits = self.temperature * np.clip(a, -1.0, 1.0)
            weights = np.exp(logits - logits.max())
            return allocate(weights, self.total, self.n_min)
        if self.action_type == "box":
            fraction = (np.clip(a, -1.0, 1.0) + 1.0) / 2.0
            return np.rint(self.n_min + fraction * (self.n_max - self.n_min)).astype(np.int64)
        if (a != np.rint(a)).any() or a.min() < 0 or a.max() >= len(self.count_levels):
            raise ActionError(f"action {a.tolist()} is not a level index in [0, {len(self.count_levels) - 1}]; "
                             f"{self._expected()}")
        return np.asarray(self.count_levels, dtype=np.int64)[a.astype(np.int64)]

    def _expected(self) -> str:
        """What an action must be, for an error message (built only then: a Box's repr is slow)."""
        return f"expected an action in {self.space} (per-modality counts, {self.action_type})"

    def strength_counts(self, alphas: np.ndarray, discrepancy: np.ndarray) -> np.ndarray:
        """The strength action's counts of N episodes at once (already validated actions).

        Row i is what :meth:`to_counts` gives for alpha ``alphas[i]`` (:meth:`alpha` of its action)
        and discrepancy ``discrepancy[i]``.
        """
        d = np.asarray(discrepancy, dtype=np.float64)
        if d.ndim != 2 or d.shape[1] != self.n_modalities or not np.isfinite(d).all():
            raise ValueError(f"the strength action needs (N, {self.n_modalities}) finite discrepancies, got {d}")
        return allocate(heuristic_weights(d, np.asarray(alphas, dtype=np.float64)), self.total, self.n_min)

    def to_action(self, counts: np.ndarray | Sequence[float]) -> np.ndarray:
        """The action whose counts are ``counts`` (length M), or the nearest one: the inverse of :meth:`to_counts`.

        - box: a = 2 (n - n_min) / (n_max - n_min) - 1, clipped to [-1, 1] (exact for n in [n_min, n_max]);
        - multidiscrete: the index of the nearest level (exact for a level);
        - allocation: preferences whose softmax weights are proportional to n(m) - n_min, scaled so the
          largest is 1 (exact when the counts sum to M x B and their shares span at most e^(2 temperature)).

        Entries past M (``n_slots``) are 0. Returns float32 (box, allocation) or int64 (multidiscrete).

        Raises:
            ValueError: the strength action, whose counts follow the discrepancy: no action gives chosen counts.
        """
        if self.action_type == "strength":
            raise ValueError("the strength action chooses the heuristic's alpha, not counts: no action gives "
                             "chosen counts (use the allocation action for count-based agents)")
        n = np.asarray(counts, dtype=np.float64)
        if n.shape != (self.n_modalities,) or not np.isfinite(n).all() or (n < 0).any():
            raise ValueError(f"expected {self.n_modalities} finite non-negative counts, got {np.asarray(counts)}")
        if self.action_type == "multidiscrete":
            levels = np.asarray(self.count_levels, dtype=np.float64)
            action = np.zeros(self.slots, dtype=np.int64)
            action[: self.n_modalities] = np.abs(n[:, None] - levels[None, :]).argmin(axis=1)
            return action
        action = np.zeros(self.slots, dtype=np.float32)
        if self.action_type == "box":
            action[: self.n_modalities] = np.clip(2.0 * (n - self.n_min) / (self.n_max - self.n_min) - 1.0, -1.0, 1.0)
            return action
        extra = np.maximum(n - self.n_min, 0.0)
        if extra.max() <= 0:
            extra = np.ones_like(extra)
        with np.errstate(divide="ignore"):
            logits = np.log(extra / extra.max())
        action[: self.n_modalities] = np.clip(1.0 + logits / self.temperature, -1.0, 1.0)
        return action

