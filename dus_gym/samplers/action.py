"""The action of a sampling policy and its mapping to per-modality counts (docs/env.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from dus_gym.core.config import check_count_range


class ActionError(ValueError):
    """An action outside the action space (wrong shape, dtype, NaN/inf or range): the agent's fault, not the env's."""


@dataclass(frozen=True)
class CountsAction:
    """Maps a policy's action to per-modality sample counts.

    - ``"box"`` (default): a Box in [-1, 1]^M, mapped affinely to [n_min, n_max] and rounded;
    - ``"multidiscrete"``: one choice per modality among ``count_levels``.

    Args:
        n_modalities: M.
        n_min: count at action -1 (box).
        n_max: count at action +1 (box).
        action_type: "box" or "multidiscrete".
        count_levels: the counts a multidiscrete action chooses from (ascending).
    """

    n_modalities: int
    n_min: int = 8
    n_max: int = 256
    action_type: str = "box"
    count_levels: tuple[int, ...] = (8, 16, 32, 64, 128, 256)

    def __post_init__(self) -> None:
        check_count_range(self.n_min, self.n_max, "the action")
        if self.action_type not in ("box", "multidiscrete"):
            raise ValueError(f"action_type must be 'box' or 'multidiscrete', got '{self.action_type}'")
        levels = tuple(int(n) for n in self.count_levels)
        if not levels or min(levels) < 1 or list(levels) != sorted(set(levels)):
            raise ValueError(f"count_levels must be distinct positive counts in ascending order, got {levels}")
        object.__setattr__(self, "count_levels", levels)

    @property
    def space(self) -> spaces.Space:
        """The Gymnasium action space."""
        if self.action_type == "box":
            return spaces.Box(-1.0, 1.0, shape=(self.n_modalities,), dtype=np.float32)
        return spaces.MultiDiscrete([len(self.count_levels)] * self.n_modalities)

    @property
    def max_count(self) -> int:
        """The largest count an action can give."""
        return self.n_max if self.action_type == "box" else self.count_levels[-1]

    def to_counts(self, action: np.ndarray | Sequence[float]) -> np.ndarray:
        """Validate ``action`` and return the counts (int64, length M).

        Raises:
            ActionError: wrong shape, NaN/inf, non-integer or out-of-range entries; the message names
                the expected space.
        """
        expected = f"expected an action in {self.space} (per-modality counts, {self.action_type})"
        try:
            a = np.asarray(action)
        except (ValueError, TypeError) as err:  # ragged sequences
            raise ActionError(f"action {action!r} is not an array ({err}); {expected}") from err
        if a.shape != (self.n_modalities,):
            raise ActionError(f"action has shape {a.shape}; {expected}")
        if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):  # no complex, no text
            raise ActionError(f"action has dtype {a.dtype}; {expected}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise ActionError(f"action {a.tolist()} has NaN/inf; {expected}")
        if self.action_type == "box":
            if (np.abs(a) > 1.0 + 1e-6).any():
                raise ActionError(f"action {a.tolist()} is outside [-1, 1]; {expected}")
            fraction = (np.clip(a, -1.0, 1.0) + 1.0) / 2.0
            return np.rint(self.n_min + fraction * (self.n_max - self.n_min)).astype(np.int64)
        if (a != np.rint(a)).any() or a.min() < 0 or a.max() >= len(self.count_levels):
            raise ActionError(f"action {a.tolist()} is not a level index in [0, {len(self.count_levels) - 1}]; "
                             f"{expected}")
        return np.asarray(self.count_levels, dtype=np.int64)[a.astype(np.int64)]
