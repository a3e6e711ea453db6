"""What a sampling policy observes: the CMD state as a vector, in one of two layouts (docs/env.md).

- ``"cmd"`` (the ``-v0`` envs): per modality m, in order, c_t(m), d_t(m), the last learning status
  s(m) and count(m) / B; then the progress t / T. Length 4M + 1: a policy is tied to one M.
- ``"modalities"`` (the family envs): one row of :data:`MODALITY_FEATURES` per modality slot,
  ``n_slots`` rows (a task with fewer modalities leaves the last rows zero, with mask 0), then
  :data:`GLOBAL_FEATURES`. A policy that applies one network to every row and pools them
  (``dus_gym.agents.policies.ModalityPolicy``) serves any M up to ``n_slots`` and any modality order.

With ``blind``, every CMD-derived feature is zero: only the mask and the progress remain (the
control that tells a policy reading the state from a schedule over training progress). With
``hide``, the feature groups of :data:`HIDDEN` are zero (ablations: does a policy use the CMD, the
validation features, or both?).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dus_gym.core.config import OBSERVATIONS, EnvConfig

MODALITY_FEATURES = ("cumulative", "discrepancy", "relative_discrepancy", "status", "val_status", "memorisation",
                     "count", "mask")
"""Per modality: c_t(m); d_t(m); d_t(m) / max_k |d_t(k)| (which modality is ahead, whatever the scale); the last
training-batch status s(m); the validation status v(m) (mean true-class probability of head m on the validation
split at the last evaluation); the memorisation gap s(m) - v(m); count(m) / B; 1 for a real modality (0: padding)."""
GLOBAL_FEATURES = ("progress", "val_acc")
"""The progress t / T and the last fused validation accuracy."""
HIDDEN = {"cmd": ("cumulative", "discrepancy", "relative_discrepancy", "status", "memorisation"),
          "val": ("val_status", "memorisation", "val_acc")}
"""The features each ablation group zeroes: "cmd", those computed from the training-batch (or probe) CMD;
"val", those computed from the validation split. The memorisation gap s - v is in both."""


class CMDState(Protocol):
    """The CMD state of one episode: a :class:`~dus_gym.core.discrepancy.CMDMonitor`, or a sampler's state."""

    cumulative: np.ndarray
    """c_t(m)."""
    discrepancy: np.ndarray
    """d_t(m)."""
    status: np.ndarray
    """The last learning status s(m)."""


def cmd_observation(
    monitor: CMDState, counts: np.ndarray, batch_size: int, progress: float
) -> np.ndarray:
    """The CMD state as a policy sees it (docs/env.md), float32 of length 4M + 1.

    Per modality m (in order): c_t(m), d_t(m), the last status s(m), count(m) / B; then t / T.
    """
    counts = np.asarray(counts, dtype=np.float64) / batch_size
    per_modality = np.stack([monitor.cumulative, monitor.discrepancy, monitor.status, counts], axis=1)
    return np.concatenate([per_modality.reshape(-1), [progress]]).astype(np.float32)


@dataclass(frozen=True)
class ObservationLayout:
    """The observation vector of a task with M modalities.

    Args:
        kind: "cmd" or "modalities".
        n_modalities: M.
        batch_size: B (counts are given as count / B).
        max_count: the largest count the action can give (the bound of count / B).
        n_slots: "modalities": the number of modality rows (None: M).
        blind: zero every CMD-derived feature (progress and mask only).
        hide: "modalities": feature groups of :data:`HIDDEN` to zero.
    """

    kind: str
    n_modalities: int
    batch_size: int
    max_count: int
    n_slots: int | None = None
    blind: bool = False
    hide: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if any(group not in HIDDEN for group in self.hide):
            raise ValueError(f"hide must list groups of {list(HIDDEN)}, got {list(self.hide)}")
        if self.hide and self.kind != "modalities":
            raise ValueError("hide applies to the 'modalities' observation only")
        if self.kind not in OBSERVATIONS:
            raise ValueError(f"observation must be one of {list(OBSERVATIONS)}, got '{self.kind}'")
        if self.n_slots is not None and self.n_slots < self.n_modalities:
            raise ValueError(f"the observation has {self.n_slots} modality slots, fewer than the task's "
                             f"{self.n_modalities} modalities")
        if self.kind == "cmd" and self.n_slots not in (None, self.n_modalities):
            raise ValueError("the 'cmd' observation has one entry per modality: n_slots applies to 'modalities' only")

    @classmethod
    def of(cls, env: EnvConfig, n_modalities: int, batch_size: int, max_count: int) -> ObservationLayout:
        """The layout an env's settings ask for, for a task of ``n_modalities`` (M)."""
        slots = env.max_modalities if env.observation == "modalities" else None
        return cls(env.observation, n_modalities, batch_size, max_count, slots, env.blind, tuple(env.hide))

    @property
    def slots(self) -> int:
        """Modality rows of the "modalities" layout (M for "cmd")."""
        return self.n_slots or self.n_modalities

    @property
    def size(self) -> int:
        """The vector's length."""
        if self.kind == "cmd":
            return 4 * self.n_modalities + 1
        return self.slots * len(MODALITY_FEATURES) + len(GLOBAL_FEATURES)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of every entry (float32)."""
        top = max(self.max_count, self.batch_size) / self.batch_size
        if self.kind == "cmd":
            low = np.append(np.tile([0.0, -1.0, 0.0, 0.0], self.n_modalities), 0.0)
            high = np.append(np.tile([1.0, 1.0, 1.0, top], self.n_modalities), 1.0)
        else:
            low = np.append(np.tile([0.0, -1.0, -1.0, 0.0, 0.0, -1.0, 0.0, 0.0], self.slots), [0.0, 0.0])
            high = np.append(np.tile([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, top, 1.0], self.slots), [1.0, 1.0])
        return low.astype(np.float32), high.astype(np.float32)

    def build(self, monitor: CMDState, counts: np.ndarray, progress: float, val_status: np.ndarray | None,
              val_acc: float | None) -> np.ndarray:
        """The observation of one episode, clipped to :meth:`bounds`.

        Args:
            monitor: the episode's CMD state (c, d and the last status s).
            counts: the last counts.
            progress: t / T.
            val_status: v(m), the validation status of each head at the last evaluation.
            val_acc: the fused validation accuracy at the last evaluation.
        """
        if self.kind == "cmd":
            obs = cmd_observation(monitor, counts, self.batch_size, progress)
            if self.blind:
                obs[:-1] = 0.0
        else:
            M = self.n_modalities
            rows = np.zeros((self.slots, len(MODALITY_FEATURES)))
            if not self.blind:
                if val_status is None or val_acc is None:
                    raise ValueError("the 'modalities' observation needs the last validation scores")
                d = monitor.discrepancy
                spread = np.abs(d).max()
                rows[:M, 0] = monitor.cumulative
                rows[:M, 1] = d
                rows[:M, 2] = d / spread if spread > 0 else 0.0
                rows[:M, 3] = monitor.status
                rows[:M, 4] = val_status
                rows[:M, 5] = monitor.status - np.asarray(val_status)
                rows[:M, 6] = np.asarray(counts, dtype=np.float64) / self.batch_size
            rows[:M, 7] = 1.0
            globals_ = np.array([progress, 0.0 if self.blind else val_acc])
            for group in self.hide:
                for name in HIDDEN[group]:
                    if name in MODALITY_FEATURES:
                        rows[:, MODALITY_FEATURES.index(name)] = 0.0
                    else:
                        globals_[GLOBAL_FEATURES.index(name)] = 0.0
            obs = np.append(rows.reshape(-1), globals_)
        low, high = self.bounds()
        return np.clip(obs, low, high).astype(np.float32)

    def decode(self, obs: np.ndarray) -> dict[str, np.ndarray | float]:
        """The CMD state an observation carries: cumulative, discrepancy, status, counts (in samples), progress.

        The inverse of :meth:`build` for a rule that acts on observations (a reference agent); values are
        as clipped by the bounds. Raises a ValueError for a ``blind`` layout (it carries no CMD state).
        """
        if self.blind or "cmd" in self.hide:
            raise ValueError("a blind observation (or one with the CMD hidden) carries no CMD state")
        obs = np.asarray(obs, dtype=np.float64)
        if obs.shape != (self.size,):
            raise ValueError(f"expected an observation of shape ({self.size},), got {obs.shape}")
        M = self.n_modalities
        if self.kind == "cmd":
            rows, progress = obs[:-1].reshape(M, 4), float(obs[-1])
            c, d, s, n = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        else:
            rows = obs[: -len(GLOBAL_FEATURES)].reshape(self.slots, len(MODALITY_FEATURES))[:M]
            progress = float(obs[-len(GLOBAL_FEATURES)])
            c, d, s, n = (rows[:, MODALITY_FEATURES.index(f)] for f in ("cumulative", "discrepancy", "status", "count"))
        return {"cumulative": c, "discrepancy": d, "status": s, "counts": np.rint(n * self.batch_size),
                "progress": progress}
